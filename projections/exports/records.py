"""Recorded forms with their history, as ODM and CSV export them.

A subject's stream is walked in order. Every `FormRecorded` and every phase command's event
(consent, leukapheresis, product release, lymphodepletion, infusion, visit) is one recorded
form, with the fields of its form in `workflow.forms.FORMS` (payload keys that are no field,
such as the infusion's computed target dose, stay out; a lymphodepletion day's `doses` give
its `fludarabine_mg` and `cyclophosphamide_mg`). Each `FormCorrected` adds an entry to
the form it targets. An entry says who, where (the acting user's site), when (`recorded_at`),
why (the event's reason) and which values it set; the current values are the original ones
with every correction applied in log order, exactly as the subject fold applies them. A
`RecordVoided` marks the form voided and adds a `void` entry (who, when, why); the form and its
history stay in the export, flagged.

Each form belongs to one study event (the ODM StudyEventData):
- a phase form to its phase: `SCREENING` (consent), `CELL_COLLECTION` (leukapheresis, product
  release), `LYMPHODEPLETION`, `D0` (infusion) and a `visit` form to its own visit;
- a safety form (adverse event, causality, SAE report) to the `AE` log, whatever its tag;
- any other form to the visit it was tagged with (`--visit`), else to the phase the subject
  was in when it was recorded (`follow_up` and later: `UNSCHEDULED`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final
from zoneinfo import ZoneInfo

from events.envelope import RecordedEvent
from projections.subject_rows import zone_of
from workflow import event_types as T
from workflow.clinical_time import local_date
from workflow.forms import FORMS, PHASE_FORM_COMMANDS
from workflow.study import Study
from workflow.subject import DATE_FIELDS

SCREENING: Final = "SCREENING"
CELL_COLLECTION: Final = "CELL_COLLECTION"
LYMPHODEPLETION: Final = "LYMPHODEPLETION"
INFUSION: Final = "D0"
UNSCHEDULED: Final = "UNSCHEDULED"
AE_LOG: Final = "AE"
SAFETY_FORMS: Final[tuple[str, ...]] = ("adverse_event", "causality", "sae_report")
# Forms any study event may hold (not a phase form, not a safety form).
GENERAL_FORMS: Final[tuple[str, ...]] = tuple(
    code for code in FORMS if code not in PHASE_FORM_COMMANDS and code not in SAFETY_FORMS)

# phase event -> (form, the payload field holding its clinical date)
PHASE_EVENTS: Final[dict[str, tuple[str, str | None]]] = {
    T.SUBJECT_CONSENTED: ("consent", "consent_date"),
    T.LEUKAPHERESIS_RECORDED: ("leukapheresis", "collected_on"),
    T.PRODUCT_RELEASED: ("product_release", None),
    T.PRODUCT_RELEASE_FAILED: ("product_release", None),
    T.LYMPHODEPLETION_GIVEN: ("lymphodepletion", "given_on"),
    T.INFUSION_GIVEN: ("infusion", "infused_at"),
    T.VISIT_RECORDED: ("visit", "visit_date"),
}
PHASE_FORM_EVENTS: Final[dict[str, str]] = {
    "consent": SCREENING,
    "leukapheresis": CELL_COLLECTION,
    "product_release": CELL_COLLECTION,
    "lymphodepletion": LYMPHODEPLETION,
    "infusion": INFUSION,
}
PHASE_STUDY_EVENTS: Final[dict[str, str]] = {
    "screening": SCREENING,
    "cell_collection": CELL_COLLECTION,
    "lymphodepletion": LYMPHODEPLETION,
    "infusion": INFUSION,
}


@dataclass(frozen=True)
class Entry:
    """One write to a form: the original record or a correction."""

    position: int
    actor: str
    role: str
    site: str | None
    recorded_at: str
    reason: str | None
    values: Mapping[str, Any]  # what this entry set (a correction: only what it changed)
    kind: str  # original | correction | void (values: what the void took away)


@dataclass
class FormRecord:
    """A recorded form with its current values and every entry that wrote it."""

    subject: str
    position: int
    form: str
    study_event: str
    visit: str | None
    recorded_on: date  # the clinical date (site calendar)
    values: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)
    voided: bool = False  # marked entered in error (`trialflow void`); kept with its history

    @property
    def corrected(self) -> bool:
        return bool(self.corrections)

    @property
    def corrections(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.kind == "correction"]


def form_values(form: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload's fields of `form`, in the form's field order, absent values left out."""
    return {code: payload[code] for code in FORMS[form].field_codes
            if payload.get(code) is not None}


def phase_form_fields(event_type: str, payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """A phase event's payload with its form's fields: as stored, except LymphodepletionGiven,
    whose doses (schema version 2, workflow/upcasters.py) give the form's `<drug>_mg` fields."""
    if event_type != T.LYMPHODEPLETION_GIVEN:
        return payload
    fields = dict(payload)
    for drug, dose in payload["doses"].items():
        fields[f"{drug}_{dose['given']['unit']}"] = dose["given"]["value"]
    return fields


def _entry(event: RecordedEvent, values: Mapping[str, Any], kind: str) -> Entry:
    return Entry(event.position, event.actor, event.role, event.site, event.recorded_at,
                 event.reason, dict(values), kind)


def _date_of(value: str, zone: ZoneInfo) -> date:
    return local_date(value, zone) if "T" in value else date.fromisoformat(value)


def _clinical_date(event: RecordedEvent, date_field: str | None, zone: ZoneInfo) -> date:
    if date_field is not None:
        value = event.payload.get(date_field)
        if isinstance(value, str) and value:
            return _date_of(value, zone)
    return local_date(event.occurred_at, zone)


def form_records(study: Study, subject: str, events: tuple[RecordedEvent, ...] | list[
        RecordedEvent]) -> list[FormRecord]:
    """Every form of one subject's stream, in the order of the original records."""
    records: dict[int, FormRecord] = {}
    phase = "screening"
    zone = ZoneInfo("UTC")
    for event in events:
        payload = event.payload
        if event.type == T.SUBJECT_CONSENTED:
            zone = zone_of(study, payload.get("site"))
        if event.type == T.PHASE_CHANGED:
            phase = str(payload["to"])
        elif event.type == T.FORM_RECORDED:
            form = str(payload["form"])
            visit = payload.get("visit")
            values = form_values(form, payload["values"])
            records[event.position] = FormRecord(
                subject, event.position, form, _study_event(form, visit, phase), visit,
                date.fromisoformat(payload["on"]), values, [_entry(event, values, "original")])
        elif event.type in PHASE_EVENTS:
            form, date_field = PHASE_EVENTS[event.type]
            fields = phase_form_fields(event.type, payload)
            if form == "product_release":  # its clinical date is a field of its form
                fields = {**fields, "released_on": _clinical_date(event, None, zone).isoformat()}
            values = form_values(form, fields)
            visit = payload.get("visit") if form == "visit" else None
            study_event = str(visit) if visit else PHASE_FORM_EVENTS[form]
            records[event.position] = FormRecord(
                subject, event.position, form, study_event, visit,
                _clinical_date(event, date_field, zone), values,
                [_entry(event, values, "original")])
        elif event.type == T.FORM_CORRECTED:
            target = records.get(int(payload["target_position"]))
            if target is None:  # a correction of nothing exported (cannot happen today)
                continue
            changes = form_values(target.form, payload["changes"])
            target.values.update(changes)
            target.entries.append(_entry(event, changes, "correction"))
            date_field = DATE_FIELDS.get(target.form)
            if date_field is not None and date_field in changes:  # a procedure's date
                target.recorded_on = _date_of(str(changes[date_field]), zone)
        elif event.type == T.RECORD_VOIDED:
            target = records.get(int(payload["target_position"]))
            if target is not None:
                target.voided = True
                target.entries.append(_entry(event, dict(target.values), "void"))
    return [records[position] for position in sorted(records)]


def _study_event(form: str, visit: object, phase: str) -> str:
    if form in SAFETY_FORMS:
        return AE_LOG
    if isinstance(visit, str) and visit:
        return visit
    return PHASE_STUDY_EVENTS.get(phase, UNSCHEDULED)
