"""CTCAE v5.0 grades and ICH E2A seriousness, checked against each other."""

from __future__ import annotations

import pytest

from workflow.errors import InvalidInput
from workflow.instruments.codes import SERIOUS_CRITERIA
from workflow.instruments.ctcae import assess_seriousness, ctcae_grade


@pytest.mark.parametrize(("grade", "label"), [
    (1, "mild"), (2, "moderate"), (3, "severe or medically significant"),
    (4, "life-threatening"), (5, "death related to the AE"),
])
def test_each_grade_has_its_label(grade: int, label: str) -> None:
    result = ctcae_grade(grade)
    assert (result.grade, result.label) == (grade, label)
    assert f"grade {grade}" in result.explanation


@pytest.mark.parametrize("bad", [0, 6, 7, -1, 2.0, "3", True, None])
def test_a_grade_outside_1_to_5_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        ctcae_grade(bad)  # type: ignore[arg-type]
    assert caught.value.field == "grade"


def test_grade_7_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        ctcae_grade(7)
    assert caught.value.message == "grade must be a whole number from 1 to 5, got 7."


def test_no_criterion_is_not_serious() -> None:
    result = assess_seriousness([], grade=3)
    assert result.serious is False
    assert result.serious_criteria == ()
    assert "Not serious" in result.explanation


@pytest.mark.parametrize("criterion", [c for c in SERIOUS_CRITERIA if c != "death"])
def test_each_criterion_alone_makes_it_serious(criterion: str) -> None:
    result = assess_seriousness([criterion], grade=3)
    assert result.serious is True
    assert result.serious_criteria == (criterion,)


def test_death_with_grade_5_is_serious() -> None:
    result = assess_seriousness(["hospitalisation", "death"], grade=5)
    assert result.serious
    assert result.serious_criteria == ("death", "hospitalisation")
    assert result.grade_label == "death related to the AE"


def test_grade_5_without_death_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        assess_seriousness(["hospitalisation"], grade=5)
    assert caught.value.field == "serious_criteria"
    assert "death" in caught.value.message


@pytest.mark.parametrize("grade", [1, 2, 3, 4])
def test_death_below_grade_5_is_refused(grade: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        assess_seriousness(["death"], grade=grade)
    assert caught.value.field == "grade"


def test_grade_4_without_life_threatening_is_allowed_with_a_note() -> None:
    result = assess_seriousness(["hospitalisation"], grade=4)
    assert result.serious
    assert len(result.notes) == 1
    assert "life_threatening" in result.notes[0]


def test_life_threatening_at_low_grade_is_noted() -> None:
    result = assess_seriousness(["life_threatening"], grade=2)
    assert result.notes and "grade 2" in result.notes[0]
    assert assess_seriousness(["life_threatening"], grade=4).notes == ()


def test_without_grade_only_seriousness_is_assessed() -> None:
    result = assess_seriousness(["death"])
    assert result.serious and result.grade is None and result.grade_label is None


@pytest.mark.parametrize(("criteria", "grade", "field"), [
    (["admission"], None, "serious_criteria"),
    ("death", None, "serious_criteria"),
    ([], 7, "grade"),
])
def test_bad_inputs_are_refused(criteria: object, grade: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        assess_seriousness(criteria, grade=grade)  # type: ignore[arg-type]
    assert caught.value.field == field
