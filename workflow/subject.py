"""A subject's stream folded into its current state (replay never re-runs a guard)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

from events.envelope import RecordedEvent
from events.errors import IntegrityFailure
from events.store import EventStore
from events.streams import check_subject_id
from workflow import event_types as T
from workflow.records import Consent, RecordedForm


def to_date(value: str) -> date:
    """A clinical date from an ISO date or date-time (the site's calendar date)."""
    return datetime.fromisoformat(value).date() if "T" in value else date.fromisoformat(value)


@dataclass(frozen=True)
class PhaseRecord:
    """A phase command's event as recorded: its position, clinical date and payload."""

    position: int
    on: date
    payload: Mapping[str, Any]
    reason: str | None = None


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
    # positions and payloads of the phase events, for read models and deviations
    doses: list[PhaseRecord] = field(default_factory=list)  # LymphodepletionGiven
    infusion: PhaseRecord | None = None
    visit_records: dict[str, PhaseRecord] = field(default_factory=dict)
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
    state = SubjectState(subject)
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
    p = event.payload
    s.version = event.version
    kind = event.type
    if kind == T.SUBJECT_CONSENTED:
        s.site = p["site"]
        s.consent = Consent(s.subject, date.fromisoformat(p["consent_date"]),
                            p["consent_form_version"], int(p["protocol_version"]),
                            event.position)
        s.protocol_version = int(p["protocol_version"])
        s.protocol_versions.append((event.position, s.protocol_version))
        s.phase, s.phase_since = "screening", s.consent.consent_date
    elif kind == T.SUBJECT_RECONSENTED:
        s.protocol_version = int(p["protocol_version"])
        s.protocol_versions.append((event.position, s.protocol_version))
    elif kind == T.FORM_RECORDED:
        s.forms[event.position] = RecordedForm(
            event.position, s.subject, p["form"], dict(p["values"]),
            date.fromisoformat(p["on"]), p.get("visit"),
        )
    elif kind == T.FORM_CORRECTED and s.infusion is not None \
            and int(p["target_position"]) == s.infusion.position:
        corrected = {**s.infusion.payload, **p["changes"]}
        s.infused_at, s.infused_on = corrected["infused_at"], to_date(corrected["infused_at"])
        s.infusion = PhaseRecord(s.infusion.position, s.infused_on, corrected,
                                 s.infusion.reason)
    elif kind == T.FORM_CORRECTED:
        target = s.forms[int(p["target_position"])]
        s.forms[target.position] = replace(
            target, values={**target.values, **p["changes"]},
            corrected_by=(*target.corrected_by, event.position),
        )
    elif kind == T.ELIGIBILITY_CONFIRMED:
        s.enrolment_order, s.cohort = int(p["order"]), p["cohort"]
    elif kind == T.LEUKAPHERESIS_RECORDED:
        s.collection_coi, s.collected_on = p["coi_id"], date.fromisoformat(p["collected_on"])
        s.product_failed, s.product_coi = False, None
    elif kind == T.PRODUCT_RELEASED:
        s.product_coi, s.released_on = p["coi_id"], to_date(event.occurred_at)
    elif kind == T.PRODUCT_RELEASE_FAILED:
        s.product_failed = True
    elif kind == T.LYMPHODEPLETION_GIVEN:
        given_on = date.fromisoformat(p["given_on"])
        s.lymphodepletion_days.append(given_on)
        s.doses.append(PhaseRecord(event.position, given_on, p, event.reason))
    elif kind == T.INFUSION_GIVEN:
        s.infused_at, s.infused_on = p["infused_at"], to_date(p["infused_at"])
        s.infusion = PhaseRecord(event.position, s.infused_on, p, event.reason)
    elif kind == T.VISIT_RECORDED:
        visit_date = date.fromisoformat(p["visit_date"])
        s.visits[p["visit"]] = (p["status"], visit_date)
        s.visit_records[p["visit"]] = PhaseRecord(event.position, visit_date, p, event.reason)
    elif kind in (T.SCREEN_FAILED, T.SUBJECT_OFF_STUDY):
        s.exit_reason = p["reason"]
    elif kind == T.PHASE_CHANGED:
        s.phase, s.phase_since = p["to"], date.fromisoformat(p["on"])
        if p["from"] == "screening" and p["to"] == "cell_collection":
            s.eligibility_confirmed_on = s.phase_since
        if p["to"] in ("screen_failed", "off_study"):
            s.exited_on = s.phase_since


def load_subject(store: EventStore, subject: str) -> SubjectState:
    """A subject as its stream stands now (for reads; writes load it in the executor)."""
    return fold_subject(subject, store.read_stream(check_subject_id(subject)))
