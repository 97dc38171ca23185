"""DORIS 2021 remission: clinical SLEDAI-2K 0, PGA < 0.5, prednisone <= 5 mg/day."""

from __future__ import annotations

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.doris import assess_doris_remission


def test_serology_alone_still_allows_remission() -> None:
    result = assess_doris_remission(["low_complement", "increased_dna_binding"], pga=0.2,
                                    prednisone_mg_per_day=5)
    assert result.remission
    assert result.clinical_sledai2k == 0


def test_any_clinical_descriptor_prevents_remission() -> None:
    result = assess_doris_remission(["alopecia"], pga=0.0, prednisone_mg_per_day=0)
    assert not result.remission
    assert result.clinical_sledai2k == 2


@pytest.mark.parametrize(("pga", "ok"), [(0.49, True), (0.5, False)])
def test_pga_below_0_5(pga: float, ok: bool) -> None:
    assert assess_doris_remission([], pga=pga, prednisone_mg_per_day=0).remission is ok


@pytest.mark.parametrize(("dose", "ok"), [(5.0, True), (5.1, False)])
def test_prednisone_at_most_5(dose: float, ok: bool) -> None:
    assert assess_doris_remission([], pga=0, prednisone_mg_per_day=dose).remission is ok


def test_bad_pga_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        assess_doris_remission([], pga=4, prednisone_mg_per_day=0)
    assert caught.value.field == "pga"
