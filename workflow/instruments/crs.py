"""Cytokine release syndrome (CRS) grade, ASTCT consensus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.codes import CRS_HYPOTENSION, CRS_HYPOXIA
from workflow.instruments.sources import LEE_2019

DEFAULT_FEVER_C: Final = 38.0
TEMPERATURE_MIN_C: Final = 30.0
TEMPERATURE_MAX_C: Final = 45.0

# Grade each level of support gives (0: that sign is absent).
HYPOTENSION_GRADE: Final[dict[str, int]] = {
    "none": 0, "no_vasopressors": 2, "one_vasopressor": 3, "multiple_vasopressors": 4,
}
HYPOXIA_GRADE: Final[dict[str, int]] = {
    "none": 0, "low_flow": 2, "high_flow": 3, "positive_pressure": 4,
}
_HYPOTENSION_TEXT: Final = {
    "no_vasopressors": "hypotension not needing vasopressors",
    "one_vasopressor": "hypotension needing one vasopressor (with or without vasopressin)",
    "multiple_vasopressors": "hypotension needing several vasopressors (excluding vasopressin)",
}
_HYPOXIA_TEXT: Final = {
    "low_flow": "hypoxia needing low-flow oxygen <= 6 L/min or blow-by",
    "high_flow": "hypoxia needing high-flow > 6 L/min, facemask, non-rebreather or Venturi mask",
    "positive_pressure": "hypoxia needing positive pressure (CPAP, BiPAP, intubation)",
}


@dataclass(frozen=True)
class CrsResult:
    grade: int
    fever_criterion_met: bool
    hypotension_grade: int
    hypoxia_grade: int
    explanation: str


# Source: Lee DW et al., Biol Blood Marrow Transplant 2019;25:625-38, ASTCT CRS consensus grading.
def grade_crs(
    *,
    temperature_c: float | None,
    hypotension: str = "none",
    hypoxia: str = "none",
    fever_masked: bool = False,
    fever_threshold_c: float = DEFAULT_FEVER_C,
) -> CrsResult:
    """Grade 0 (no CRS) without fever; otherwise the worse of fever (1), hypotension, hypoxia.

    `fever_masked`: antipyretic or anti-cytokine treatment was given, so fever is no longer
    required and the grade is driven by hypotension and hypoxia (at least grade 1).
    `temperature_c` is the highest recorded temperature; it may be None only when masked.
    """
    masked = check.boolean(fever_masked, "fever_masked")
    threshold = check.number(
        fever_threshold_c, "fever_threshold_c", minimum=TEMPERATURE_MIN_C,
        maximum=TEMPERATURE_MAX_C, unit="°C",
    )
    if temperature_c is None and not masked:
        raise InvalidInput(
            "temperature_c is required unless fever_masked is true.", field="temperature_c"
        )
    temperature = None if temperature_c is None else check.number(
        temperature_c, "temperature_c", minimum=TEMPERATURE_MIN_C, maximum=TEMPERATURE_MAX_C,
        unit="°C",
    )
    pressure = check.choice(hypotension, "hypotension", CRS_HYPOTENSION)
    oxygen = check.choice(hypoxia, "hypoxia", CRS_HYPOXIA)
    pressure_grade = HYPOTENSION_GRADE[pressure]
    oxygen_grade = HYPOXIA_GRADE[oxygen]

    febrile = temperature is not None and check.exact(temperature) >= check.exact(threshold)
    temp_text = (
        "no temperature recorded" if temperature is None
        else f"temperature {check.shown(temperature)} °C "
        + (">=" if febrile else "<") + f" {check.shown(threshold)} °C"
    )
    if not febrile and not masked:
        return CrsResult(
            0, False, pressure_grade, oxygen_grade,
            f"No CRS: {temp_text} and fever is not masked by treatment; fever is required "
            f"({LEE_2019}).",
        )
    grade = max(1, pressure_grade, oxygen_grade)
    signs = [f"fever ({temp_text})" if febrile else
             f"fever masked by antipyretic or anti-cytokine treatment ({temp_text})"]
    if pressure_grade:
        signs.append(f"{_HYPOTENSION_TEXT[pressure]} -> grade {pressure_grade}")
    if oxygen_grade:
        signs.append(f"{_HYPOXIA_TEXT[oxygen]} -> grade {oxygen_grade}")
    if grade == 1:
        decided = "fever without hypotension or hypoxia"
    elif pressure_grade >= oxygen_grade:
        decided = "hypotension" if pressure_grade > oxygen_grade else "hypotension and hypoxia"
    else:
        decided = "hypoxia"
    explanation = (
        f"CRS grade {grade}, decided by {decided}: " + "; ".join(signs) + f" ({LEE_2019})."
    )
    return CrsResult(grade, True, pressure_grade, oxygen_grade, explanation)
