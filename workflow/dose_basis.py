"""The basis of a subject's doses, from its records as they stand now: the dosing weight, the
body surface area, the lymphodepletion amounts a regimen day expects and the CAR-T target.
One rule for the dose commands and for the deviations read model, so a corrected weight,
height or cell count moves the dose check with it.

Source: docs/clinical-rules.md, "Dosing": weight is the last recorded before leukapheresis;
BSA by Mosteller (N Engl J Med 1987;317:1098); fludarabine and cyclophosphamide in mg/m²
(Mackensen et al., Nat Med 2022); CAR-T cells per kg by cohort (NCT06513429).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from workflow.instruments.dosing import body_surface_area
from workflow.protocol import Lymphodepletion, Protocol
from workflow.subject import SubjectState

_CENT = Decimal("0.01")


def dosing_weight(state: SubjectState) -> float | None:
    """The last weight (kg) recorded on or before leukapheresis, None when there is none."""
    weight = state.latest_value("vitals", "weight_kg", before=state.collected_on)
    return None if weight is None else float(str(weight))


def dosing_bsa(state: SubjectState) -> float | None:
    """The body surface area (m²) from the last height and the dosing weight."""
    height = state.latest_value("vitals", "height_cm")
    weight = dosing_weight(state)
    if height is None or weight is None:
        return None
    return body_surface_area(float(str(height)), weight).bsa_m2


def expected_doses(regimen: Lymphodepletion, regimen_day: int, bsa_m2: float
                   ) -> dict[str, float]:
    """mg of each regimen drug due on `regimen_day` (0 for a drug not due that day): mg/m² x
    BSA rounded half up to 0.01 mg, as `trialflow calc lymphodepletion-dose` rounds it."""
    return {d.drug: float((Decimal(str(d.mg_per_m2)) * Decimal(str(bsa_m2))).quantize(
        _CENT, rounding=ROUND_HALF_UP)) if regimen_day in d.days else 0.0
        for d in regimen.drugs}


def cart_target(state: SubjectState, protocol: Protocol) -> float | None:
    """The subject's CAR-T target dose (cells) by its cohort and dosing weight, None when the
    enrolment order or the weight is unknown."""
    weight = dosing_weight(state)
    if weight is None or state.enrolment_order is None:
        return None
    return protocol.cohort_for(state.enrolment_order).target_cells(weight)
