"""ASTCT ICANS grade: ICE boundaries, each domain, the most severe wins, monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.codes import (
    ICANS_CEREBRAL_EDEMA,
    ICANS_CONSCIOUSNESS,
    ICANS_MOTOR,
    ICANS_SEIZURE,
)
from workflow.instruments.icans import grade_icans, ice_total


@pytest.mark.parametrize(("ice", "grade"), [
    (10, 0), (9, 1), (8, 1), (7, 1), (6, 2), (5, 2), (4, 2), (3, 2), (2, 3), (1, 3), (0, 3),
])
def test_every_ice_score(ice: int, grade: int) -> None:
    assert grade_icans(ice_score=ice).grade == grade


def test_ice_6_vs_7_boundary() -> None:
    assert grade_icans(ice_score=7).grade == 1
    assert grade_icans(ice_score=6).grade == 2


def test_calc_example_ice_5_is_grade_2() -> None:
    result = grade_icans(ice_score=5)
    assert result.grade == 2
    assert "decided by ice_score" in result.explanation


def test_ice_10_and_nothing_else_is_no_icans() -> None:
    result = grade_icans(ice_score=10)
    assert result.grade == 0
    assert "No ICANS" in result.explanation


@pytest.mark.parametrize(("level", "grade"), [
    ("normal", 0), ("awakens_spontaneously", 1), ("awakens_to_voice", 2),
    ("awakens_to_tactile", 3),
])
def test_each_consciousness_level(level: str, grade: int) -> None:
    assert grade_icans(ice_score=10, consciousness=level).grade == grade


def test_ice_0_and_unarousable_is_grade_4() -> None:
    assert grade_icans(ice_score=0, consciousness="unarousable").grade == 4


def test_unarousable_patient_cannot_score_above_0() -> None:
    with pytest.raises(InvalidInput) as caught:
        grade_icans(ice_score=5, consciousness="unarousable")
    assert caught.value.field == "ice_score"


@pytest.mark.parametrize(("seizure", "grade"), [
    ("none", 0), ("rapidly_resolving", 3), ("prolonged_or_repetitive", 4),
])
def test_each_seizure_finding(seizure: str, grade: int) -> None:
    assert grade_icans(ice_score=10, seizure=seizure).grade == grade


def test_deep_focal_weakness_is_grade_4() -> None:
    assert grade_icans(ice_score=10, motor="deep_focal_weakness").grade == 4


@pytest.mark.parametrize(("edema", "grade"), [("none", 0), ("focal", 3), ("diffuse", 4)])
def test_each_cerebral_edema_finding(edema: str, grade: int) -> None:
    assert grade_icans(ice_score=10, cerebral_edema=edema).grade == grade


def test_published_example_ice_3_with_seizure_is_grade_3() -> None:
    # Lee et al. 2019: "a patient with an ICE score of 3 who has a generalized seizure is
    # classified as grade 3 ICANS".
    result = grade_icans(ice_score=3, seizure="rapidly_resolving")
    assert result.grade == 3
    assert "seizure" in result.explanation


def test_ice_total_adds_the_five_tasks() -> None:
    assert ice_total(orientation=4, naming=3, commands=1, writing=1, attention=1).ice_score == 10
    result = ice_total(orientation=2, naming=3, commands=1, writing=0, attention=0)
    assert result.ice_score == 6
    assert "orientation 2/4" in result.explanation


@pytest.mark.parametrize(("task", "value"), [
    ("orientation", 5), ("naming", 4), ("commands", 2), ("writing", -1), ("attention", 1.0),
])
def test_ice_task_out_of_range_is_refused(task: str, value: object) -> None:
    tasks: dict[str, object] = {"orientation": 4, "naming": 3, "commands": 1, "writing": 1,
                                "attention": 1, task: value}
    with pytest.raises(InvalidInput) as caught:
        ice_total(**tasks)  # type: ignore[arg-type]
    assert caught.value.field == task


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"ice_score": 11}, "ice_score"),
    ({"ice_score": -1}, "ice_score"),
    ({"ice_score": 7.5}, "ice_score"),
    ({"ice_score": True}, "ice_score"),
    ({"ice_score": 9, "consciousness": "drowsy"}, "consciousness"),
    ({"ice_score": 9, "seizure": "yes"}, "seizure"),
    ({"ice_score": 9, "motor": "hemiparesis"}, "motor"),
    ({"ice_score": 9, "cerebral_edema": "global"}, "cerebral_edema"),
])
def test_bad_inputs_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        grade_icans(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_ice_11_message_names_the_field_and_range() -> None:
    with pytest.raises(InvalidInput) as caught:
        grade_icans(ice_score=11)
    assert caught.value.message == "ice_score must be a whole number from 0 to 10, got 11."


index = st.integers(min_value=0, max_value=10)


@given(st.tuples(index, index), st.tuples(st.integers(0, 4), st.integers(0, 4)),
       st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 1),
       st.integers(0, 1)), st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_grade_never_falls_when_any_domain_worsens(
    ice: tuple[int, int], level: tuple[int, int], fit: tuple[int, int],
    motor: tuple[int, int], edema: tuple[int, int],
) -> None:
    better_ice, worse_ice = max(ice), min(ice)
    mild_level, bad_level = sorted(level)
    assume(bad_level < 4 or worse_ice == 0)
    assume(mild_level < 4 or better_ice == 0)

    def grade(i: int, lv: int, s: int, m: int, e: int) -> int:
        return grade_icans(
            ice_score=i, consciousness=ICANS_CONSCIOUSNESS[lv], seizure=ICANS_SEIZURE[s],
            motor=ICANS_MOTOR[m], cerebral_edema=ICANS_CEREBRAL_EDEMA[e],
        ).grade

    milder = grade(better_ice, mild_level, min(fit), min(motor), min(edema))
    worse = grade(worse_ice, bad_level, max(fit), max(motor), max(edema))
    assert worse >= milder
    assert 0 <= milder <= 4
