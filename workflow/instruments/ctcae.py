"""Adverse event severity (CTCAE v5.0 grade) and seriousness (ICH E2A), checked together."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.codes import CTCAE_GRADES, SERIOUS_CRITERIA
from workflow.instruments.sources import CTCAE_5, ICH_E2A

GRADE_MIN = min(CTCAE_GRADES)
GRADE_MAX = max(CTCAE_GRADES)
DEATH_GRADE = 5
LIFE_THREATENING_GRADE = 4


@dataclass(frozen=True)
class CtcaeGradeResult:
    grade: int
    label: str
    explanation: str


@dataclass(frozen=True)
class SeriousnessResult:
    serious: bool
    serious_criteria: tuple[str, ...]
    grade: int | None
    grade_label: str | None
    notes: tuple[str, ...]
    explanation: str


# Source: NCI CTCAE v5.0 (27 Nov 2017), general definition of grades 1-5.
def ctcae_grade(grade: int) -> CtcaeGradeResult:
    """Grade 1 mild, 2 moderate, 3 severe or medically significant, 4 life-threatening, 5 death."""
    checked = check.whole_number(grade, "grade", minimum=GRADE_MIN, maximum=GRADE_MAX)
    label = CTCAE_GRADES[checked]
    return CtcaeGradeResult(checked, label, f"CTCAE grade {checked}: {label} ({CTCAE_5}).")


# Source: ICH E2A (1994) section II.B (serious), checked against CTCAE v5.0 grades 4 and 5.
def assess_seriousness(
    serious_criteria: Iterable[str], *, grade: int | None = None
) -> SeriousnessResult:
    """Serious when any ICH E2A criterion applies; refuses a grade that contradicts them.

    Grade 5 (death related to the AE) needs the `death` criterion and `death` needs grade 5;
    grade 4 without `life_threatening` (or the reverse) is allowed but noted for review.
    """
    found = check.codes(serious_criteria, "serious_criteria", SERIOUS_CRITERIA, "ICH E2A criterion")
    criteria = tuple(code for code in SERIOUS_CRITERIA if code in found)
    graded = None if grade is None else ctcae_grade(grade)
    notes: list[str] = []
    if graded is not None:
        if graded.grade == DEATH_GRADE and "death" not in found:
            listed = ", ".join(criteria) or "none"
            raise InvalidInput(
                f"serious_criteria must include death when grade is 5 (death related to the AE),"
                f" got {listed}.",
                field="serious_criteria",
            )
        if "death" in found and graded.grade != DEATH_GRADE:
            raise InvalidInput(
                f"grade must be 5 when serious_criteria includes death, got {graded.grade}.",
                field="grade",
            )
        if graded.grade == LIFE_THREATENING_GRADE and "life_threatening" not in found:
            notes.append(
                "CTCAE grade 4 means life-threatening consequences: check whether the "
                "life_threatening criterion applies."
            )
        if "life_threatening" in found and graded.grade < LIFE_THREATENING_GRADE:
            notes.append(
                f"life_threatening is ticked for a grade {graded.grade} event: check the grade."
            )
    serious = bool(criteria)
    if serious:
        verdict = f"Serious ({ICH_E2A}): " + ", ".join(criteria) + "."
    else:
        verdict = f"Not serious: no ICH E2A criterion applies ({ICH_E2A})."
    explanation = verdict
    if graded is not None:
        explanation += f" {graded.explanation} Severity and seriousness are separate assessments."
    if notes:
        explanation += " " + " ".join(notes)
    return SeriousnessResult(
        serious,
        criteria,
        None if graded is None else graded.grade,
        None if graded is None else graded.label,
        tuple(notes),
        explanation,
    )
