"""Eligibility of a screened subject: the nine inclusion criteria and the exclusion checklist.

Pure functions, no I/O and no clock: `today` is a parameter. The rules are those of
docs/clinical-rules.md ("Inclusion criteria (registry text) as computable rules"); every
threshold comes from the `Protocol`, every score from `workflow.instruments`.

Input: the subject's forms in log order with every correction applied (`RecordedForm.values`
are current values), and its consent. Each criterion is `met`, `not_met`, `pending` (data
missing: the reason names the form and field) or `not_applicable`, with its evidence (the
recorded values used and their log positions). Missing data is never guessed.

Conventions chosen here (written down so the screen, the guard and the docs agree):
- Screening starts on the consent date S and the window ends on S + `screening_window_days`
  (the last day confirmation is allowed; `days_left` is 0 on it and negative after it).
- A form is dated by its assessment date (`forms.assessment_date`: the form's own date field
  such as `pregnancy_test.test_date`, else the day it was recorded for). "Latest" means the
  latest date, ties broken by the later log position.
- "During screening" is S .. S + window days; the medication rules look at S .. min(today,
  window end).
- Eligibility is judged on the forms dated on or before the day it is evaluated for: today
  while screening lasts, and once an investigator has confirmed it, the confirmation date
  (`confirmed_on`), as of which it was judged. A form dated later never changes the answer:
  an exclusion answered yes, a positive pregnancy test or contraception not agreed dated after
  the confirmation is a post-enrolment finding, listed for the investigator and the monitor
  (`post_enrolment_findings`) but not judged. A screening form entered late but dated on or
  before the confirmation is screening data and is judged (retrospective entry).
- Medication lines: `start_date` is the first day taken, `stop_date` the last day taken (absent:
  still taken), `dose_changed_on` the first day of the current `dose_mg_per_day` (the dose
  before it is not known from that line). A dose change is therefore "N days before
  screening" when the new dose starts N days before S; a stop on day X is a change on X + 1.
  When several lines of the same drug cover a day, the one with the latest start of its dose
  (then the later position) supersedes the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from workflow.errors import InvalidInput
from workflow.forms import FORMS, assessment_date
from workflow.instruments.codes import (
    EULAR_ACR_2019_CRITERIA,
    GLUCOCORTICOID_FACTORS,
    INCLUSION_CRITERIA,
    SLEDAI2K_DESCRIPTORS,
    canonical_drug,
)
from workflow.instruments.eular_acr_2019 import classify_eular_acr_2019, parse_ana_titer
from workflow.instruments.sledai2k import sledai2k_score
from workflow.instruments.sources import ARINGER_2019, GLADMAN_2002, STEROID_TABLE, TOUMA_2010
from workflow.instruments.steroids import prednisone_equivalent
from workflow.protocol import Protocol
from workflow.records import Consent, RecordedForm, as_date, as_number

if TYPE_CHECKING:
    from workflow.study import Study
    from workflow.subject import SubjectState

Status = Literal["met", "not_met", "pending", "not_applicable"]
Overall = Literal["eligible", "ineligible", "pending"]
Answer = Literal["yes", "no"]
JsonScalar = str | int | float | bool | None

STATUSES: Final[tuple[Status, ...]] = ("met", "not_met", "pending", "not_applicable")
PASSING: Final[frozenset[str]] = frozenset({"met", "not_applicable"})

# Drug names of the `refractory` criterion (registry NCT06513429 inclusion 4), compared after
# lower-casing, turning "_" and "-" into spaces and replacing an alias ("MMF", "CYC", "RTX":
# codes.DRUG_ALIASES) by its generic name (codes.canonical_drug).
CYTOTOXIC_DRUGS: Final[frozenset[str]] = frozenset(
    {"cyclophosphamide", "mycophenolate mofetil", "mycophenolate"}
)
B_CELL_BIOLOGICS: Final[frozenset[str]] = frozenset({"belimumab", "rituximab"})
REFRACTORY_OUTCOMES: Final[frozenset[str]] = frozenset({"inadequate_response", "relapse"})
BACKGROUND_CLASSES: Final[tuple[str, ...]] = ("glucocorticoid", "antimalarial", "immunosuppressant")


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """One recorded value a criterion used: the log position of its form, field and value."""

    position: int
    field: str
    value: JsonScalar

    def to_json(self) -> dict[str, object]:
        return {"position": self.position, "field": self.field, "value": self.value}


@dataclass(frozen=True)
class CriterionResult:
    """One inclusion criterion: its status, one readable sentence and the evidence."""

    code: str
    status: Status
    reason: str
    evidence: tuple[Evidence, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "status": self.status,
            "reason": self.reason,
            "evidence": [item.to_json() for item in self.evidence],
        }


@dataclass(frozen=True)
class PostEnrolmentFinding:
    """A value dated after the eligibility confirmation that would have counted against
    eligibility (an exclusion answered yes, a positive pregnancy test, contraception not
    agreed): listed, never judged."""

    form: str
    position: int
    field: str
    value: JsonScalar
    on: date
    criterion: str  # the inclusion criterion or exclusion code it bears on

    def to_json(self) -> dict[str, object]:
        return {"form": self.form, "position": self.position, "field": self.field,
                "value": self.value, "on": self.on.isoformat(), "criterion": self.criterion}


@dataclass(frozen=True)
class Eligibility:
    """Eligibility of one subject as of `evaluated_on` (the `today` it was evaluated for, or
    the confirmation date once eligibility is confirmed)."""

    overall: Overall
    criteria: tuple[CriterionResult, ...]
    exclusions: tuple[tuple[str, Answer | None], ...]
    screening_window_ends: date | None
    evaluated_on: date
    exclusion_checklist_position: int | None = None
    confirmed_on: date | None = None
    post_enrolment_findings: tuple[PostEnrolmentFinding, ...] = ()

    def days_left(self, today: date) -> int | None:
        """Days until the screening window ends: 0 on its last day, negative once it closed."""
        if self.screening_window_ends is None:
            return None
        return (self.screening_window_ends - today).days

    def criterion(self, code: str) -> CriterionResult:
        """The result of inclusion criterion `code`."""
        for result in self.criteria:
            if result.code == code:
                return result
        raise KeyError(code)

    def to_json(self) -> dict[str, object]:
        """The `eligibility SUBJECT` document of docs/design.md (days_left as of `evaluated_on`)."""
        ends = self.screening_window_ends
        return {
            "overall": self.overall,
            "criteria": [result.to_json() for result in self.criteria],
            "exclusions": [{"code": code, "answer": answer} for code, answer in self.exclusions],
            "screening_window_ends": None if ends is None else ends.isoformat(),
            "days_left": self.days_left(self.evaluated_on),
            "confirmed_on": None if self.confirmed_on is None else self.confirmed_on.isoformat(),
            "post_enrolment_findings": [item.to_json()
                                        for item in self.post_enrolment_findings],
        }


# --- the subject's data as the criteria see it --------------------------------------------


@dataclass(frozen=True)
class ScreeningData:
    """The inputs of every criterion: forms (current values), consent, protocol and today."""

    forms: tuple[RecordedForm, ...]
    consent: Consent | None
    protocol: Protocol
    today: date

    def of(self, form: str) -> tuple[RecordedForm, ...]:
        """The forms with code `form`, in the order given (log order)."""
        return tuple(item for item in self.forms if item.form == form)

    @property
    def screening_start(self) -> date | None:
        return None if self.consent is None else self.consent.consent_date

    @property
    def screening_window_ends(self) -> date | None:
        start = self.screening_start
        if start is None:
            return None
        return start + timedelta(days=self.protocol.screening_window_days)

    @property
    def screening_until(self) -> date | None:
        """The last day the medication rules look at: today, but not past the window."""
        start, ends = self.screening_start, self.screening_window_ends
        if start is None or ends is None:
            return None
        return max(start, min(self.today, ends))

    def in_screening(self, form: RecordedForm) -> bool:
        start, ends = self.screening_start, self.screening_window_ends
        return start is not None and ends is not None and start <= form_date(form) <= ends

    def screening_text(self) -> str:
        start, ends = self.screening_start, self.screening_window_ends
        if start is None or ends is None:
            return "screening (no consent recorded, so screening has not started)"
        return f"screening ({start.isoformat()} to {ends.isoformat()})"


def form_date(form: RecordedForm) -> date:
    """The clinical date of a form: its assessment date, else the day it was recorded for
    (kept in the instance: a form is never changed, a correction makes a new one)."""
    try:
        return form._form_date  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        pass
    dated = None
    if form.form in FORMS:
        dated = assessment_date(form.form, form.values, form.recorded_on)
    dated = form.recorded_on if dated is None else dated
    object.__setattr__(form, "_form_date", dated)
    return dated


def _latest(forms: Iterable[RecordedForm]) -> RecordedForm | None:
    return max(forms, key=lambda item: (form_date(item), item.position), default=None)


def _latest_with(forms: Iterable[RecordedForm], field: str) -> RecordedForm | None:
    return _latest(item for item in forms if item.get(field) is not None)


# --- value helpers ------------------------------------------------------------------------


def _as_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _json(value: object) -> JsonScalar:
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _ev(form: RecordedForm, field: str) -> Evidence:
    return Evidence(form.position, field, _json(form.get(field)))


def _num(value: float | Decimal) -> str:
    return f"{float(value):g}"


def _drug_name(value: object) -> str:
    return canonical_drug(value)


def _at(form: RecordedForm) -> str:
    return f"{form.form}, position {form.position}"


def _result(
    code: str, status: Status, reason: str, evidence: Iterable[Evidence] = ()
) -> CriterionResult:
    return CriterionResult(code, status, reason, tuple(dict.fromkeys(evidence)))


@dataclass(frozen=True)
class _Finding:
    """A problem found by a criterion with several parts: not_met or pending."""

    status: Status
    reason: str
    evidence: tuple[Evidence, ...] = ()


def _combine(
    code: str, findings: Sequence[_Finding], met_reason: str, met_evidence: Iterable[Evidence]
) -> CriterionResult:
    """not_met when any part is not met, else pending when any is pending, else met."""
    for status in ("not_met", "pending"):
        found = next((item for item in findings if item.status == status), None)
        if found is not None:
            return _result(code, found.status, found.reason, found.evidence)
    return _result(code, "met", met_reason, met_evidence)


def _no_consent(code: str, what: str) -> CriterionResult:
    return _result(code, "pending", f"No consent is recorded, so {what} cannot be assessed.")


# --- the nine inclusion criteria ----------------------------------------------------------


# Source: registry NCT06513429 inclusion 1; Aringer et al., Ann Rheum Dis 2019 (EULAR/ACR 2019).
def criterion_eular_acr_2019(data: ScreeningData) -> CriterionResult:
    """Classified as SLE from every sle_classification form: union of items, highest ANA."""
    code = "eular_acr_2019"
    forms = data.of("sle_classification")
    if not forms:
        return _result(code, "pending", "No sle_classification form is recorded.")
    titers = [item for item in forms if _titer(item.get("ana_titer")) is not None]
    if not titers:
        return _result(code, "pending", "No sle_classification.ana_titer is recorded, and the "
                                        "EULAR/ACR 2019 entry criterion needs it.")
    best = max(titers, key=lambda item: (_titer(item.get("ana_titer")) or 0, -item.position))
    titer = _titer(best.get("ana_titer")) or 0
    first_seen: dict[str, RecordedForm] = {}
    for item in sorted(forms, key=lambda form: form.position):
        for criterion in EULAR_ACR_2019_CRITERIA:
            if item.get(criterion) is True:
                first_seen.setdefault(criterion, item)
    result = classify_eular_acr_2019(titer if titer > 0 else None, tuple(first_seen))
    evidence = [_ev(best, "ana_titer")] + [
        _ev(first_seen[criterion], criterion)
        for criterion in EULAR_ACR_2019_CRITERIA
        if criterion in first_seen
    ]
    shown = "negative" if titer <= 0 else f"1:{titer}"
    if result.classified:
        return _result(code, "met", f"Classified as SLE by EULAR/ACR 2019: ANA {shown} and "
                                    f"{result.points} points with at least one clinical "
                                    f"criterion ({ARINGER_2019}).", evidence)
    if not result.entry_criterion_met:
        why = f"the highest ANA titre recorded is {shown}, below the entry criterion of 1:80"
    elif result.points < 10:
        why = f"{result.points} points is below the 10 points needed"
    else:
        why = "no clinical criterion is present"
    return _result(code, "not_met", f"Not classified as SLE by EULAR/ACR 2019: {why} "
                                    f"({ARINGER_2019}).", evidence)


def _titer(value: object) -> int | None:
    """A recorded ANA titre as its reciprocal (0: negative); None when not a titre."""
    if isinstance(value, str) and value.strip().lower() == "negative":
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    try:
        return parse_ana_titer(value)
    except InvalidInput:
        return None


def completed_years(born: date, on: date) -> int:
    """Age in completed years on `on` (one born on 29 February turns a year older on 1 March
    in a common year)."""
    years = on.year - born.year
    return years - 1 if (on.month, on.day) < (born.month, born.day) else years


# Source: registry NCT06513429 inclusion 2 (age in completed years at consent, 18..65).
def criterion_age(data: ScreeningData) -> CriterionResult:
    code = "age"
    if data.consent is None:
        return _no_consent(code, "the age at consent")
    form = _latest_with(data.of("demographics"), "date_of_birth")
    born = None if form is None else as_date(form.get("date_of_birth"))
    if form is None or born is None:
        return _result(code, "pending", "No demographics.date_of_birth is recorded.")
    consent = data.consent
    age = completed_years(born, consent.consent_date)
    low, high = data.protocol.age_min_years, data.protocol.age_max_years
    evidence = (
        _ev(form, "date_of_birth"),
        Evidence(consent.position, "consent_date", consent.consent_date.isoformat()),
    )
    text = (f"Age {age} in completed years at consent on {consent.consent_date.isoformat()} "
            f"(born {born.isoformat()})")
    if age < low:
        return _result(code, "not_met", f"{text} is below the minimum of {low} years.", evidence)
    if age > high:
        return _result(code, "not_met", f"{text} is above the maximum of {high} years.", evidence)
    return _result(code, "met", f"{text} is within {low} to {high} years.", evidence)


# Source: registry NCT06513429 inclusion 3 (latest screening weight >= 40 kg).
def criterion_weight(data: ScreeningData) -> CriterionResult:
    code = "weight"
    if data.consent is None:
        return _no_consent(code, "the screening weight")
    screening = [item for item in data.of("vitals") if data.in_screening(item)]
    form = _latest_with(screening, "weight_kg")
    weight = None if form is None else as_number(form.get("weight_kg"))
    if form is None or weight is None:
        return _result(code, "pending",
                       f"No vitals.weight_kg is recorded during {data.screening_text()}.")
    minimum = data.protocol.weight_min_kg
    text = f"Latest screening weight {_num(weight)} kg on {form_date(form).isoformat()}"
    evidence = (_ev(form, "weight_kg"),)
    if weight >= minimum:
        return _result(code, "met", f"{text} is at least {_num(minimum)} kg.", evidence)
    return _result(code, "not_met", f"{text} is below {_num(minimum)} kg.", evidence)


# Source: registry NCT06513429 inclusion 4 (glucocorticoid; CYC or MMF; belimumab or rituximab;
# still active or relapsed after them).
def criterion_refractory(data: ScreeningData) -> CriterionResult:
    code = "refractory"
    forms = data.of("prior_treatment")
    if not forms:
        return _result(code, "pending", "No prior_treatment form is recorded.")
    groups: dict[str, list[RecordedForm]] = {
        "a glucocorticoid": [
            item for item in forms
            if item.get("drug_class") == "glucocorticoid"
            or _drug_name(item.get("drug")) in GLUCOCORTICOID_FACTORS
        ],
        "cyclophosphamide or mycophenolate mofetil": [
            item for item in forms if _drug_name(item.get("drug")) in CYTOTOXIC_DRUGS
        ],
        "belimumab or rituximab": [
            item for item in forms if _drug_name(item.get("drug")) in B_CELL_BIOLOGICS
        ],
    }
    missing = [group for group, found in groups.items() if not found]
    if missing:
        return _result(code, "pending", f"No prior_treatment form records {' nor '.join(missing)}.")
    used = sorted({item.position: item for found in groups.values() for item in found}.values(),
                  key=lambda item: item.position)
    evidence = [_ev(item, "drug") for item in used]
    refractory = [item for item in used if item.get("outcome") in REFRACTORY_OUTCOMES]
    if refractory:
        evidence += [_ev(item, "outcome") for item in refractory]
        names = ", ".join(f"{item.get('drug')} {item.get('outcome')}" for item in refractory)
        return _result(code, "met", f"Treated with a glucocorticoid, {_drug_list(groups)}, and "
                                    f"the disease stayed active or relapsed after them "
                                    f"({names}).", evidence)
    unknown = [item for item in used if item.get("outcome") is None]
    if unknown:
        where = ", ".join(f"{item.get('drug')} ({_at(item)})" for item in unknown)
        return _result(code, "pending", f"No prior_treatment.outcome is recorded for {where}, so "
                                        "activity after these treatments is unknown.", evidence)
    evidence += [_ev(item, "outcome") for item in used]
    return _result(code, "not_met", "No prior treatment of the required classes ended with "
                                    "inadequate_response or relapse, so the disease is not shown "
                                    "to be refractory.", evidence)


def _drug_list(groups: Mapping[str, Sequence[RecordedForm]]) -> str:
    keys = ("cyclophosphamide or mycophenolate mofetil", "belimumab or rituximab")
    return " and ".join(
        "/".join(sorted({str(item.get("drug")) for item in groups[key]})) for key in keys
    )


# Source: registry NCT06513429 inclusion 5 (stable background therapy); prednisone equivalents
# from the prednisolone label equivalence table.
def criterion_stable_background_therapy(data: ScreeningData) -> CriterionResult:
    code = "stable_background_therapy"
    start, until = data.screening_start, data.screening_until
    if start is None or until is None:
        return _no_consent(code, "the background therapy at screening")
    lines = [_Line.of(item) for item in data.of("medication")]
    if not lines:
        return _result(code, "pending", "No medication form is recorded.")
    therapy = data.protocol.background_therapy
    findings: list[_Finding] = []
    findings += _biologic_findings(lines, start, until, therapy.biologic_stopped_days)
    steroid = _glucocorticoid_course(
        [line for line in lines if line.drug_class == "glucocorticoid"], start, until, data
    )
    findings += steroid.findings
    others, other_findings = _antimalarial_immunosuppressant(lines, start, until, data)
    findings += other_findings
    on_steroid = steroid.dose_at_start is not None and steroid.dose_at_start > 0
    if not findings and not on_steroid and not others:
        findings.append(_Finding("not_met", "Not on a glucocorticoid, antimalarial or "
                                            f"immunosuppressant at screening start on "
                                            f"{start.isoformat()}."))
    parts = []
    if on_steroid and steroid.dose_at_start is not None:
        parts.append(f"glucocorticoid {_num(steroid.dose_at_start)} mg/day prednisone "
                     f"equivalent unchanged for at least {therapy.glucocorticoid_stable_days} "
                     "days")
    parts += [f"{line.name} since {line.start.isoformat()}" for line in others
              if line.start is not None]
    evidence = [*steroid.evidence]
    for line in others:
        evidence += [_ev(line.form, "drug"), _ev(line.form, "start_date")]
    reason = (f"Stable background therapy at screening start on {start.isoformat()}: "
              f"{', '.join(parts)}; no biologic within {therapy.biologic_stopped_days} days "
              "before screening.")
    return _combine(code, findings, reason, evidence)


@dataclass(frozen=True)
class _Line:
    """One medication form as a line of a medication history."""

    form: RecordedForm
    name: str  # as recorded
    drug: str  # normalised
    drug_class: str
    start: date | None
    stop: date | None
    changed: date | None

    @classmethod
    def of(cls, form: RecordedForm) -> _Line:
        drug = form.get("drug")
        return cls(
            form,
            str(drug) if drug is not None else "unnamed drug",
            _drug_name(drug),
            str(form.get("drug_class") or ""),
            as_date(form.get("start_date")),
            as_date(form.get("stop_date")),
            as_date(form.get("dose_changed_on")),
        )

    @property
    def label(self) -> str:
        return f"{self.name} ({_at(self.form)})"

    @property
    def begin(self) -> date | None:
        """The first day of the recorded dose."""
        return self.changed if self.changed is not None else self.start

    def taken_on(self, day: date) -> bool:
        return self.begin is not None and self.begin <= day and (
            self.stop is None or day <= self.stop
        )

    def dose_evidence(self) -> list[Evidence]:
        changed = "dose_changed_on" if self.changed is not None else "start_date"
        return [_ev(self.form, "drug"), _ev(self.form, "dose_mg_per_day"), _ev(self.form, changed)]


def _days_before(day: date, start: date) -> str:
    days = (start - day).days
    if days < 0:
        return f"{-days} days after screening began on {start.isoformat()}"
    return f"{days} days before screening began on {start.isoformat()}"


def _biologic_findings(
    lines: Sequence[_Line], start: date, until: date, stopped_days: int
) -> list[_Finding]:
    """Biologics stopped at least `stopped_days` before screening (last dose on or before)."""
    findings: list[_Finding] = []
    latest_stop = start - timedelta(days=stopped_days)
    for line in lines:
        if line.drug_class != "biologic" or (line.start is not None and line.start > until):
            continue
        if line.stop is None and line.start is None:
            findings.append(_Finding("pending", f"Biologic {line.label} has neither "
                                                "medication.start_date nor stop_date recorded."))
        elif line.stop is None:
            findings.append(_Finding("not_met", f"Biologic {line.label} has no stop_date (still "
                                                f"taken); it must have stopped at least "
                                                f"{stopped_days} days before screening.",
                                     (_ev(line.form, "drug"), _ev(line.form, "start_date"))))
        elif line.stop > latest_stop:
            findings.append(_Finding("not_met", f"Biologic {line.label} stopped on "
                                                f"{line.stop.isoformat()}, "
                                                f"{_days_before(line.stop, start)}; at least "
                                                f"{stopped_days} days are required.",
                                     (_ev(line.form, "drug"), _ev(line.form, "stop_date"))))
    return findings


def _antimalarial_immunosuppressant(
    lines: Sequence[_Line], start: date, until: date, data: ScreeningData
) -> tuple[list[_Line], list[_Finding]]:
    """Started >= 84 days before screening; unchanged from 56 days before to screening's end."""
    therapy = data.protocol.background_therapy
    started_by = start - timedelta(days=therapy.antimalarial_immunosuppressant_started_days)
    stable_from = start - timedelta(days=therapy.antimalarial_immunosuppressant_stable_days)
    active: list[_Line] = []
    findings: list[_Finding] = []
    for line in lines:
        if line.drug_class not in ("antimalarial", "immunosuppressant"):
            continue
        if line.stop is not None and line.stop < stable_from:
            continue  # last dose before the stable period: no longer background therapy
        begin = line.start if line.start is not None else line.changed
        if begin is not None and begin > until:
            continue  # started after screening
        if line.start is None:
            findings.append(_Finding("pending", f"No medication.start_date is recorded for "
                                                f"{line.drug_class} {line.label}."))
            continue
        cited = (_ev(line.form, "drug"), _ev(line.form, "start_date"))
        if line.start > started_by:
            findings.append(_Finding("not_met", f"{line.drug_class.capitalize()} {line.label} "
                                                f"started on {line.start.isoformat()}, "
                                                f"{_days_before(line.start, start)}; at least "
                                                f"{therapy.antimalarial_immunosuppressant_started_days}"
                                                " days are required.", cited))
        if line.changed is not None and stable_from < line.changed <= until:
            findings.append(_Finding("not_met", f"The dose of {line.label} changed on "
                                                f"{line.changed.isoformat()}, "
                                                f"{_days_before(line.changed, start)}; it must be "
                                                f"unchanged from "
                                                f"{therapy.antimalarial_immunosuppressant_stable_days}"
                                                " days before screening to its end.",
                                     (_ev(line.form, "drug"), _ev(line.form, "dose_changed_on"))))
        if line.stop is not None and line.stop < until:
            findings.append(_Finding("not_met", f"{line.drug_class.capitalize()} {line.label} "
                                                f"stopped on "
                                                f"{line.stop.isoformat()}, "
                                                f"{_days_before(line.stop, start)}; the dose must "
                                                "be unchanged from "
                                                f"{therapy.antimalarial_immunosuppressant_stable_days}"
                                                " days before screening to its end.",
                                     (_ev(line.form, "drug"), _ev(line.form, "stop_date"))))
        if line.start <= start and (line.stop is None or line.stop >= start):
            active.append(line)
    return active, findings


@dataclass(frozen=True)
class _SteroidCourse:
    dose_at_start: Decimal | None
    findings: tuple[_Finding, ...]
    evidence: tuple[Evidence, ...]


def _prednisone_mg(line: _Line) -> tuple[Decimal | None, str]:
    """The line's dose in prednisone-equivalent mg/day, or None with the reason."""
    dose = as_number(line.form.get("dose_mg_per_day"))
    if dose is None:
        return None, f"no medication.dose_mg_per_day is recorded for {line.label}"
    try:
        equivalent = prednisone_equivalent(line.drug, dose).prednisone_mg
    except InvalidInput:
        return None, f"{line.label} has no prednisone equivalent in the {STEROID_TABLE}"
    return Decimal(repr(equivalent)), ""


def _drug_dose_on(lines: Sequence[_Line], day: date,
                  convert: Callable[[_Line], tuple[Decimal | None, str]] = _prednisone_mg,
                  ) -> tuple[Decimal | None, str]:
    """One glucocorticoid's prednisone-equivalent dose on `day` (None: not known, and why)."""
    taken = [line for line in lines if line.taken_on(day)]
    if taken:
        line = max(taken, key=lambda item: (item.begin or day, item.form.position))
        return convert(line)
    for line in lines:
        if line.stop is not None and day > line.stop:
            continue
        if line.begin is None:
            return None, f"no medication.start_date is recorded for {line.label}"
        if line.changed is not None and day < line.changed and (
            line.start is None or line.start <= day
        ):
            return None, (f"the dose of {line.label} before its change on "
                          f"{line.changed.isoformat()} is not recorded")
    return Decimal(0), ""


def _steroid_doses(lines: Sequence[_Line], days: Sequence[date]
                   ) -> dict[date, tuple[Decimal | None, str]]:
    """The total prednisone-equivalent glucocorticoid dose on each of the consecutive `days`
    (None: not known, and why), converting each line to prednisone once."""
    groups = {drug: [line for line in lines if line.drug == drug]
              for drug in sorted({line.drug for line in lines})}
    converted: dict[int, tuple[Decimal | None, str]] = {}

    def convert(line: _Line) -> tuple[Decimal | None, str]:
        if id(line) not in converted:
            converted[id(line)] = _prednisone_mg(line)
        return converted[id(line)]

    # each drug's dose changes only on a line's first day (start or change), or the day after
    # its stop: between two such days it is the day before's (the criterion asks every day)
    changes = {day for line in lines for day in (line.start, line.changed)
               if day is not None}
    changes |= {line.stop + timedelta(days=1) for line in lines
                if line.stop is not None and line.stop < date.max}
    doses: dict[date, tuple[Decimal | None, str]] = {}
    last: tuple[Decimal | None, str] | None = None
    for day in days:
        if last is not None and day not in changes:
            doses[day] = last
            continue
        total: Decimal | None = Decimal(0)
        why = ""
        for group in groups.values():
            dose, why = _drug_dose_on(group, day, convert)
            if dose is None:
                total = None
                break
            assert total is not None
            total += dose
        doses[day] = last = (total, why if total is None else "")
    return doses


def _changing_on(lines: Sequence[_Line], day: date) -> list[Evidence]:
    """Evidence of the lines whose dose starts on `day` or whose last day is the day before."""
    evidence: list[Evidence] = []
    for line in lines:
        if line.begin == day or line.start == day:
            evidence += line.dose_evidence()
        if line.stop is not None and line.stop + timedelta(days=1) == day:
            evidence += [_ev(line.form, "drug"), _ev(line.form, "stop_date")]
    return evidence


def _shown(dose: Decimal | None) -> str:
    return "unknown" if dose is None else f"{_num(dose)} mg/day"


def _glucocorticoid_course(
    lines: Sequence[_Line], start: date, until: date, data: ScreeningData
) -> _SteroidCourse:
    """<= max mg/day from screening start to its end, unchanged for the stable days before it,
    and no change larger than the maximum during screening (prednisone equivalents)."""
    therapy = data.protocol.background_therapy
    if not lines:
        return _SteroidCourse(Decimal(0), (), ())
    first = start - timedelta(days=therapy.glucocorticoid_stable_days)
    days = [first + timedelta(days=n) for n in range((until - first).days + 1)]
    doses = _steroid_doses(lines, days)
    at_start, why = doses[start]
    findings: list[_Finding] = []
    for day in days[1:]:
        if day > start:
            break
        before, now = doses[day - timedelta(days=1)][0], doses[day][0]
        if before != now:
            findings.append(_Finding(
                "not_met",
                f"The glucocorticoid dose changed on {day.isoformat()} ({_shown(before)} to "
                f"{_shown(now)} prednisone equivalent), {_days_before(day, start)}; it must be "
                f"unchanged for at least {therapy.glucocorticoid_stable_days} days before "
                "screening.",
                tuple(_changing_on(lines, day)),
            ))
            break
    maximum = Decimal(repr(float(therapy.glucocorticoid_max_mg_per_day)))
    step = Decimal(repr(float(therapy.glucocorticoid_max_change_mg_per_day)))
    if at_start is None:
        findings.append(_Finding("pending", f"The glucocorticoid dose at screening start on "
                                            f"{start.isoformat()} is not known: {why}."))
    for day in days:
        dose = doses[day][0]
        if day >= start and dose is not None and dose > maximum:
            findings.append(_Finding(
                "not_met",
                f"The glucocorticoid dose of {_num(dose)} mg/day prednisone equivalent on "
                f"{day.isoformat()} is above the maximum of {_num(maximum)} mg/day during "
                f"screening ({STEROID_TABLE}).",
                tuple(ev for line in lines if line.taken_on(day) for ev in line.dose_evidence()),
            ))
            break
    for day in days:
        if day <= start:
            continue
        (before, _), (now, now_why) = doses[day - timedelta(days=1)], doses[day]
        if before is not None and now is not None and abs(now - before) > step:
            findings.append(_Finding(
                "not_met",
                f"The glucocorticoid dose changed by {_num(abs(now - before))} mg/day prednisone "
                f"equivalent on {day.isoformat()} during screening ({_num(before)} to "
                f"{_num(now)}), more than the {_num(step)} mg/day allowed.",
                tuple(_changing_on(lines, day)),
            ))
            break
        if (before is None) != (now is None):
            findings.append(_Finding(
                "pending",
                f"The size of the glucocorticoid dose change on {day.isoformat()} during "
                f"screening is not known: {now_why or doses[day - timedelta(days=1)][1]}.",
            ))
            break
    evidence: list[Evidence] = []
    for drug in sorted({line.drug for line in lines}):
        taken = [line for line in lines if line.drug == drug and line.taken_on(start)]
        if taken:
            used = max(taken, key=lambda item: (item.begin or start, item.form.position))
            evidence += used.dose_evidence()
    return _SteroidCourse(at_start, tuple(findings), tuple(evidence))


# Source: registry NCT06513429 inclusion 6 (SLEDAI-2K >= 10); Gladman et al., J Rheumatol 2002
# (weights); Touma et al., Lupus 2010 (30-day look-back, a protocol setting).
def criterion_sledai2k_screening(data: ScreeningData) -> CriterionResult:
    code = "sledai2k_screening"
    if data.consent is None:
        return _no_consent(code, "the screening SLEDAI-2K")
    form = _latest(item for item in data.of("disease_activity") if data.in_screening(item))
    if form is None:
        return _result(code, "pending",
                       f"No disease_activity form is recorded during {data.screening_text()}.")
    present = [descriptor for descriptor in SLEDAI2K_DESCRIPTORS if form.get(descriptor) is True]
    score = sledai2k_score(present).score
    minimum = data.protocol.sledai2k_min
    evidence = [_ev(form, descriptor) for descriptor in present] or [
        _ev(form, descriptor) for descriptor in SLEDAI2K_DESCRIPTORS
    ]
    text = (f"SLEDAI-2K {score} on {form_date(form).isoformat()} ({_at(form)}; descriptors of "
            f"the {data.protocol.sledai2k_lookback_days}-day look-back, {TOUMA_2010}; weights of "
            f"{GLADMAN_2002})")
    if score >= minimum:
        return _result(code, "met", f"{text} is at least {minimum}.", evidence)
    return _result(code, "not_met", f"{text} is below {minimum}.", evidence)


def _demographic(data: ScreeningData, field: str) -> tuple[RecordedForm | None, Any]:
    form = _latest_with(data.of("demographics"), field)
    return form, None if form is None else form.get(field)


def _contraception(data: ScreeningData) -> tuple[_Finding | None, Evidence | None]:
    form = _latest_with(data.of("contraception"), "agreed")
    if form is None:
        return _Finding("pending", "No contraception.agreed is recorded."), None
    agreed = _as_bool(form.get("agreed"))
    if agreed is None:
        return _Finding("pending", f"contraception.agreed ({_at(form)}) is not yes or no."), None
    if not agreed:
        return _Finding("not_met", f"Effective contraception was not agreed ({_at(form)}).",
                        (_ev(form, "agreed"),)), None
    return None, _ev(form, "agreed")


# Source: registry NCT06513429 inclusion 7 (women of childbearing potential: negative serum
# pregnancy test and effective contraception).
def criterion_pregnancy_contraception_female(data: ScreeningData) -> CriterionResult:
    code = "pregnancy_contraception_female"
    sex_form, sex = _demographic(data, "sex")
    if sex_form is None:
        return _result(code, "pending", "No demographics.sex is recorded.")
    if sex != "female":
        return _result(code, "not_applicable", f"Not applicable: the subject's sex is {sex}.",
                       (_ev(sex_form, "sex"),))
    cbp_form, potential = _demographic(data, "childbearing_potential")
    if cbp_form is None or not isinstance(potential, bool):
        return _result(code, "pending", "No demographics.childbearing_potential is recorded for "
                                        "a female subject.", (_ev(sex_form, "sex"),))
    cited = [_ev(sex_form, "sex"), _ev(cbp_form, "childbearing_potential")]
    if not potential:
        return _result(code, "not_applicable",
                       "Not applicable: the subject is female without childbearing potential.",
                       cited)
    if data.consent is None:
        return _no_consent(code, "a pregnancy test after consent")
    consented = data.consent.consent_date
    tests = [item for item in data.of("pregnancy_test")
             if item.get("specimen") == "serum" and form_date(item) >= consented]
    findings: list[_Finding] = []
    test = _latest_with(tests, "result")
    if test is None:
        findings.append(_Finding("pending", "No serum pregnancy_test dated on or after consent "
                                            f"on {consented.isoformat()} is recorded."))
    elif test.get("result") != "negative":
        findings.append(_Finding("not_met", f"The latest serum pregnancy test on "
                                            f"{form_date(test).isoformat()} ({_at(test)}) is "
                                            f"{test.get('result')}.",
                                 (_ev(test, "result"),)))
    else:
        cited += [_ev(test, "specimen"), _ev(test, "result")]
    agreement, agreed = _contraception(data)
    if agreement is not None:
        findings.append(agreement)
    if agreed is not None:
        cited.append(agreed)
    shown = "" if test is None else f" on {form_date(test).isoformat()}"
    return _combine(code, findings, f"Woman of childbearing potential with a negative serum "
                                    f"pregnancy test{shown} and agreement to effective "
                                    "contraception.", cited)


# Source: registry NCT06513429 inclusion 8 (men with a partner of childbearing potential:
# effective contraception).
def criterion_contraception_male(data: ScreeningData) -> CriterionResult:
    code = "contraception_male"
    sex_form, sex = _demographic(data, "sex")
    if sex_form is None:
        return _result(code, "pending", "No demographics.sex is recorded.")
    if sex != "male":
        return _result(code, "not_applicable", f"Not applicable: the subject's sex is {sex}.",
                       (_ev(sex_form, "sex"),))
    partner_form, partner = _demographic(data, "partner_childbearing_potential")
    if partner_form is None or not isinstance(partner, bool):
        return _result(code, "pending", "No demographics.partner_childbearing_potential is "
                                        "recorded for a male subject.", (_ev(sex_form, "sex"),))
    cited = [_ev(sex_form, "sex"), _ev(partner_form, "partner_childbearing_potential")]
    if not partner:
        return _result(code, "not_applicable", "Not applicable: the subject is male without a "
                                               "partner of childbearing potential.", cited)
    agreement, agreed = _contraception(data)
    if agreed is not None:
        cited.append(agreed)
    return _combine(code, [] if agreement is None else [agreement],
                    "Man with a partner of childbearing potential who agreed to effective "
                    "contraception.", cited)


# Source: registry NCT06513429 inclusion 9 (signed informed consent, date and form version).
def criterion_informed_consent(data: ScreeningData) -> CriterionResult:
    code = "informed_consent"
    consent = data.consent
    if consent is None:
        return _result(code, "pending", "No consent is recorded.")
    return _result(
        code, "met",
        f"Informed consent signed on {consent.consent_date.isoformat()} with consent form "
        f"version {consent.consent_form_version} (position {consent.position}).",
        (
            Evidence(consent.position, "consent_date", consent.consent_date.isoformat()),
            Evidence(consent.position, "consent_form_version", consent.consent_form_version),
        ),
    )


CRITERIA: Final[Mapping[str, Callable[[ScreeningData], CriterionResult]]] = {
    "eular_acr_2019": criterion_eular_acr_2019,
    "age": criterion_age,
    "weight": criterion_weight,
    "refractory": criterion_refractory,
    "stable_background_therapy": criterion_stable_background_therapy,
    "sledai2k_screening": criterion_sledai2k_screening,
    "pregnancy_contraception_female": criterion_pregnancy_contraception_female,
    "contraception_male": criterion_contraception_male,
    "informed_consent": criterion_informed_consent,
}
assert tuple(CRITERIA) == INCLUSION_CRITERIA, "CRITERIA must follow INCLUSION_CRITERIA"


# --- exclusions, overall, the guard's reason ----------------------------------------------


def exclusion_answers(
    data: ScreeningData,
) -> tuple[tuple[tuple[str, Answer | None], ...], int | None]:
    """Each protocol exclusion code with its answer on the latest exclusion_checklist form."""
    form = _latest(data.of("exclusion_checklist"))
    answers: list[tuple[str, Answer | None]] = []
    for code in data.protocol.exclusion_checklist:
        value = None if form is None else _as_bool(form.get(code))
        answers.append((code, None if value is None else "yes" if value else "no"))
    return tuple(answers), None if form is None else form.position


def _overall(
    criteria: Sequence[CriterionResult], exclusions: Sequence[tuple[str, Answer | None]]
) -> Overall:
    if any(result.status == "not_met" for result in criteria) or any(
        answer == "yes" for _, answer in exclusions
    ):
        return "ineligible"
    if all(result.status in PASSING for result in criteria) and all(
        answer == "no" for _, answer in exclusions
    ):
        return "eligible"
    return "pending"


def evaluate_eligibility(
    forms: Sequence[RecordedForm],
    consent: Consent | None,
    protocol: Protocol,
    *,
    today: date,
    confirmed_on: date | None = None,
    confirmed_at: int | None = None,
    confirmed_forms: Sequence[RecordedForm] | None = None,
) -> Eligibility:
    """Evaluate every inclusion criterion (in INCLUSION_CRITERIA order) and the exclusions.

    Eligible only when every criterion is met or not applicable and every exclusion of the
    protocol is answered no; ineligible when any criterion is not met or any exclusion is yes;
    pending otherwise. Judged on the forms dated on or before `today`; once eligibility is
    confirmed (`confirmed_on`), as of the confirmation date, the values dated after it that
    count against eligibility being listed as post-enrolment findings instead.
    """
    as_of = today if confirmed_on is None else min(today, confirmed_on)
    judged = forms if confirmed_forms is None else confirmed_forms
    data = ScreeningData(tuple(item for item in judged if form_date(item) <= as_of), consent,
                         protocol, as_of)
    criteria = tuple(CRITERIA[code](data) for code in INCLUSION_CRITERIA)
    exclusions, position = exclusion_answers(data)
    findings: tuple[PostEnrolmentFinding, ...] = ()
    if confirmed_on is not None:
        now = ScreeningData(tuple(item for item in forms if form_date(item) <= as_of), consent,
                            protocol, as_of)
        findings = post_enrolment_findings(forms, confirmed_on, data, confirmed_at)
        if now.forms != data.forms:  # the same data judges the same: nothing lost
            answered_now = dict(exclusion_answers(now)[0])
            unanswered = tuple(  # an exclusion answered at confirmation, no longer (voided)
                PostEnrolmentFinding("exclusion_checklist", 0, code, None, confirmed_on, code)
                for code, answer in exclusions if answer and not answered_now.get(code))
            findings += criteria_lost(criteria, now, forms, confirmed_on) + unanswered
    return Eligibility(
        overall=_overall(criteria, exclusions),
        criteria=criteria,
        exclusions=exclusions,
        screening_window_ends=data.screening_window_ends,
        evaluated_on=as_of,
        exclusion_checklist_position=position,
        confirmed_on=confirmed_on,
        post_enrolment_findings=findings,
    )


def criteria_lost(criteria: Sequence[CriterionResult], now: ScreeningData,
                  forms: Sequence[RecordedForm], confirmed_on: date
                  ) -> tuple[PostEnrolmentFinding, ...]:
    """Inclusion criteria met at the confirmation that the data as it stands now (forms
    entered, corrected or voided after it, dated on or before it) no longer meets: each
    value the criterion now reads, or, with none to point at, the criterion's sentence."""
    by_position = {item.position: item for item in forms}
    found: list[PostEnrolmentFinding] = []
    for then in criteria:
        if then.status not in PASSING:
            continue
        current = CRITERIA[then.code](now)
        if current.status in PASSING:
            continue
        pointed = [e for e in current.evidence if e.position in by_position]
        for item in pointed:
            form = by_position[item.position]
            found.append(PostEnrolmentFinding(form.form, item.position, item.field,
                                              item.value, form_date(form), then.code))
        if not pointed:
            found.append(PostEnrolmentFinding("", 0, "", current.reason, confirmed_on,
                                              then.code))
    return tuple(found)


# the only kinds the loop of `post_enrolment_findings` below turns into findings
_FINDING_FORMS: Final = frozenset({"exclusion_checklist", "pregnancy_test", "contraception"})


def post_enrolment_findings(forms: Iterable[RecordedForm], confirmed_on: date,
                            data: ScreeningData, confirmed_at: int | None = None
                            ) -> tuple[PostEnrolmentFinding, ...]:
    """The values that would count against eligibility and came after the confirmation
    (dated after `confirmed_on`, or entered or corrected after its log position
    `confirmed_at`), by date then log position: each exclusion of the protocol answered yes,
    a positive pregnancy test (any specimen) and contraception not agreed (the criterion of
    the subject's sex as judged at screening)."""
    def late(item: RecordedForm) -> bool:
        return form_date(item) > confirmed_on or (confirmed_at is not None and (
            item.position > confirmed_at or any(c > confirmed_at for c in item.corrected_by)))

    _, sex = _demographic(data, "sex")
    contraception = "contraception_male" if sex == "male" else "pregnancy_contraception_female"
    found: list[PostEnrolmentFinding] = []
    for item in sorted((item for item in forms if item.form in _FINDING_FORMS and late(item)),
                       key=lambda item: (form_date(item), item.position)):
        def note(field: str, criterion: str, form: RecordedForm = item) -> None:
            found.append(PostEnrolmentFinding(form.form, form.position, field,
                                              _json(form.get(field)), form_date(form),
                                              criterion))
        if item.form == "exclusion_checklist":
            for code in data.protocol.exclusion_checklist:
                if item.get(code) is True:
                    note(code, code)
        elif item.form == "pregnancy_test" and item.get("result") == "positive":
            note("result", "pregnancy_contraception_female")
        elif item.form == "contraception" and item.get("agreed") is False:
            note("agreed", contraception)
    return tuple(found)


def blocking_reason(e: Eligibility) -> tuple[str, str] | None:
    """Why eligibility cannot be confirmed: (criterion or exclusion code, one sentence).

    None exactly when `e.overall` is eligible. The decisive reasons come first: a criterion
    not met, then an exclusion answered yes, then a pending criterion, then an unanswered
    exclusion. The screening window (rule screening_window_expired) is checked apart from
    this, with `e.days_left(today)`.
    """
    at = e.exclusion_checklist_position
    where = "" if at is None else f" (exclusion_checklist, position {at})"
    for result in e.criteria:
        if result.status == "not_met":
            return result.code, f"Inclusion criterion {result.code} is not met: {result.reason}"
    for code, answer in e.exclusions:
        if answer == "yes":
            return code, f"Exclusion criterion {code} is answered yes{where}, which excludes."
    for result in e.criteria:
        if result.status not in PASSING:
            return result.code, f"Inclusion criterion {result.code} is pending: {result.reason}"
    for code, answer in e.exclusions:
        if answer != "no":
            if at is None:
                return code, (f"Exclusion criterion {code} is not answered: no "
                              "exclusion_checklist form is recorded.")
            return code, f"Exclusion criterion {code} is not answered{where}."
    return None


# --- a subject judged on a day (the read model, the worklist, an amendment preview) ---------


def eligibility_day(study: Study, state: SubjectState, today: date) -> date:
    """Eligibility depends on today only while the screening window is open; once confirmed
    it is judged as of the confirmation date."""
    if state.consent is None:
        return today
    if state.eligibility_confirmed_on is not None:
        return min(today, state.eligibility_confirmed_on)
    ends = state.consent.consent_date + timedelta(days=study.protocol.screening_window_days)
    return min(today, ends)


def evaluate_eligibility_on(study: Study, state: SubjectState, day: date) -> Eligibility:
    """The guard's own evaluation (`confirm-eligibility` uses the protocol in force), on the
    forms dated on or before `day`; for a confirmed subject as of its confirmation, with the
    later values against eligibility as post-enrolment findings."""
    judged = state.forms_at_confirmation
    return evaluate_eligibility(list(state.forms.values()), state.consent, study.protocol,
                                today=day, confirmed_on=state.eligibility_confirmed_on,
                                confirmed_at=state.confirmation_position,
                                confirmed_forms=None if judged is None else list(judged.values()))
