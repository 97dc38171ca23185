"""The rules an adverse event's record must keep, and what its dates and signs make of it.

Pure functions of a folded subject and an `adverse_event` form's values (as recorded, or as a
correction would leave them). The decision calls `check_adverse_event` before an AE is
written; the AE read model (workflow/safety.py) derives its CRS and ICANS grades and its
period with the same functions, so the screen and the refusal never disagree.

- **Onset and consent** (rule `ae_onset_before_consent`): an adverse event of the study begins
  on or after consent; what began before it is medical history.
- **Period** (`ae_period`): an onset after consent but before the infusion (D0), or while the
  subject has not been infused, is `pre_treatment` and outside the primary safety window;
  from D0 on it is `safety_window` (D0..D28 by default) or `after_window`.
- **ASTCT grade** (rule `ae_grade_mismatch`): when an AE records CRS or ICANS signs that give
  an ASTCT grade, the AE's grade is that grade; a different grade given by hand is refused,
  naming both and the signs. The grade stays a required field of the form (the user types
  it; the refusal says which grade the signs give), so a record never depends on a grade
  the user did not see.

Decisions where docs/clinical-rules.md is silent:
- Which grades bind: the AE's own syndrome when its category is `crs` or `icans` and its signs
  give a grade, otherwise every syndrome whose recorded signs give a grade of 1 or more. A
  category `crs`/`icans` AE whose signs give grade 0 (criteria not met, e.g. no fever) is
  refused; on an AE of another category a grade 0 binds nothing (the signs make no CRS).
- Signs insufficient to grade (CRS without a temperature while fever is not masked; ICANS
  without an ICE score, except that an unarousable patient scores ICE 0) give no grade, so
  the grade given by hand stands. Inputs the instrument refuses (ICE above 0 in an
  unarousable patient) are refused as bad input when recorded; a stored record holding them
  shows no grade.
- Inputs left out take the instruments' defaults (hypotension, hypoxia, seizure, motor,
  cerebral edema `none`; consciousness `normal`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from workflow.errors import InvalidInput, RuleViolation
from workflow.instruments.crs import DEFAULT_FEVER_C, grade_crs
from workflow.instruments.icans import grade_icans
from workflow.records import as_date
from workflow.subject import SubjectState

CRS: Final = "crs"
ICANS: Final = "icans"
CRS_INPUTS: Final = ("temperature_c", "hypotension", "hypoxia", "fever_masked")
ICANS_INPUTS: Final = ("ice_score", "consciousness", "seizure", "motor", "cerebral_edema")
_NAMES: Final = {CRS: "CRS", ICANS: "ICANS"}

PRE_TREATMENT: Final = "pre_treatment"
SAFETY_WINDOW: Final = "safety_window"
BEFORE_WINDOW: Final = "before_window"  # from D0 on but before a window that starts later
AFTER_WINDOW: Final = "after_window"
PERIODS: Final = (PRE_TREATMENT, SAFETY_WINDOW, BEFORE_WINDOW, AFTER_WINDOW)


@dataclass(frozen=True)
class AstctGrade:
    """The ASTCT grade an AE's recorded signs give, and what gives it."""

    syndrome: str  # crs | icans
    grade: int  # 0: signs recorded, ASTCT criteria not met
    signs: str  # the recorded inputs, `field=value, …`
    basis: str  # what sets the grade: "decided by hypotension", "no CRS: …"

    @property
    def name(self) -> str:
        return _NAMES[self.syndrome]


# --- the ASTCT grades of an AE's signs ----------------------------------------------------


def _recorded(values: Mapping[str, Any], names: Sequence[str]) -> bool:
    return any(values.get(name) is not None for name in names)


def _signs(values: Mapping[str, Any], names: Sequence[str]) -> str:
    shown = []
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool):
            shown.append(name if value else f"{name}=no")
        elif isinstance(value, float) and value.is_integer():
            shown.append(f"{name}={int(value)}")
        else:
            shown.append(f"{name}={value}")
    return ", ".join(shown) or "none"


# Source: ASTCT consensus grading, Lee et al. 2019, Biol Blood Marrow Transplant 25:625-38 (CRS).
def crs_grade(values: Mapping[str, Any]) -> AstctGrade | None:
    """The ASTCT CRS grade of an AE's CRS signs; None when the AE is no CRS and records no CRS
    sign, or when its signs cannot be graded (no temperature while fever is not masked)."""
    if values.get("category") != CRS and not _recorded(values, CRS_INPUTS):
        return None
    temperature = values.get("temperature_c")
    masked = values.get("fever_masked") is True
    if temperature is None and not masked:
        return None  # insufficient: fever is required and no temperature was recorded
    result = grade_crs(temperature_c=temperature, hypotension=values.get("hypotension") or "none",
                       hypoxia=values.get("hypoxia") or "none", fever_masked=masked)
    if result.grade == 0:
        decided = f"no CRS: fever of {DEFAULT_FEVER_C} °C or more is required unless fever_masked"
    elif result.grade == 1:
        decided = "decided by fever without hypotension or hypoxia"
    elif result.hypotension_grade == result.hypoxia_grade:
        decided = "decided by hypotension and hypoxia"
    else:
        decided = "decided by " + ("hypotension" if result.hypotension_grade
                                   > result.hypoxia_grade else "hypoxia")
    return AstctGrade(CRS, result.grade, _signs(values, CRS_INPUTS), decided)


# Source: ASTCT consensus grading, Lee et al. 2019, Biol Blood Marrow Transplant 25:625-38 (ICANS).
def icans_grade(values: Mapping[str, Any]) -> AstctGrade | None:
    """The ASTCT ICANS grade (adults) of an AE's ICANS signs; None when the AE is no ICANS and
    records no ICANS sign, or when no ICE score is recorded (an unarousable patient scores 0)."""
    if values.get("category") != ICANS and not _recorded(values, ICANS_INPUTS):
        return None
    consciousness = values.get("consciousness") or "normal"
    ice = values.get("ice_score")
    if ice is None and consciousness == "unarousable":
        ice = 0  # an unarousable patient cannot perform the ICE assessment: ICE 0
    if ice is None:
        return None  # insufficient: the ICE score decides the encephalopathy domain
    result = grade_icans(ice_score=ice, consciousness=consciousness,
                         seizure=values.get("seizure") or "none",
                         motor=values.get("motor") or "none",
                         cerebral_edema=values.get("cerebral_edema") or "none")
    if result.grade == 0:
        decided = "no ICANS: ICE score 10 and no other finding"
    else:
        decided = "decided by " + " and ".join(
            d.domain for d in result.domains if d.grade == result.grade)
    return AstctGrade(ICANS, result.grade, _signs(values, ICANS_INPUTS), decided)


def shown_grade(derive: Callable[[Mapping[str, Any]], AstctGrade | None],
                values: Mapping[str, Any]) -> int | None:
    """A read model's `crs_grade`/`icans_grade`: the grade, None when there is none or a
    stored record holds inputs the instrument refuses."""
    try:
        found = derive(values)
    except InvalidInput:
        return None
    return None if found is None else found.grade


def binding_grades(values: Mapping[str, Any]) -> list[AstctGrade]:
    """The ASTCT grades the AE's `grade` must equal (see the module's decisions)."""
    found = [grade for grade in (crs_grade(values), icans_grade(values)) if grade is not None]
    own = [grade for grade in found if grade.syndrome == values.get("category")]
    return own or [grade for grade in found if grade.grade > 0]


# --- the AE's period ----------------------------------------------------------------------


# Source: docs/clinical-rules.md, Adverse events: the primary safety window is D{start}..D{end}.
def ae_period(study_day: int | None, window_start_day: int, window_end_day: int) -> str:
    """`safety_window` inside the window; `pre_treatment` before D0 or before any infusion;
    `after_window` past it (`before_window` only when a protocol starts the window after D0)."""
    if study_day is not None and window_start_day <= study_day <= window_end_day:
        return SAFETY_WINDOW
    if study_day is None or study_day < 0:
        return PRE_TREATMENT
    return BEFORE_WINDOW if study_day < window_start_day else AFTER_WINDOW


# --- the decision's check -----------------------------------------------------------------


def check_adverse_event(state: SubjectState, values: Mapping[str, Any]) -> None:
    """Refuse an `adverse_event` record (new, or as a correction leaves it) that breaks a rule:
    RuleViolation `ae_onset_before_consent` or `ae_grade_mismatch` (exit 1), InvalidInput for
    signs the ASTCT instruments refuse (exit 2); one sentence naming the subject and field."""
    subject = state.subject
    onset = as_date(values.get("onset_date"))
    consented_on = None if state.consent is None else state.consent.consent_date
    if onset is not None and consented_on is not None and onset < consented_on:
        raise RuleViolation(
            f"Subject {subject}: adverse_event onset_date {onset} is before consent on "
            f"{consented_on}; an adverse event of the study begins on or after consent (what "
            "began before it is medical history).",
            rule="ae_onset_before_consent", subject=subject, field="onset_date")
    # Source: ASTCT consensus grading, Lee et al. 2019, Biol Blood Marrow Transplant 25:625-38.
    try:
        grades = binding_grades(values)
    except InvalidInput as error:
        raise InvalidInput(f"Subject {subject}: adverse_event {error.message}",
                           field=error.field, subject=subject) from None
    given = values.get("grade")
    for derived in grades:
        if given != derived.grade:
            raise RuleViolation(_mismatch(subject, given, derived, grades, values),
                                rule="ae_grade_mismatch", subject=subject, field="grade")


def _mismatch(subject: str, given: object, derived: AstctGrade, grades: Sequence[AstctGrade],
              values: Mapping[str, Any]) -> str:
    text = (f"Subject {subject}: adverse_event grade {given} is not ASTCT {derived.name} grade "
            f"{derived.grade}, which the recorded {derived.name} signs give ({derived.signs}; "
            f"{derived.basis})")
    if len({grade.grade for grade in grades}) > 1:
        return (text + "; CRS and ICANS are graded separately, so record each as its own "
                "adverse event (category crs, category icans).")
    if derived.grade == 0:
        return (text + f"; an AE of category {values.get('category')} needs "
                f"{derived.name} signs that meet the ASTCT criteria: correct the signs or the "
                "category.")
    return text + f"; record grade={derived.grade} or correct the signs."
