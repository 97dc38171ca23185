"""A subject's stream folded into its current state (replay never re-runs a guard)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any, Final

from events.envelope import RecordedEvent
from events.errors import IntegrityFailure
from events.store import EventStore
from events.streams import check_subject_id, is_subject_id
from workflow import event_types as T
from workflow.records import Consent, RecordedForm


def to_date(value: str) -> date:
    """A clinical date from an ISO date or date-time (the site's calendar date)."""
    return datetime.fromisoformat(value).date() if "T" in value else date.fromisoformat(value)


@dataclass(frozen=True)
class PhaseRecord:
    """A procedure's record as it stands now: the position of its original event, its clinical
    date and payload with every correction applied (`corrected_by`: their positions)."""

    position: int
    on: date
    payload: Mapping[str, Any]
    reason: str | None = None
    form: str = ""  # the record's form (workflow/forms.py): leukapheresis, visit, ...
    corrected_by: tuple[int, ...] = ()


@dataclass(frozen=True)
class VoidedRecord:
    """A record marked entered in error: what it was, and the void that marked it."""

    position: int
    form: str
    void_position: int
    reason: str | None


# A procedure's event -> its record's form; the payload field holding its clinical date.
PROCEDURES: Final[dict[str, str]] = {
    T.LEUKAPHERESIS_RECORDED: "leukapheresis",
    T.PRODUCT_RELEASED: "product_release",
    T.PRODUCT_RELEASE_FAILED: "product_release",
    T.LYMPHODEPLETION_GIVEN: "lymphodepletion",
    T.INFUSION_GIVEN: "infusion",
    T.VISIT_RECORDED: "visit",
}
DATE_FIELDS: Final[dict[str, str]] = {
    "consent": "consent_date", "leukapheresis": "collected_on", "product_release": "released_on",
    "lymphodepletion": "given_on", "infusion": "infused_at", "visit": "visit_date",
}


# Acts recorded by their date alone -> the field a correction of that date names.
DATED_ACTS: Final[dict[str, str]] = {
    "eligibility_confirmation": "confirmed_on", "completion": "completed_on",
    "exit": "left_on", "reconsent": "consent_date",
}


def corrected_payload(form: str, payload: Mapping[str, Any], changes: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """A procedure's payload with a correction's changes (form fields) applied. A
    lymphodepletion day keeps its doses per drug (schema version 2): `<drug>_mg` sets the
    amount given of that drug."""
    merged = dict(payload)
    if form != "lymphodepletion":
        merged.update(changes)
        return merged
    doses = {drug: dict(dose) for drug, dose in payload["doses"].items()}
    for key, value in changes.items():
        if key.endswith("_mg"):
            dose = doses.setdefault(key[:-3], {"expected": None})
            dose["given"] = {"value": value, "unit": "mg"}
        else:
            merged[key] = value
    merged["doses"] = doses
    return merged


def record_date(form: str, payload: Mapping[str, Any], fallback: date) -> date:
    """A record's clinical date: its date field when the payload holds it, else `fallback`
    (a product release is dated by its event's clinical time)."""
    value = payload.get(DATE_FIELDS.get(form, ""))
    return to_date(str(value)) if value else fallback


@dataclass
class SubjectState:
    subject: str
    version: int = 0
    site: str | None = None
    phase: str | None = None  # None: never consented
    phase_since: date | None = None
    consent: Consent | None = None
    protocol_version: int | None = None  # the version the subject (re)consented under
    forms: dict[int, RecordedForm] = field(default_factory=dict)  # position -> current form
    collection_coi: str | None = None
    collected_on: date | None = None
    product_coi: str | None = None
    product_failed: bool = False
    released_on: date | None = None
    lymphodepletion_days: list[date] = field(default_factory=list)
    infused_on: date | None = None
    infused_at: str | None = None
    enrolment_order: int | None = None
    cohort: str | None = None
    visits: dict[str, tuple[str, date]] = field(default_factory=dict)
    exit_reason: str | None = None
    exited_on: date | None = None
    eligibility_confirmed_on: date | None = None
    completed_on: date | None = None
    # the procedures' records as they stand (corrections applied, voided ones left out); the
    # dates and identifiers above are derived from them (`derive_procedures`)
    collections: list[PhaseRecord] = field(default_factory=list)  # LeukapheresisRecorded
    releases: list[PhaseRecord] = field(default_factory=list)  # ProductRelease(d|Failed)
    doses: list[PhaseRecord] = field(default_factory=list)  # LymphodepletionGiven
    infusion: PhaseRecord | None = None
    visit_records: dict[str, PhaseRecord] = field(default_factory=dict)
    voided: dict[int, VoidedRecord] = field(default_factory=dict)  # position -> its void
    confirmation_position: int | None = None  # the EligibilityConfirmed event
    # the forms as they stood when eligibility was confirmed (what the investigator judged)
    forms_at_confirmation: dict[int, RecordedForm] | None = None
    completion_position: int | None = None
    exit_position: int | None = None  # ScreenFailed or SubjectWentOffStudy
    reconsents: dict[int, date] = field(default_factory=dict)  # position -> consent date
    protocol_versions: list[tuple[int, int]] = field(default_factory=list)  # (position, version)

    @property
    def consented(self) -> bool:
        return self.phase is not None

    def protocol_version_at(self, position: int) -> int | None:
        """The protocol version the subject was under at global position `position`."""
        found = None
        for at, version in self.protocol_versions:
            if at <= position:
                found = version
        return found

    def procedure(self, position: int) -> PhaseRecord | None:
        """The procedure recorded at `position` as it stands, None if none is (or it is
        voided)."""
        found = [*self.collections, *self.releases, *self.doses, *self.visit_records.values()]
        if self.infusion is not None:
            found.append(self.infusion)
        return next((record for record in found if record.position == position), None)

    def forms_of(self, form: str) -> list[RecordedForm]:
        return [f for f in self.forms.values() if f.form == form]

    def latest_value(self, form: str, name: str, *, before: date | None = None) -> object:
        """The latest recorded value of a field (by clinical date, then log order)."""
        found = [
            f for f in self.forms_of(form)
            if name in f.values and (before is None or f.recorded_on <= before)
        ]
        found.sort(key=lambda f: (f.recorded_on, f.position))
        return found[-1].values[name] if found else None


def fold_subject(subject: str, events: Iterable[RecordedEvent]) -> SubjectState:
    return _fold_into(SubjectState(subject), events)


def fold_onto(state: SubjectState, events: Iterable[RecordedEvent]) -> SubjectState:
    """`state` (the fold of a stream's first events) with the stream's next `events` folded
    in: the same as folding the whole stream again, on a copy (`state` is left as it was)."""
    return _fold_into(copy_subject(state), events)


def copy_subject(s: SubjectState) -> SubjectState:
    """A copy whose collections `apply_subject` may change without touching `s`'s (their items
    are immutable: frozen dataclasses, dates, tuples)."""
    # Built without `__init__`, which `dataclasses.replace` runs field by field (a third of
    # the copy a command makes: issue 17); every list and dict copied, whatever its field.
    data = s.__dict__.copy()
    for name, value in data.items():
        if value.__class__ is dict or value.__class__ is list:
            data[name] = value.copy()
    copy = object.__new__(s.__class__)
    copy.__dict__ = data
    return copy


def _fold_into(state: SubjectState, events: Iterable[RecordedEvent]) -> SubjectState:
    for event in events:
        try:
            apply_subject(state, event)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise misshapen(event, error) from error
    return state


def misshapen(event: RecordedEvent, error: Exception) -> IntegrityFailure:
    """An event the executor never writes: its payload lacks what its type holds (appended
    past the executor, e.g. by a personal database login calling the append function)."""
    return IntegrityFailure(
        f"Integrity failure in stream {event.stream_id} version {event.version} (position "
        f"{event.position}): its {event.type} payload does not hold what a {event.type} holds "
        f"({type(error).__name__}: {error}); it was not written by trialflow's executor "
        f"(`trialflow audit log {event.stream_id}` shows it).",
        stream_id=event.stream_id, version=event.version)


def apply_subject(s: SubjectState, event: RecordedEvent) -> None:
    _apply(s, event)
    s.phase_since = phase_start(s) or s.phase_since


def phase_start(s: SubjectState) -> date | None:
    """The clinical date the subject's current phase began, from its records as they stand
    (a corrected or voided procedure moves it): consent, eligibility confirmation, product
    release, the regimen's last dose, D0, completion or exit. None: as the phase change said."""
    phase = s.phase  # tested in the order of the study (every event asks: issue 17)
    if phase == "follow_up":
        return s.infused_on
    if phase == "screening":
        return s.consent.consent_date if s.consent else None
    if phase == "cell_collection":
        return s.eligibility_confirmed_on
    if phase == "lymphodepletion":
        return s.released_on
    if phase == "infusion":
        return s.lymphodepletion_days[-1] if s.lymphodepletion_days else None
    if phase == "completed":
        return s.completed_on
    if phase in ("screen_failed", "off_study"):
        return s.exited_on
    return None


def _apply(s: SubjectState, event: RecordedEvent) -> None:
    p = event.payload
    s.version = event.version
    kind = event.type
    if kind == T.FORM_RECORDED:  # most events are forms: asked first
        s.forms[event.position] = RecordedForm(
            event.position, s.subject, p["form"], dict(p["values"]),
            date.fromisoformat(p["on"]), p.get("visit"),
        )
    elif kind == T.SUBJECT_CONSENTED:
        s.site = p["site"]
        s.consent = Consent(s.subject, date.fromisoformat(p["consent_date"]),
                            p["consent_form_version"], int(p["protocol_version"]),
                            event.position)
        s.protocol_version = int(p["protocol_version"])
        s.protocol_versions.append((event.position, s.protocol_version))
        s.phase, s.phase_since = "screening", s.consent.consent_date
    elif kind == T.SUBJECT_RECONSENTED:
        s.reconsents[event.position] = to_date(str(p.get("consent_date") or event.occurred_at))
        s.protocol_version = int(p["protocol_version"])
        s.protocol_versions.append((event.position, s.protocol_version))
    elif kind == T.FORM_CORRECTED:
        _apply_correction(s, event)
    elif kind == T.RECORD_VOIDED:
        _apply_void(s, event)
    elif kind == T.ELIGIBILITY_CONFIRMED:
        s.enrolment_order, s.cohort = int(p["order"]), p["cohort"]
        s.confirmation_position = event.position
        s.forms_at_confirmation = dict(s.forms)
    elif kind in PROCEDURES:
        form = PROCEDURES[kind]
        if kind == T.PRODUCT_RELEASE_FAILED:
            p = {**p, "qc": "fail"}
        record = PhaseRecord(event.position, record_date(form, p, to_date(event.occurred_at)),
                             p, event.reason, form)
        # each kind moves only what `derive_procedures` derives from it (a fold of many
        # visits would otherwise derive every visit again at each one)
        if form == "leukapheresis":
            s.collections.append(record)
            _derive_product(s)
        elif form == "product_release":
            s.releases.append(record)
            _derive_product(s)
        elif form == "lymphodepletion":
            s.doses.append(record)
            s.lymphodepletion_days.append(record.on)
        elif form == "infusion":
            s.infusion = record
            _derive_infusion(s)
        else:
            s.visit_records[p["visit"]] = record
            s.visits[p["visit"]] = (str(p["status"]), record.on)
    elif kind == T.SUBJECT_COMPLETED:
        s.completed_on, s.completion_position = to_date(event.occurred_at), event.position
    elif kind in (T.SCREEN_FAILED, T.SUBJECT_OFF_STUDY):
        s.exit_reason, s.exit_position = p["reason"], event.position
    elif kind == T.PHASE_CHANGED:
        s.phase, s.phase_since = p["to"], date.fromisoformat(p["on"])
        if p["from"] == "screening" and p["to"] == "cell_collection":
            s.eligibility_confirmed_on = s.phase_since
        if p["to"] in ("screen_failed", "off_study"):
            s.exited_on = s.phase_since


def _apply_correction(s: SubjectState, event: RecordedEvent) -> None:
    p = event.payload
    target = int(p["target_position"])
    if target in s.forms:
        form = s.forms[target]
        s.forms[target] = replace(form, values={**form.values, **p["changes"]},
                                  corrected_by=(*form.corrected_by, event.position))
        return
    dated = DATED_ACTS.get(target_kind(s, target) or "")
    if dated is not None:  # the date of an act that opened a phase or ended the study
        day = date.fromisoformat(str(p["changes"][dated]))
        if target in s.reconsents:
            s.reconsents[target] = day
            return
        if target == s.confirmation_position:
            s.eligibility_confirmed_on = day
            opened = "cell_collection"
        elif target == s.completion_position:
            s.completed_on, opened = day, "completed"
        else:
            s.exited_on, opened = day, str(s.phase)
        if s.phase == opened:
            s.phase_since = day
        return
    if s.consent is not None and target == s.consent.position:
        changes = p["changes"]
        s.consent = replace(
            s.consent,
            consent_date=date.fromisoformat(changes.get("consent_date",
                                                        s.consent.consent_date.isoformat())),
            consent_form_version=changes.get("consent_form_version",
                                             s.consent.consent_form_version))
        return
    record = s.procedure(target)
    if record is None:
        raise KeyError(f"no record at position {target} to correct")
    payload = corrected_payload(record.form, record.payload, p["changes"])
    _replace_procedure(s, record, replace(
        record, payload=payload, on=record_date(record.form, payload, record.on),
        corrected_by=(*record.corrected_by, event.position)))


def target_kind(s: SubjectState, position: int) -> str | None:
    """The dated act at `position` (a key of DATED_ACTS), None when it is none of them."""
    if position == s.confirmation_position:
        return "eligibility_confirmation"
    if position == s.completion_position:
        return "completion"
    if position == s.exit_position:
        return "exit"
    if position in s.reconsents:
        return "reconsent"
    return None


def _apply_void(s: SubjectState, event: RecordedEvent) -> None:
    target = int(event.payload["target_position"])
    form = s.forms.pop(target, None)
    record = s.procedure(target) if form is None else None
    if form is None and record is None:
        raise KeyError(f"no record at position {target} to void")
    s.voided[target] = VoidedRecord(target, form.form if form else record.form if record
                                    else "", event.position, event.reason)
    if record is not None:
        _replace_procedure(s, record, None)


def _replace_procedure(s: SubjectState, old: PhaseRecord, new: PhaseRecord | None) -> None:
    """Put `new` in the place of the procedure `old` (None: take it out), then derive."""
    def swap(records: list[PhaseRecord]) -> list[PhaseRecord]:
        if new is None:
            return [r for r in records if r is not old]
        return [new if r is old else r for r in records]

    s.collections, s.releases, s.doses = swap(s.collections), swap(s.releases), swap(s.doses)
    if s.infusion is old:
        s.infusion = new
    for code, record in list(s.visit_records.items()):
        if record is old:
            if new is None:
                del s.visit_records[code]
            else:
                s.visit_records[code] = new
    derive_procedures(s)


def derive_procedures(s: SubjectState) -> None:
    """The dates and identifiers the rules read, from the procedures as they stand: the last
    collection, the releases after it, the doses, the infusion and the visits."""
    _derive_product(s)
    s.lymphodepletion_days = [dose.on for dose in s.doses]
    _derive_infusion(s)
    s.visits = {code: (str(r.payload["status"]), r.on) for code, r in s.visit_records.items()}


def _derive_product(s: SubjectState) -> None:
    """The last collection and the product released from it (or failed)."""
    last = s.collections[-1] if s.collections else None
    s.collected_on = last.on if last else None
    s.collection_coi = str(last.payload["coi_id"]) if last else None
    after = [r for r in s.releases if last is not None and r.position > last.position]
    s.product_failed = bool(after) and after[-1].payload.get("qc") == "fail"
    passed = [r for r in after if r.payload.get("qc") != "fail"]
    s.product_coi = str(passed[-1].payload["coi_id"]) if passed else None
    s.released_on = passed[-1].on if passed else None


def _derive_infusion(s: SubjectState) -> None:
    s.infused_on = s.infusion.on if s.infusion else None
    s.infused_at = str(s.infusion.payload["infused_at"]) if s.infusion else None


def load_subject(store: EventStore, subject: str) -> SubjectState:
    """A subject as its stream stands now (for reads; writes load it in the executor)."""
    return fold_subject(subject, store.read_stream(check_subject_id(subject)))


def subject_streams(store: EventStore, up_to: int) -> list[tuple[str, list[RecordedEvent]]]:
    """Every subject's stream up to position `up_to`, by subject, read in one pass of the log
    (an amendment preview folds them all)."""
    streams: dict[str, list[RecordedEvent]] = {}
    for event in store.read_all(after=0, up_to=up_to):
        if is_subject_id(event.stream_id):
            streams.setdefault(event.stream_id, []).append(event)
    return sorted(streams.items())
