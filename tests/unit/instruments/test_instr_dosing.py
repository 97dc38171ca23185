"""BSA (Mosteller), CAR-T dose by cohort with tolerance, lymphodepletion doses."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.dosing import (
    body_surface_area,
    cart_dose,
    cohort_for_enrolment,
    lymphodepletion_doses,
)


@pytest.mark.parametrize(("height", "weight", "bsa"), [
    (170, 60, 1.68),   # the calc example: sqrt(2.8333) = 1.6833
    (180, 80, 2.00),   # sqrt(4) exactly
    (150, 24, 1.00),   # sqrt(1) exactly
    (160, 33.7640625, 1.23),  # sqrt(1.500625) = 1.225 exactly: rounded half up
    (165, 70, 1.79),   # sqrt(3.2083) = 1.7912
])
def test_mosteller_bsa(height: float, weight: float, bsa: float) -> None:
    result = body_surface_area(height, weight)
    assert result.bsa_m2 == bsa
    assert "3600" in result.explanation


@pytest.mark.parametrize(("height", "weight", "field"), [
    (170, -60, "weight_kg"), (170, 0, "weight_kg"), (0, 60, "height_cm"),
    (float("nan"), 60, "height_cm"), (170, float("inf"), "weight_kg"), (1700, 60, "height_cm"),
    ("170", 60, "height_cm"), (True, 60, "height_cm"),
])
def test_bsa_refuses_bad_measurements(height: object, weight: object, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        body_surface_area(height, weight)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_negative_weight_message_names_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        body_surface_area(170, -60)
    assert caught.value.message.startswith("weight_kg must be")
    assert caught.value.message.endswith("got -60.")


@given(st.floats(100, 220), st.floats(30, 150), st.floats(0.1, 20))
def test_bsa_grows_with_weight(height: float, weight: float, more: float) -> None:
    assert body_surface_area(height, weight + more).bsa_m2 >= body_surface_area(
        height, weight).bsa_m2


@pytest.mark.parametrize(("order", "cohort"), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)])
def test_cohort_by_order_of_enrolment(order: int, cohort: int) -> None:
    assert cohort_for_enrolment(order).cohort == cohort


@pytest.mark.parametrize("order", [0, 7, -1, 2.0])
def test_enrolment_order_outside_the_six_places_is_refused(order: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        cohort_for_enrolment(order)  # type: ignore[arg-type]
    assert caught.value.field == "enrolment_order"


def test_cohort_1_is_1e6_cells_per_kg() -> None:
    result = cart_dose(cohort=1, weight_kg=60)
    assert result.target_cells == 60_000_000
    assert (result.min_cells, result.max_cells) == (48_000_000, 72_000_000)
    assert result.dose_basis == "per_kg"
    assert result.within_tolerance is None


def test_cohort_2_is_a_flat_1e8_cells_whatever_the_weight() -> None:
    result = cart_dose(cohort=2, weight_kg=95)
    assert result.target_cells == 100_000_000
    assert (result.min_cells, result.max_cells) == (80_000_000, 120_000_000)
    assert cart_dose(cohort=2).target_cells == 100_000_000


@pytest.mark.parametrize(("cells", "within"), [
    (48_000_000, True), (47_999_999, False), (72_000_000, True), (72_000_001, False),
    (60_000_000, True),
])
def test_tolerance_of_20_percent_is_inclusive(cells: int, within: bool) -> None:
    result = cart_dose(cohort=1, weight_kg=60, cells=cells)
    assert result.within_tolerance is within
    assert result.deviation_required is (not within)


def test_deviation_percent_and_explanation() -> None:
    result = cart_dose(cohort=2, cells=130_000_000)
    assert result.deviation_percent == 30.0
    assert result.within_tolerance is False
    assert "deviation" in result.explanation


def test_dose_parameters_come_from_the_protocol() -> None:
    assert cart_dose(cohort=1, weight_kg=50, per_kg_dose=2e6).target_cells == 100_000_000
    assert cart_dose(cohort=2, flat_dose=5e7).target_cells == 50_000_000
    assert cart_dose(cohort=2, cells=89_000_000, tolerance=0.1).within_tolerance is False


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cohort": 1}, "weight_kg"),
    ({"cohort": 3, "weight_kg": 60.0}, "cohort"),
    ({"cohort": 1, "weight_kg": -60.0}, "weight_kg"),
    ({"cohort": 1, "weight_kg": 60.0, "cells": 0}, "cells"),
    ({"cohort": 1, "weight_kg": 60.0, "cells": 6.5e7}, "cells"),
    ({"cohort": 2, "tolerance": 1.5}, "tolerance"),
])
def test_cart_dose_refuses_bad_inputs(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        cart_dose(**kwargs)
    assert caught.value.field == field


def test_lymphodepletion_default_regimen() -> None:
    result = lymphodepletion_doses(1.68)
    assert result.fludarabine_mg_per_day == 42.0
    assert result.fludarabine_total_mg == 126.0
    assert result.cyclophosphamide_mg == 1680.0
    assert [(d.day, d.drug) for d in result.schedule] == [
        (-5, "fludarabine"), (-4, "fludarabine"), (-3, "fludarabine"), (-3, "cyclophosphamide"),
    ]
    assert all(d.date is None for d in result.schedule)


def test_lymphodepletion_dates_from_the_infusion_date() -> None:
    result = lymphodepletion_doses(1.75, infusion_date=date(2025, 3, 10))
    assert result.fludarabine_mg_per_day == 43.75
    assert result.cyclophosphamide_mg == 1750.0
    assert [d.date for d in result.schedule][:3] == [
        date(2025, 3, 5), date(2025, 3, 6), date(2025, 3, 7),
    ]


def test_lymphodepletion_regimen_is_a_protocol_setting() -> None:
    result = lymphodepletion_doses(
        1.5, fludarabine_mg_per_m2_per_day=30, cyclophosphamide_mg_per_m2=500,
        cyclophosphamide_days=(-5, -4, -3),
    )
    assert result.fludarabine_mg_per_day == 45.0
    assert result.cyclophosphamide_mg == 750.0
    assert result.cyclophosphamide_total_mg == 2250.0
    assert len(result.schedule) == 6


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"bsa_m2": 0.0}, "bsa_m2"),
    ({"bsa_m2": -1.7}, "bsa_m2"),
    ({"bsa_m2": float("nan")}, "bsa_m2"),
    ({"bsa_m2": 1.7, "fludarabine_days": (-5, -5, -3)}, "fludarabine_days"),
    ({"bsa_m2": 1.7, "cyclophosphamide_days": (0,)}, "cyclophosphamide_days"),
    ({"bsa_m2": 1.7, "fludarabine_mg_per_m2_per_day": -25.0}, "fludarabine_mg_per_m2_per_day"),
])
def test_lymphodepletion_refuses_bad_inputs(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        lymphodepletion_doses(**kwargs)
    assert caught.value.field == field
