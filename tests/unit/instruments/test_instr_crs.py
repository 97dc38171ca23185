"""ASTCT CRS grade: the fever boundary, each support level, the worse sign, monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.codes import CRS_HYPOTENSION, CRS_HYPOXIA
from workflow.instruments.crs import grade_crs


@pytest.mark.parametrize(("temperature", "grade"), [(37.9, 0), (38.0, 1), (38.01, 1), (41.0, 1)])
def test_fever_boundary_is_38_0(temperature: float, grade: int) -> None:
    assert grade_crs(temperature_c=temperature).grade == grade


@pytest.mark.parametrize(("hypotension", "grade"), [
    ("none", 1), ("no_vasopressors", 2), ("one_vasopressor", 3), ("multiple_vasopressors", 4),
])
def test_each_hypotension_level(hypotension: str, grade: int) -> None:
    assert grade_crs(temperature_c=38.5, hypotension=hypotension).grade == grade


@pytest.mark.parametrize(("hypoxia", "grade"), [
    ("none", 1), ("low_flow", 2), ("high_flow", 3), ("positive_pressure", 4),
])
def test_each_hypoxia_level(hypoxia: str, grade: int) -> None:
    assert grade_crs(temperature_c=38.5, hypoxia=hypoxia).grade == grade


def test_calc_example_is_grade_3_decided_by_hypotension() -> None:
    result = grade_crs(temperature_c=39, hypotension="one_vasopressor", hypoxia="low_flow")
    assert result.grade == 3
    assert "decided by hypotension" in result.explanation


def test_worse_of_the_two_decides() -> None:
    assert grade_crs(temperature_c=39, hypotension="no_vasopressors",
                     hypoxia="positive_pressure").grade == 4


def test_without_fever_hypotension_is_not_crs() -> None:
    result = grade_crs(temperature_c=37.2, hypotension="multiple_vasopressors")
    assert result.grade == 0
    assert not result.fever_criterion_met
    assert "fever is required" in result.explanation


def test_masked_fever_is_graded_by_hypotension_and_hypoxia() -> None:
    assert grade_crs(temperature_c=36.8, hypoxia="high_flow", fever_masked=True).grade == 3
    assert grade_crs(temperature_c=None, hypotension="no_vasopressors",
                     fever_masked=True).grade == 2
    masked = grade_crs(temperature_c=None, fever_masked=True)
    assert masked.grade == 1
    assert "masked" in masked.explanation


def test_temperature_is_required_unless_masked() -> None:
    with pytest.raises(InvalidInput) as caught:
        grade_crs(temperature_c=None)
    assert caught.value.field == "temperature_c"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature_c": 390.0}, "temperature_c"),
        ({"temperature_c": float("nan")}, "temperature_c"),
        ({"temperature_c": "39"}, "temperature_c"),
        ({"temperature_c": 39.0, "hypotension": "pressors"}, "hypotension"),
        ({"temperature_c": 39.0, "hypoxia": "cpap"}, "hypoxia"),
        ({"temperature_c": 39.0, "fever_masked": "yes"}, "fever_masked"),
    ],
)
def test_bad_inputs_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        grade_crs(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


temperatures = st.floats(min_value=35.0, max_value=42.0, allow_nan=False)
levels = st.integers(min_value=0, max_value=3)


@given(temperatures, temperatures, levels, levels, levels, levels, st.booleans())
def test_grade_never_falls_when_support_or_temperature_increases(
    t1: float, t2: float, p1: int, p2: int, o1: int, o2: int, masked: bool
) -> None:
    low_t, high_t = sorted((t1, t2))
    low_p, high_p = sorted((p1, p2))
    low_o, high_o = sorted((o1, o2))
    less = grade_crs(temperature_c=low_t, hypotension=CRS_HYPOTENSION[low_p],
                     hypoxia=CRS_HYPOXIA[low_o], fever_masked=masked)
    more = grade_crs(temperature_c=high_t, hypotension=CRS_HYPOTENSION[high_p],
                     hypoxia=CRS_HYPOXIA[high_o], fever_masked=masked)
    assert more.grade >= less.grade
    assert 0 <= less.grade <= 4
