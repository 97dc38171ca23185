"""Efficacy endpoints of one subject: SLEDAI-2K, LLDAS, renal response and CAR-T persistence.

Pure functions, no I/O and no clock. `subject_endpoints(s, protocol)` returns the JSON-ready
`endpoints SUBJECT` document of docs/design.md; a null value always has its reason in `missing`
(key path -> one sentence), the log positions of the forms used are in `evidence` (key path ->
positions), and `notes` (key path -> sentence) says how a value was computed. Every threshold
comes from the `Protocol`, every score from `workflow.instruments`.

Conventions chosen here (where docs/clinical-rules.md and the brief are silent):
- A form is dated by `eligibility.form_date` (its own date field such as
  `cart_persistence.sample_date`, else the day it was recorded for). "Latest" is the latest
  date, ties broken by the later log position. Values are the current ones (corrections
  applied by the fold).
- Baseline (SLEDAI-2K, UPCR, eGFR): the latest form dated on or after consent and on or before
  the baseline cut-off: the first lymphodepletion dose when one is recorded (docs/clinical-rules.md:
  "the last assessment before the first lymphodepletion dose", cyclophosphamide being itself a
  lupus treatment; an assessment on that day counts, being the pre-dose assessment), else the
  infusion day D0, else (neither recorded yet) no upper bound: the latest since consent.
- Visit values: a form counts for a visit when its date lies inside the visit window (D0 +
  target day ± window days, bounds included). The date decides: the form's `visit` tag is
  neither needed nor enough (a form tagged D180 but dated outside the window is not used).
  Windows of a protocol never overlap, so a form belongs to at most one visit.
- Before infusion every visit value and the persistence summary are null ("not infused yet");
  the baseline is still given.
- LLDAS uses the window's latest disease_activity form only (the five conditions describe one
  assessment); `pga`, `new_activity`, `maintenance_tolerated`, `hemolytic_anemia` and
  `gi_activity` must all be recorded on it (a yes/no left out is unknown, not no).
- Glucocorticoid dose on a day (the same reading of medication lines as eligibility.py):
  `start_date` is the first day taken, `stop_date` the last, `dose_changed_on` the first day
  of the recorded dose; lines of different drugs add up; when several lines of one drug cover
  the day the one with the latest start of its dose (then the later position) supersedes the
  others. A line whose start is not recorded, or whose dose before a later change is not
  known, makes the dose unknown (LLDAS null). No line taken that day: 0 mg/day, said in notes.
- Renal response: each of UPCR and eGFR is the latest value of its own field (baseline and
  window). Rescue therapy: `medication.rescue_therapy` is a recorded field (forms.py); it is
  true when a line flagged with it is taken at some time from D0 to the later of the two visit
  labs' dates (dated by `start_date`, else by the day the line was recorded for).
- Persistence: a sample is a cart_persistence form with `copies_per_ug`; two samples on one
  study day: the later log position is kept (the other is named in notes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any, Final

from workflow.eligibility import form_date
from workflow.errors import InvalidInput
from workflow.instruments.codes import SLEDAI2K_DESCRIPTORS
from workflow.instruments.lldas import assess_lldas
from workflow.instruments.persistence import CHECKPOINT_VISITS, persistence_summary
from workflow.instruments.renal import assess_renal_response
from workflow.instruments.sledai2k import sledai2k_improvement, sledai2k_score
from workflow.instruments.steroids import prednisone_equivalent
from workflow.instruments.study_days import date_of_day, study_day
from workflow.protocol import Protocol
from workflow.records import RecordedForm, as_date, as_number
from workflow.subject import SubjectState

JsonScalar = str | int | float | bool | None

# The visits docs/design.md names for each endpoint; a protocol's own endpoint visits are added.
SLEDAI2K_KEY_VISITS: Final[tuple[str, ...]] = ("D90", "D180", "D360")
LLDAS_KEY_VISITS: Final[tuple[str, ...]] = ("D180", "D360")
RENAL_KEY_VISITS: Final[tuple[str, ...]] = ("D180", "D360")
LLDAS_INPUTS: Final[tuple[str, ...]] = (
    "pga", "new_activity", "maintenance_tolerated", "hemolytic_anemia", "gi_activity",
)
SUMMARY_KEYS: Final[tuple[str, ...]] = (
    "peak_copies_per_ug", "peak_day", "last_detectable_day",
)
_UNMATCHABLE_WINDOW: Final = (-1, 0)  # the instrument only reads samples from D0 on


# --- values with their evidence -----------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One endpoint value, the positions of the forms it used, and why it is null."""

    value: JsonScalar
    evidence: tuple[int, ...] = ()
    reason: str | None = None  # why `value` is None; required then
    note: str | None = None  # how the value was computed

    def __post_init__(self) -> None:
        if self.value is None and not self.reason:
            raise ValueError("a null endpoint needs its reason")


def _missing(reason: str, evidence: Iterable[int] = ()) -> Endpoint:
    return Endpoint(None, tuple(dict.fromkeys(evidence)), reason)


def _known(value: JsonScalar, evidence: Iterable[int], note: str | None = None) -> Endpoint:
    return Endpoint(value, tuple(dict.fromkeys(evidence)), None, note)


Section = dict[str, Endpoint]


# --- the document -------------------------------------------------------------------------


def subject_endpoints(s: SubjectState, protocol: Protocol) -> dict[str, Any]:
    """The `endpoints SUBJECT` document (docs/design.md), JSON-ready."""
    sections: dict[str, Section] = {
        "sledai2k": sledai2k_endpoints(s, protocol),
        "lldas": lldas_endpoints(s, protocol),
        "renal_response": renal_endpoints(s, protocol),
        "persistence": persistence_endpoints(s, protocol),
    }
    document: dict[str, Any] = {
        "subject": s.subject,
        "protocol_version": protocol.version,
        "infused_on": None if s.infused_on is None else s.infused_on.isoformat(),
    }
    missing: dict[str, str] = {}
    evidence: dict[str, list[int]] = {}
    notes: dict[str, str] = {}
    for name, section in sections.items():
        document[name] = {key: item.value for key, item in section.items()}
        for key, item in section.items():
            path = f"{name}.{key}"
            if item.value is None and item.reason is not None:
                missing[path] = item.reason
            if item.evidence:
                evidence[path] = list(item.evidence)
            if item.note:
                notes[path] = item.note
    document.update(missing=missing, evidence=evidence, notes=notes)
    return document


# --- dates, windows, baseline -------------------------------------------------------------


@dataclass(frozen=True)
class VisitDates:
    """A visit window as calendar dates (bounds included)."""

    code: str
    start: date
    end: date

    def contains(self, on: date) -> bool:
        return self.start <= on <= self.end

    @property
    def text(self) -> str:
        return f"the {self.code} window ({self.start.isoformat()} to {self.end.isoformat()})"


# Source: IM19-SLE protocol visit schedule (docs/clinical-rules.md): D0 + target day ± window days.
def visit_dates(protocol: Protocol, infused_on: date, code: str) -> VisitDates | None:
    """The window of visit `code` around D0, None when the protocol has no such visit."""
    visit = next((item for item in protocol.visits if item.code == code), None)
    if visit is None:
        return None
    return VisitDates(code, date_of_day(infused_on, visit.earliest_day),
                      date_of_day(infused_on, visit.latest_day))


# Source: docs/clinical-rules.md, SLEDAI-2K: baseline = last assessment before the first LD dose.
def baseline_cutoff(s: SubjectState) -> tuple[date | None, str]:
    """The last day a baseline form may be dated (None: no bound yet) and how to say it."""
    if s.lymphodepletion_days:
        first = min(s.lymphodepletion_days)
        return first, f"the first lymphodepletion dose on {first.isoformat()}"
    if s.infused_on is not None:
        return s.infused_on, f"the infusion (D0) on {s.infused_on.isoformat()}"
    return None, "now (no lymphodepletion dose or infusion is recorded yet)"


def baseline_forms(s: SubjectState, form: str) -> list[RecordedForm]:
    """Forms `form` dated from consent to the baseline cut-off (none without consent)."""
    if s.consent is None:
        return []
    cutoff, _ = baseline_cutoff(s)
    start = s.consent.consent_date
    return [item for item in _forms(s, form)
            if start <= form_date(item) and (cutoff is None or form_date(item) <= cutoff)]


def _baseline_span(s: SubjectState) -> str:
    if s.consent is None:
        return "no consent is recorded, so no baseline can be chosen"
    _, cutoff_text = baseline_cutoff(s)
    return f"from consent on {s.consent.consent_date.isoformat()} to {cutoff_text}"


def _forms(s: SubjectState, form: str) -> list[RecordedForm]:
    return sorted(s.forms_of(form), key=lambda item: item.position)


def _in_window(s: SubjectState, form: str, window: VisitDates) -> list[RecordedForm]:
    return [item for item in _forms(s, form) if window.contains(form_date(item))]


def _latest(forms: Iterable[RecordedForm], field: str | None = None) -> RecordedForm | None:
    """The latest form (by date, then position), only among those with `field` when given."""
    eligible = (item for item in forms if field is None or item.get(field) is not None)
    return max(eligible, key=lambda item: (form_date(item), item.position), default=None)


def _at(form: RecordedForm) -> str:
    return f"{form.form} at position {form.position} ({form_date(form).isoformat()})"


def _visits(design: Sequence[str], listed: Sequence[str]) -> list[str]:
    """The visits docs/design.md names and those the protocol lists, by study day."""
    return sorted(set(design) | set(listed), key=lambda code: int(code[1:]))


def _visit_gate(
    s: SubjectState, protocol: Protocol, code: str, listed: Sequence[str], what: str
) -> VisitDates | Endpoint:
    """The visit's window, or the missing value saying why the visit is not assessed."""
    if code not in listed:
        return _missing(f"{code} is not a {what} visit of protocol version {protocol.version}.")
    if s.infused_on is None:
        return _missing(f"Not infused yet: no infusion (D0) is recorded, so there is no {code} "
                        "window.")
    window = visit_dates(protocol, s.infused_on, code)
    if window is None:
        return _missing(f"{code} is not in the visit schedule of protocol version "
                        f"{protocol.version}.")
    return window


# --- SLEDAI-2K ----------------------------------------------------------------------------


def _descriptors(form: RecordedForm) -> list[str]:
    """The SLEDAI-2K descriptors flagged present (a flag left out means no, forms.py)."""
    values = form.values
    return [code for code in SLEDAI2K_DESCRIPTORS if values.get(code) is True]


# Source: Gladman et al., J Rheumatol 2002 (SLEDAI-2K weights), via instruments.sledai2k.
def _score(form: RecordedForm) -> Endpoint:
    result = sledai2k_score(_descriptors(form))
    return _known(result.score, (form.position,), f"{_at(form)}: {result.explanation}")


# Source: docs/clinical-rules.md, SLEDAI-2K: baseline = last assessment before the first LD dose.
def sledai2k_baseline(s: SubjectState) -> Endpoint:
    """The SLEDAI-2K of the latest disease_activity form from consent to the cut-off."""
    form = _latest(baseline_forms(s, "disease_activity"))
    if form is None:
        return _missing(f"No disease_activity form is dated {_baseline_span(s)}.")
    return _score(form)


def sledai2k_at(s: SubjectState, protocol: Protocol, code: str) -> Endpoint:
    """The SLEDAI-2K of the latest disease_activity form dated inside the visit window."""
    gate = _visit_gate(s, protocol, code, protocol.sledai2k_visits, "SLEDAI-2K")
    if isinstance(gate, Endpoint):
        return gate
    form = _latest(_in_window(s, "disease_activity", gate))
    if form is None:
        return _missing(f"No disease_activity form is dated inside {gate.text}.")
    return _score(form)


# Source: Gladman et al., J Rheumatol 2000 (clinically meaningful reduction, protocol points).
def _change(
    baseline: Endpoint, visit: Endpoint, code: str, protocol: Protocol
) -> tuple[Endpoint, Endpoint]:
    """change = visit - baseline; improved = reduction >= the protocol's points."""
    evidence = (*baseline.evidence, *visit.evidence)
    if not isinstance(baseline.value, int):
        reason = f"The baseline SLEDAI-2K is missing. {baseline.reason}"
        return _missing(reason, evidence), _missing(reason, evidence)
    if not isinstance(visit.value, int):
        reason = f"The {code} SLEDAI-2K is missing. {visit.reason}"
        return _missing(reason, evidence), _missing(reason, evidence)
    result = sledai2k_improvement(baseline.value, visit.value,
                                  min_reduction=protocol.sledai2k_improvement_points)
    return (_known(visit.value - baseline.value, evidence),
            _known(result.improved, evidence, result.explanation))


def sledai2k_endpoints(s: SubjectState, protocol: Protocol) -> Section:
    """Baseline, each visit's score, its change from baseline and whether it improved."""
    baseline = sledai2k_baseline(s)
    visits = _visits(SLEDAI2K_KEY_VISITS, protocol.sledai2k_visits)
    scores = {code: sledai2k_at(s, protocol, code) for code in visits}
    section: Section = {"baseline": baseline, **scores}
    changes = {code: _change(baseline, scores[code], code, protocol) for code in visits}
    section.update({f"change_{code}": changes[code][0] for code in visits})
    section.update({f"improved_{code}": changes[code][1] for code in visits})
    return section


# --- glucocorticoid dose ------------------------------------------------------------------


@dataclass(frozen=True)
class SteroidDose:
    """The prednisone-equivalent glucocorticoid dose on a day; None when it is not known."""

    mg_per_day: float | None
    positions: tuple[int, ...]
    text: str  # how it was obtained, or why it is not known


@dataclass(frozen=True)
class _Line:
    form: RecordedForm
    drug: str
    start: date | None
    stop: date | None
    changed: date | None

    @classmethod
    def of(cls, form: RecordedForm) -> _Line:
        drug = form.get("drug")
        return cls(form, drug.strip().lower() if isinstance(drug, str) else "unnamed drug",
                   as_date(form.get("start_date")), as_date(form.get("stop_date")),
                   as_date(form.get("dose_changed_on")))

    @property
    def begin(self) -> date | None:
        """The first day of the recorded dose."""
        return self.changed if self.changed is not None else self.start

    @property
    def label(self) -> str:
        return f"{self.drug} (medication at position {self.form.position})"

    def taken_on(self, day: date) -> bool:
        return self.begin is not None and self.begin <= day and (
            self.stop is None or day <= self.stop
        )


def _line_on(lines: Sequence[_Line], day: date) -> tuple[_Line | None, str | None]:
    """One drug's line taken on `day` (None: none), or a line and why its dose is not known."""
    taken = [line for line in lines if line.taken_on(day)]
    if taken:
        return max(taken, key=lambda line: (line.begin or day, line.form.position)), None
    for line in lines:
        if line.stop is not None and day > line.stop:
            continue
        if line.begin is None:
            return line, (f"no medication.start_date is recorded for {line.label}, so whether "
                          f"it was taken on {day.isoformat()} is not known")
        if line.changed is not None and day < line.changed and (
            line.start is None or line.start <= day
        ):
            return line, (f"the dose of {line.label} before its change on "
                          f"{line.changed.isoformat()} is not recorded")
    return None, None


# Source: prednisolone label equivalence table (docs/clinical-rules.md), via instruments.steroids.
def _prednisone_mg(line: _Line) -> tuple[Decimal | None, str]:
    dose = as_number(line.form.get("dose_mg_per_day"))
    if dose is None:
        return None, f"no medication.dose_mg_per_day is recorded for {line.label}"
    try:
        result = prednisone_equivalent(line.drug, dose)
    except InvalidInput as error:
        return None, f"{line.label} has no prednisone equivalent ({error.message})"
    return Decimal(repr(result.prednisone_mg)), result.explanation


def _glucocorticoid_lines(forms: Iterable[RecordedForm]) -> dict[str, list[_Line]]:
    """Glucocorticoid medication lines by drug, in log order."""
    by_drug: dict[str, list[_Line]] = {}
    for form in sorted(forms, key=lambda item: item.position):
        if form.form == "medication" and form.get("drug_class") == "glucocorticoid":
            line = _Line.of(form)
            by_drug.setdefault(line.drug, []).append(line)
    return dict(sorted(by_drug.items()))


def glucocorticoid_dose_on(forms: Iterable[RecordedForm], day: date) -> SteroidDose:
    """Sum over drugs of the prednisone equivalent of the glucocorticoid line taken on `day`."""
    return _dose_on(_glucocorticoid_lines(forms), day)


def _dose_on(by_drug: dict[str, list[_Line]], day: date) -> SteroidDose:
    on = day.isoformat()
    total, used, parts = Decimal(0), list[int](), list[str]()
    for lines in by_drug.values():
        line, why = _line_on(lines, day)
        if line is None:
            continue
        mg, text = (None, why) if why is not None else _prednisone_mg(line)
        if mg is None:
            return SteroidDose(None, (line.form.position,),
                               f"The glucocorticoid dose on {on} is not known: {text}.")
        total += mg
        used.append(line.form.position)
        parts.append(f"position {line.form.position}: {text}")
    if not parts:
        return SteroidDose(0.0, (), f"No glucocorticoid medication line is taken on {on}: "
                                    "0 mg/day prednisone equivalent.")
    return SteroidDose(float(total), tuple(sorted(used)),
                       f"Glucocorticoids taken on {on}: {' '.join(parts)} Total "
                       f"{float(total):g} mg/day prednisone equivalent.")


# --- LLDAS --------------------------------------------------------------------------------


# Source: Franklyn et al., Ann Rheum Dis 2016 (LLDAS, five conditions), via instruments.lldas.
def lldas_at(s: SubjectState, protocol: Protocol, code: str,
             lines: dict[str, list[_Line]] | None = None) -> Endpoint:
    """LLDAS from the window's latest disease_activity form and that day's steroid dose
    (`lines`: the subject's glucocorticoid lines, when already gathered)."""
    gate = _visit_gate(s, protocol, code, protocol.lldas_visits, "LLDAS")
    if isinstance(gate, Endpoint):
        return gate
    form = _latest(_in_window(s, "disease_activity", gate))
    if form is None:
        return _missing(f"No disease_activity form is dated inside {gate.text}.")
    absent = [field for field in LLDAS_INPUTS if form.get(field) is None]
    if absent:
        return _missing(f"The latest disease_activity form inside {gate.text}, {_at(form)}, "
                        f"has no {', '.join(absent)} recorded.", (form.position,))
    day = form_date(form)
    dose = _dose_on(_glucocorticoid_lines(s.forms.values()) if lines is None else lines, day)
    evidence = (form.position, *dose.positions)
    if dose.mg_per_day is None:
        return _missing(dose.text, evidence)
    try:
        result = assess_lldas(
            _descriptors(form), pga=form.get("pga"), prednisone_mg_per_day=dose.mg_per_day,
            new_activity=form.get("new_activity"),
            maintenance_tolerated=form.get("maintenance_tolerated"),
            hemolytic_anemia=form.get("hemolytic_anemia"), gi_activity=form.get("gi_activity"),
        )
    except InvalidInput as error:
        return _missing(f"LLDAS cannot be assessed from {_at(form)}: {error.message}", evidence)
    return _known(result.met, evidence, f"{_at(form)}. {dose.text} {result.explanation}")


def lldas_endpoints(s: SubjectState, protocol: Protocol) -> Section:
    lines = _glucocorticoid_lines(s.forms.values())  # the same for every visit
    return {code: lldas_at(s, protocol, code, lines)
            for code in _visits(LLDAS_KEY_VISITS, protocol.lldas_visits)}


# --- renal response -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Lab:
    """One lab value with its form (`form` None: no such value)."""

    field: str
    form: RecordedForm | None

    @property
    def value(self) -> float | None:
        return None if self.form is None else as_number(self.form.get(self.field))


def _lab(forms: Iterable[RecordedForm], field: str) -> _Lab:
    return _Lab(field, _latest((item for item in forms if as_number(item.get(field)) is not None),
                               field))


def _rescue_lines(s: SubjectState, start: date, until: date) -> list[RecordedForm]:
    """Medication lines flagged rescue_therapy taken at some time from `start` to `until`."""
    found = []
    for form in _forms(s, "medication"):
        began = as_date(form.get("start_date")) or form.recorded_on
        stopped = as_date(form.get("stop_date"))
        if form.get("rescue_therapy") is True and began <= until and (
            stopped is None or stopped >= start
        ):
            found.append(form)
    return found


def _renal_missing(labs: Sequence[_Lab], where: str) -> str | None:
    absent = [lab.field for lab in labs if lab.value is None]
    if not absent:
        return None
    return f"No labs form with {' or '.join(absent)} is dated {where}."


def _renal_thresholds(protocol: Protocol) -> dict[str, float]:
    renal = protocol.renal
    return {
        "involvement_upcr": renal.involvement_upcr_min_g_per_g,
        "complete_upcr_below": renal.complete_upcr_below_g_per_g,
        "partial_reduction": renal.partial_reduction_min_pct / 100,
        "partial_upcr_below": renal.partial_upcr_below_g_per_g,
        "egfr_fraction": renal.egfr_min_pct_of_baseline / 100,
    }


# Source: KDIGO 2024 lupus nephritis guideline (renal response, involvement), instruments.renal.
def renal_at(s: SubjectState, protocol: Protocol, code: str,
             base: tuple[_Lab, _Lab] | None = None) -> Endpoint:
    """complete / partial / none / not_applicable with the window's latest UPCR and eGFR
    (`base`: the baseline labs, when already chosen)."""
    gate = _visit_gate(s, protocol, code, protocol.renal.visits, "renal response")
    if isinstance(gate, Endpoint):
        return gate
    if base is None:
        base = _renal_baseline(s)
    base_upcr = base[0].value
    threshold = protocol.renal.involvement_upcr_min_g_per_g
    if base_upcr is not None and base[0].form is not None and (
        base_upcr < threshold or base_upcr == 0
    ):
        return _known("not_applicable", (base[0].form.position,),
                      f"Baseline UPCR {base_upcr:g} g/g ({_at(base[0].form)}) is below "
                      f"{threshold:g} g/g: no renal involvement at baseline.")
    window_forms = _in_window(s, "labs", gate)
    now = (_lab(window_forms, "upcr_g_per_g"), _lab(window_forms, "egfr_ml_min"))
    return _renal_response(s, protocol, gate, base, now)


def _renal_response(
    s: SubjectState, protocol: Protocol, gate: VisitDates,
    base: tuple[_Lab, _Lab], now: tuple[_Lab, _Lab],
) -> Endpoint:
    used = [lab.form for lab in (*base, *now) if lab.form is not None]
    evidence = [form.position for form in used]
    reason = _renal_missing(base, f"at baseline, {_baseline_span(s)}") or _renal_missing(
        now, f"inside {gate.text}")
    values = [lab.value for lab in (*base, *now)]
    if reason is not None or s.infused_on is None:
        return _missing(reason or "Not infused yet.", evidence)
    base_upcr, base_egfr, upcr, egfr = (value or 0.0 for value in values)  # none is None here
    until = max(form_date(lab.form) for lab in now if lab.form is not None)
    rescue = _rescue_lines(s, s.infused_on, until)
    try:
        result = assess_renal_response(
            baseline_upcr=base_upcr, upcr=upcr, baseline_egfr=base_egfr, egfr=egfr,
            rescue_therapy=bool(rescue), **_renal_thresholds(protocol),
        )
    except InvalidInput as error:
        return _missing(f"The renal response cannot be assessed: {error.message}", evidence)
    evidence += [form.position for form in rescue]
    return _known(result.response, evidence,
                  f"{_rescue_text(rescue, until)} {result.explanation}")


def _rescue_text(rescue: Sequence[RecordedForm], until: date) -> str:
    if not rescue:
        return (f"No medication line flagged rescue_therapy is taken from D0 to "
                f"{until.isoformat()}, so rescue_therapy is false.")
    positions = ", ".join(str(form.position) for form in rescue)
    return (f"Rescue therapy (medication.rescue_therapy) is taken from D0 to "
            f"{until.isoformat()}: positions {positions}.")


def _renal_baseline(s: SubjectState) -> tuple[_Lab, _Lab]:
    forms = baseline_forms(s, "labs")
    return _lab(forms, "upcr_g_per_g"), _lab(forms, "egfr_ml_min")


def renal_endpoints(s: SubjectState, protocol: Protocol) -> Section:
    base = _renal_baseline(s)  # the same for every visit
    return {code: renal_at(s, protocol, code, base)
            for code in _visits(RENAL_KEY_VISITS, protocol.renal.visits)}


# --- CAR-T persistence --------------------------------------------------------------------


def persistence_samples(s: SubjectState, infused_on: date) -> tuple[dict[int, RecordedForm],
                                                                     list[str]]:
    """Samples by study day (the later position kept on a shared day) and what was dropped."""
    by_day: dict[int, RecordedForm] = {}
    dropped: list[str] = []
    for form in _forms(s, "cart_persistence"):
        if as_number(form.get("copies_per_ug")) is None:
            continue
        day = study_day(infused_on, form_date(form))
        if day in by_day:
            dropped.append(f"positions {by_day[day].position} and {form.position} share study "
                           f"day {day}; the later position {form.position} is kept")
        by_day[day] = form
    return by_day, dropped


def _schedule(protocol: Protocol) -> dict[str, tuple[int, int]]:
    schedule = {visit.code: (visit.target_day, visit.window_days) for visit in protocol.visits}
    for code in CHECKPOINT_VISITS:  # a checkpoint the protocol lacks matches no sample
        schedule.setdefault(code, _UNMATCHABLE_WINDOW)
    return schedule


# Source: IM19-SLE protocol, CAR-T persistence by qPCR (docs/clinical-rules.md); protocol LLOQ.
def persistence_endpoints(s: SubjectState, protocol: Protocol) -> Section:
    """Peak copies/ug, its day, the last detectable day and detectability at the checkpoints."""
    keys = (*SUMMARY_KEYS, *(f"detectable_{code}" for code in CHECKPOINT_VISITS))
    if s.infused_on is None:
        reason = "Not infused yet: no infusion (D0) is recorded, so there is no study day."
        return {key: _missing(reason) for key in keys}
    by_day, dropped = persistence_samples(s, s.infused_on)
    try:
        summary = persistence_summary(
            [(day, float(form.get("copies_per_ug"))) for day, form in sorted(by_day.items())],
            lloq_copies_per_ug=protocol.lloq_copies_per_ug, schedule=_schedule(protocol),
        )
    except InvalidInput as error:
        return {key: _missing(f"Persistence cannot be summarised: {error.message}")
                for key in keys}
    note = summary.explanation + "".join(f" Samples at {text}." for text in dropped)
    section = _persistence_summary_values(s, protocol, by_day, summary.peak_copies_per_ug,
                                          summary.peak_day, summary.last_detectable_day, note)
    for point in summary.checkpoints:
        section[f"detectable_{point.visit}"] = _checkpoint(
            s, protocol, point.visit, point.detectable, point.sample_day, by_day)
    return section


def _persistence_summary_values(
    s: SubjectState, protocol: Protocol, by_day: dict[int, RecordedForm], peak: float | None,
    peak_day: int | None, last_day: int | None, note: str,
) -> Section:
    if peak is None or peak_day is None or last_day is None:
        from_d0 = [form.position for day, form in sorted(by_day.items()) if day >= 0]
        reason = (
            f"None of the {len(from_d0)} cart_persistence samples from D0 on reaches the LLOQ of "
            f"{protocol.lloq_copies_per_ug:g} copies/ug (below it a value is not detected)."
            if from_d0 else
            "No cart_persistence form with copies_per_ug is dated from D0 "
            f"({_d0(s)}) on."
        )
        section = {key: _missing(reason, from_d0) for key in SUMMARY_KEYS}
        section["peak_copies_per_ug"] = replace(section["peak_copies_per_ug"], note=note)
        return section
    peak_at, last_at = by_day[peak_day].position, by_day[last_day].position
    return {
        "peak_copies_per_ug": _known(peak, (peak_at,), note),
        "peak_day": _known(peak_day, (peak_at,)),
        "last_detectable_day": _known(last_day, (last_at,)),
    }


def _checkpoint(
    s: SubjectState, protocol: Protocol, code: str, detectable: bool | None,
    sample_day: int | None, by_day: dict[int, RecordedForm],
) -> Endpoint:
    gate = _visit_gate(s, protocol, code, protocol.persistence_visits, "persistence")
    if isinstance(gate, Endpoint):
        return gate
    if detectable is None or sample_day is None:
        return _missing(f"No cart_persistence form with copies_per_ug is dated inside "
                        f"{gate.text}.")
    form = by_day[sample_day]
    return _known(detectable, (form.position,),
                  f"D{sample_day} sample ({_at(form)}), the one closest to the target day: "
                  f"{float(form.get('copies_per_ug')):g} copies/ug, "
                  + ("at or above" if detectable else "below")
                  + f" the LLOQ of {protocol.lloq_copies_per_ug:g} copies/ug.")


def _d0(s: SubjectState) -> str:
    return "not recorded" if s.infused_on is None else s.infused_on.isoformat()
