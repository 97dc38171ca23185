"""Dosing: body surface area, CAR-T dose by cohort and weight, lymphodepletion doses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.sources import MACKENSEN_2022, MOSTELLER_1987, NCT06513429

HEIGHT_MAX_CM: Final = 300.0
WEIGHT_MAX_KG: Final = 400.0
BSA_MAX_M2: Final = 5.0
CELLS_MAX: Final = 10**12

# Protocol defaults (docs/clinical-rules.md): dose cohorts, tolerance and lymphodepletion regimen.
DEFAULT_PER_KG_DOSE: Final = 1e6
DEFAULT_FLAT_DOSE: Final = 1e8
DEFAULT_DOSE_TOLERANCE: Final = 0.20
DEFAULT_COHORT_SIZE: Final = 3
DEFAULT_COHORT_COUNT: Final = 2
PER_KG_COHORT: Final = 1
FLAT_COHORT: Final = 2
DEFAULT_FLUDARABINE_MG_PER_M2_PER_DAY: Final = 25.0
DEFAULT_FLUDARABINE_DAYS: Final = (-5, -4, -3)
DEFAULT_CYCLOPHOSPHAMIDE_MG_PER_M2: Final = 1000.0
DEFAULT_CYCLOPHOSPHAMIDE_DAYS: Final = (-3,)

_CENT: Final = Decimal("0.01")


@dataclass(frozen=True)
class BsaResult:
    height_cm: float
    weight_kg: float
    bsa_m2: float
    explanation: str


@dataclass(frozen=True)
class CohortResult:
    enrolment_order: int
    cohort: int
    explanation: str


@dataclass(frozen=True)
class CartDoseResult:
    cohort: int
    dose_basis: str
    weight_kg: float | None
    target_cells: int
    min_cells: int
    max_cells: int
    tolerance_percent: float
    cells: int | None
    deviation_percent: float | None
    within_tolerance: bool | None
    deviation_required: bool | None
    explanation: str


@dataclass(frozen=True)
class LymphodepletionDose:
    day: int
    date: date | None
    drug: str
    dose_mg: float


@dataclass(frozen=True)
class LymphodepletionResult:
    bsa_m2: float
    fludarabine_mg_per_day: float
    fludarabine_total_mg: float
    cyclophosphamide_mg: float
    cyclophosphamide_total_mg: float
    schedule: tuple[LymphodepletionDose, ...]
    explanation: str


def _height(value: float) -> float:
    return check.number(
        value, "height_cm", minimum=0, minimum_exclusive=True, maximum=HEIGHT_MAX_CM, unit="cm"
    )


def _weight(value: float) -> float:
    return check.number(
        value, "weight_kg", minimum=0, minimum_exclusive=True, maximum=WEIGHT_MAX_KG, unit="kg"
    )


def _plain(value: Decimal) -> str:
    return f"{value.normalize():f}"


# Source: Mosteller RD, N Engl J Med 1987;317:1098: BSA = sqrt(height cm x weight kg / 3600).
def body_surface_area(height_cm: float, weight_kg: float) -> BsaResult:
    """BSA in m², rounded half up to 2 decimals (170 cm, 60 kg -> 1.68 m²)."""
    height = _height(height_cm)
    weight = _weight(weight_kg)
    exact = (check.exact(height) * check.exact(weight) / Decimal(3600)).sqrt()
    bsa = exact.quantize(_CENT, rounding=ROUND_HALF_UP)
    explanation = (
        f"BSA = sqrt({check.shown(height)} cm x {check.shown(weight)} kg / 3600) = "
        f"{exact.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)} m², rounded to "
        f"{bsa} m² ({MOSTELLER_1987})."
    )
    return BsaResult(height, weight, float(bsa), explanation)


# Source: registry record NCT06513429: subjects 1-3 and 4-6 form the dose cohorts by enrolment.
def cohort_for_enrolment(
    enrolment_order: int,
    *,
    cohort_size: int = DEFAULT_COHORT_SIZE,
    cohort_count: int = DEFAULT_COHORT_COUNT,
) -> CohortResult:
    """The cohort of the n-th enrolment place (a replacement takes the place it fills)."""
    size = check.whole_number(cohort_size, "cohort_size", minimum=1)
    count = check.whole_number(cohort_count, "cohort_count", minimum=1)
    order = check.whole_number(enrolment_order, "enrolment_order", minimum=1, maximum=size * count)
    cohort = (order - 1) // size + 1
    first = (cohort - 1) * size + 1
    return CohortResult(
        order,
        cohort,
        f"Enrolment place {order} is in cohort {cohort} (places {first}-{first + size - 1}; "
        f"{NCT06513429}).",
    )


# Source: registry record NCT06513429 (1e6 cells/kg, then flat 1e8) with the protocol tolerance.
def cart_dose(
    *,
    cohort: int,
    weight_kg: float | None = None,
    cells: int | None = None,
    per_kg_dose: float = DEFAULT_PER_KG_DOSE,
    flat_dose: float = DEFAULT_FLAT_DOSE,
    tolerance: float = DEFAULT_DOSE_TOLERANCE,
) -> CartDoseResult:
    """Target CAR-T cells for the cohort; with `cells`, whether the dose is within tolerance.

    Cohort 1 gets `per_kg_dose` x the dosing weight (the latest weight before leukapheresis);
    cohort 2 a flat `flat_dose`. Outside ±tolerance the infusion needs a deviation with a reason.
    """
    group = check.whole_number(cohort, "cohort", minimum=PER_KG_COHORT, maximum=FLAT_COHORT)
    weight = None if weight_kg is None else _weight(weight_kg)
    per_kg = check.exact(check.number(
        per_kg_dose, "per_kg_dose", minimum=0, minimum_exclusive=True, maximum=CELLS_MAX
    ))
    flat = check.exact(check.number(
        flat_dose, "flat_dose", minimum=0, minimum_exclusive=True, maximum=CELLS_MAX
    ))
    margin = check.exact(check.number(tolerance, "tolerance", minimum=0, maximum=1))
    given = None if cells is None else check.whole_number(
        cells, "cells", minimum=1, maximum=CELLS_MAX
    )
    if group == PER_KG_COHORT:
        if weight is None:
            raise InvalidInput("weight_kg is required for cohort 1 (dose per kg).",
                               field="weight_kg")
        basis = "per_kg"
        target = per_kg * check.exact(weight)
        how = f"{_cells(per_kg)} cells/kg x {check.shown(weight)} kg"
    else:
        basis = "flat"
        target = flat
        how = f"flat {_cells(flat)} cells"
    low = int((target * (1 - margin)).to_integral_value(rounding=ROUND_CEILING))
    high = int((target * (1 + margin)).to_integral_value(rounding=ROUND_FLOOR))
    target_cells = int(target.to_integral_value(rounding=ROUND_HALF_UP))
    explanation = (
        f"Cohort {group}: {how} = {_cells(target)} cells; tolerance ±{_plain(margin * 100)}% "
        f"allows {_cells(Decimal(low))} to {_cells(Decimal(high))} cells ({NCT06513429})."
    )
    deviation: float | None = None
    within: bool | None = None
    if given is not None:
        within = low <= given <= high
        deviation = float(
            ((Decimal(given) - target) / target * 100).quantize(_CENT, rounding=ROUND_HALF_UP)
        )
        explanation += (
            f" Given {_cells(Decimal(given))} cells ({deviation:+g}% of target): "
            + ("within tolerance." if within else "outside tolerance, a deviation with a reason "
               "is required.")
        )
    return CartDoseResult(
        group, basis, weight, target_cells, low, high, float(margin * 100), given, deviation,
        within, None if within is None else not within, explanation,
    )


def _cells(value: Decimal) -> str:
    """Cell counts in scientific notation as clinicians write them: 6.25e7, 1e8."""
    if not value:
        return "0"
    exponent = value.adjusted()
    mantissa = value.scaleb(-exponent).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    return f"{_plain(mantissa)}e{exponent}"


# Source: Mackensen A et al., Nat Med 2022;28:2124-32 (fludarabine/cyclophosphamide regimen).
def lymphodepletion_doses(
    bsa_m2: float,
    *,
    fludarabine_mg_per_m2_per_day: float = DEFAULT_FLUDARABINE_MG_PER_M2_PER_DAY,
    fludarabine_days: Iterable[int] = DEFAULT_FLUDARABINE_DAYS,
    cyclophosphamide_mg_per_m2: float = DEFAULT_CYCLOPHOSPHAMIDE_MG_PER_M2,
    cyclophosphamide_days: Iterable[int] = DEFAULT_CYCLOPHOSPHAMIDE_DAYS,
    infusion_date: date | None = None,
) -> LymphodepletionResult:
    """Daily doses = mg/m² x BSA, rounded half up to 0.01 mg; days are study days before D0."""
    bsa = check.exact(check.number(
        bsa_m2, "bsa_m2", minimum=0, minimum_exclusive=True, maximum=BSA_MAX_M2, unit="m²"
    ))
    flu_rate = check.exact(check.number(
        fludarabine_mg_per_m2_per_day, "fludarabine_mg_per_m2_per_day", minimum=0
    ))
    cy_rate = check.exact(check.number(
        cyclophosphamide_mg_per_m2, "cyclophosphamide_mg_per_m2", minimum=0
    ))
    flu_days = _days(fludarabine_days, "fludarabine_days")
    cy_days = _days(cyclophosphamide_days, "cyclophosphamide_days")
    d0 = None if infusion_date is None else check.calendar_date(infusion_date, "infusion_date")
    flu = (flu_rate * bsa).quantize(_CENT, rounding=ROUND_HALF_UP)
    cy = (cy_rate * bsa).quantize(_CENT, rounding=ROUND_HALF_UP)

    def on(day: int) -> date | None:
        return None if d0 is None else d0 + timedelta(days=day)

    schedule = sorted(
        [LymphodepletionDose(day, on(day), "fludarabine", float(flu)) for day in flu_days]
        + [LymphodepletionDose(day, on(day), "cyclophosphamide", float(cy)) for day in cy_days],
        key=lambda dose: (dose.day, dose.drug != "fludarabine"),
    )
    flu_total = flu * len(flu_days)
    cy_total = cy * len(cy_days)
    explanation = (
        f"Fludarabine {_plain(flu_rate)} mg/m²/day x {_plain(bsa)} m² = {_plain(flu)} mg/day on "
        f"{_day_list(flu_days)} (total {_plain(flu_total)} mg); cyclophosphamide "
        f"{_plain(cy_rate)} mg/m² x {_plain(bsa)} m² = {_plain(cy)} mg on {_day_list(cy_days)} "
        f"(total {_plain(cy_total)} mg) ({MACKENSEN_2022}; a protocol setting)."
    )
    return LymphodepletionResult(
        float(bsa), float(flu), float(flu_total), float(cy), float(cy_total), tuple(schedule),
        explanation,
    )


def _days(values: Iterable[int], field: str) -> tuple[int, ...]:
    days = tuple(values)
    for day in days:
        check.whole_number(day, field, minimum=-60, maximum=-1)
    if len(set(days)) != len(days):
        raise InvalidInput(f"{field} must not repeat a day, got {list(days)}.", field=field)
    return tuple(sorted(days))


def _day_list(days: tuple[int, ...]) -> str:
    return ", ".join(f"D{day}" for day in days)
