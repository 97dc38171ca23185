"""The pure rules of an adverse event's record (workflow/adverse_events.py): its period, the
ASTCT grades its signs give and which of them bind the AE's grade."""

from __future__ import annotations

from typing import Any

import pytest

from workflow.adverse_events import (
    ae_period,
    binding_grades,
    crs_grade,
    icans_grade,
    shown_grade,
)


@pytest.mark.parametrize(("day", "period"), [
    (None, "pre_treatment"), (-1, "pre_treatment"), (0, "safety_window"),
    (28, "safety_window"), (29, "after_window"),
])
def test_period_with_the_default_window(day: int | None, period: str) -> None:
    assert ae_period(day, 0, 28) == period


def test_period_with_windows_that_do_not_start_on_d0() -> None:
    assert [ae_period(day, 2, 28) for day in (-1, 0, 1, 2)] == [
        "pre_treatment", "before_window", "before_window", "safety_window"]
    assert [ae_period(day, -5, 28) for day in (-6, -5, None)] == [
        "pre_treatment", "safety_window", "pre_treatment"]


def grades(**values: Any) -> list[tuple[str, int]]:
    return [(g.syndrome, g.grade) for g in binding_grades(values)]


def test_which_grades_bind() -> None:
    assert grades(category="crs", temperature_c=39.0, hypoxia="low_flow") == [("crs", 2)]
    assert grades(temperature_c=39.0, hypoxia="low_flow") == [("crs", 2)]  # uncategorised
    assert grades(category="crs", temperature_c=37.0) == [("crs", 0)]  # a CRS without fever
    assert grades(category="other", temperature_c=37.0, hypotension="no_vasopressors") == []
    assert grades(temperature_c=39.0, ice_score=5) == [("crs", 1), ("icans", 2)]
    assert grades(category="icans", temperature_c=39.0, ice_score=5) == [("icans", 2)]
    assert grades(category="crs", hypotension="one_vasopressor") == []  # cannot be graded
    assert grades(category="icans") == []
    assert grades(term="Rash") == []


def test_the_derivation_names_the_signs_and_what_decides() -> None:
    crs = crs_grade({"temperature_c": 38.0, "fever_masked": True,
                     "hypotension": "one_vasopressor", "hypoxia": "high_flow"})
    assert crs is not None
    assert (crs.grade, crs.signs, crs.basis) == (
        3, "temperature_c=38, hypotension=one_vasopressor, hypoxia=high_flow, fever_masked",
        "decided by hypotension and hypoxia")
    icans = icans_grade({"consciousness": "unarousable"})
    assert icans is not None
    assert (icans.grade, icans.signs, icans.basis) == (
        4, "consciousness=unarousable", "decided by consciousness")


def test_the_read_model_shows_no_grade_for_inputs_the_instrument_refuses() -> None:
    refused = {"category": "icans", "consciousness": "unarousable", "ice_score": 3}
    assert shown_grade(icans_grade, refused) is None
    assert shown_grade(crs_grade, {"temperature_c": 38.5}) == 1
    assert shown_grade(crs_grade, {"term": "Rash"}) is None
