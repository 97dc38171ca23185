"""docs/instruments.md: every example's JSON is what catalog.run really returns."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from workflow.instruments.catalog import INSTRUMENTS, run

DOC = Path(__file__).resolve().parents[3] / "docs" / "instruments.md"
EXAMPLE = re.compile(r"```console\n\$ trialflow calc (\S+) (.*?) --json\n(.*?)\n```", re.S)


def examples() -> list[tuple[str, list[str], str]]:
    return [(name, shlex.split(words), output)
            for name, words, output in EXAMPLE.findall(DOC.read_text(encoding="utf-8"))]


def test_every_instrument_has_a_documented_example() -> None:
    assert {name for name, _, _ in examples()} == set(INSTRUMENTS)


@pytest.mark.parametrize(("name", "words", "output"), examples())
def test_documented_output_is_real(name: str, words: list[str], output: str) -> None:
    result = run(name, words)
    assert json.loads(output) == result
    assert output == json.dumps(result, indent=2, ensure_ascii=False)


def test_every_instrument_has_a_section_naming_its_source() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in INSTRUMENTS:
        section = text.split(f"## `{name}`", 1)
        assert len(section) == 2, name
        assert "- Source: " in section[1].split("\n## ", 1)[0], name
