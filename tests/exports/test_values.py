"""Values as the exports write them: what `trialflow record` takes back, XML Schema decimals."""

from __future__ import annotations

import pytest

from projections.exports.values import value_text


@pytest.mark.parametrize(("value", "text"), [
    (None, ""), (True, "yes"), (False, "no"), (7, "7"), (58.5, "58.5"),
    (2e8, "200000000.0"), (1e-7, "0.0000001"), (1e16, "10000000000000000"),
    ([], "none"), (["death", "hospitalisation"], "death,hospitalisation"),
    ("2025-02-05T10:00:00+08:00", "2025-02-05T10:00:00+08:00"),
])
def test_value_text(value: object, text: str) -> None:
    assert value_text(value) == text
