"""Decisions without a database: "given these events, when this message, then these events or
this refusal".

A `Ledger` holds a log in memory. `decide` builds the context of a message exactly as the
executor does (`context_for`, a pure fold) and runs the same admission and decision
(`workflow.commands.handlers.decide`); `send` then appends the decision's events in memory,
numbered and hash-chained as the store would (so a signature can bind a hash). What the
executor itself adds (authentication, idempotency, versions, the clock guard, credentials) is
tested against real databases in tests/workflow/test_executor.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from events.envelope import GENESIS_HASH, NewEvent, RecordedEvent, canonical_json, event_hash
from events.store import format_utc
from events.streams import STUDY_STREAM, is_subject_id, reminders_stream
from workflow.amendment import Preview
from workflow.commands import messages as M
from workflow.commands.decision import Context, Decision, context_for
from workflow.commands.handlers import decide
from workflow.errors import RuleViolation
from workflow.identity import Secret
from workflow.study import Study, User, fold_study
from workflow.subject import SubjectState, fold_subject

ADMIN, COORDINATOR, INVESTIGATOR, MONITOR = "ada", "cora", "ivan", "mona"
SITE, TZ = "PKU3", "Asia/Shanghai"
PASSWORD = Secret("correct-horse-battery")
SCHEDULER_SECRET = Secret("s" * 43)


@dataclass
class Ledger:
    now: datetime = datetime(2025, 12, 1, 2, tzinfo=UTC)
    events: list[RecordedEvent] = field(default_factory=list)

    # ---------------------------------------------------------------- reading
    def stream(self, stream_id: str) -> list[RecordedEvent]:
        return [e for e in self.events if e.stream_id == stream_id]

    def study(self) -> Study:
        return fold_study(self.stream(STUDY_STREAM))

    def subject(self, subject: str) -> SubjectState:
        return fold_subject(subject, self.stream(subject))

    @property
    def last_position(self) -> int:
        return len(self.events)

    # ---------------------------------------------------------------- deciding
    def context(self, user: str, message: M.Message) -> Context:
        study = self.study()
        actor = study.users.get(user) or User(user, "admin", None)
        subject = None
        if message.loads == "subject":
            subject = str(getattr(message, "subject"))  # noqa: B009
        elif message.loads == "query":
            assert isinstance(message, M.QueryMessage)
            subject = self.events[message.query_position - 1].stream_id
        reminders: Sequence[RecordedEvent] = ()
        if isinstance(message, M.ReminderMessage):
            reminders = self.stream(reminders_stream(message.subject))
        template: Sequence[RecordedEvent] = ()
        if isinstance(message, M.CopySubjects):
            template = self.stream(message.template)
        amendment = None
        if isinstance(message, M.AmendProtocol):  # as the executor previews it
            amendment = self.amendment(study, message.version)
        return context_for(message.loads, study, actor, self.now, subject=subject,
                           events=self.stream(subject) if subject else (),
                           reminders=reminders, template=template,
                           last_position=self.last_position, amendment=amendment)

    def amendment(self, study: Study, version: int) -> Preview | None:
        from workflow.amendment import candidate_of, preview

        try:
            candidate = candidate_of(study, version)
        except RuleViolation:
            return None
        subjects = sorted({e.stream_id for e in self.events if is_subject_id(e.stream_id)})
        return preview(study, candidate, [(s, self.stream(s)) for s in subjects],
                       self.last_position)

    def decide(self, user: str, message: M.Message, *, method: str = "password") -> Decision:
        """The decision, or the refusal raised; nothing is appended."""
        return decide(message, self.context(user, message), method=method)

    def send(self, user: str, message: M.Message, *, method: str = "password"
             ) -> list[RecordedEvent]:
        """Decide and append in memory; the events appended."""
        decision = self.decide(user, message, method=method)
        actor = self.study().users.get(user) or User(user, "admin", None)
        appended: list[RecordedEvent] = []
        for write in decision.writes:
            appended += self.append(write.stream, write.events, actor)
        return appended

    def append(self, stream_id: str, events: Iterable[NewEvent],
               actor: User | None = None) -> list[RecordedEvent]:
        """Given these events: appended as the store would number and chain them."""
        who = actor or User("test", "admin", None)
        head = self.stream(stream_id)
        version = head[-1].version if head else 0
        prev = head[-1].hash if head else GENESIS_HASH
        recorded = format_utc(self.now)
        out = []
        for new in events:
            version += 1
            fields: dict[str, Any] = {
                "position": len(self.events) + 1, "stream_id": stream_id, "version": version,
                "type": new.type, "schema_version": new.schema_version,
                "payload": canonical_json(new.payload),
                "occurred_at": new.occurred_at or recorded, "recorded_at": recorded,
                "actor": who.name, "role": who.role, "site": who.site, "reason": new.reason,
                "command_id": f"cmd-{len(self.events) + 1}",
                "correlation_id": f"cmd-{len(self.events) + 1}",
                "causation_id": new.causation_id, "prev_hash": prev,
            }
            digest = event_hash(fields)
            event = RecordedEvent(
                fields["position"], stream_id, version, new.type, new.schema_version,
                fields["payload"], fields["occurred_at"], recorded, who.name, who.role,
                who.site, new.reason, fields["command_id"], fields["correlation_id"],
                new.causation_id, prev, digest)
            self.events.append(event)
            out.append(event)
            prev = digest
        return out

    def at(self, day: date | str) -> None:
        """Noon at the site (UTC+8) on `day`."""
        self.now = datetime.fromisoformat(f"{day}T04:00:00+00:00")

    def later(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def a_study(*, protocol_version: int = 2, now: str = "2024-09-01T02:00:00+00:00") -> Ledger:
    """The study of tests/support/study.py, in memory: sites PKU3 (Asia/Shanghai) and OTHER
    (Europe/Berlin); ada admin, cora coordinator and ivan investigator of PKU3, mona monitor,
    dora data manager, audrey auditor, otto coordinator of OTHER; each person has set their
    own password (none is temporary)."""
    ledger = Ledger(datetime.fromisoformat(now))
    ledger.send(ADMIN, M.InitialiseStudy(ADMIN, PASSWORD, SCHEDULER_SECRET, protocol_version))
    ledger.send(ADMIN, M.AddSite(SITE, TZ))
    ledger.send(ADMIN, M.AddSite("OTHER", "Europe/Berlin"))
    for name, role, site in ((COORDINATOR, "coordinator", SITE),
                             (INVESTIGATOR, "investigator", SITE), (MONITOR, "monitor", None),
                             ("dora", "data_manager", None), ("audrey", "auditor", None),
                             ("otto", "coordinator", "OTHER")):
        add_person(ledger, name, role, site)
    return ledger


def add_person(ledger: Ledger, name: str, role: str, site: str | None) -> None:
    ledger.send(ADMIN, M.AddUser(name, role, site, Secret("temporary-password")))
    ledger.send(name, M.ChangePassword(name, PASSWORD))


def types(events: Iterable[RecordedEvent]) -> list[str]:
    return [e.type for e in events]


# --- a subject through its phases, in memory (as tests/support/study.py does on a database) ---
def screen_eligible(ledger: Ledger, subject: str, day: date, *, weight_kg: float = 58) -> None:
    from tests.support.study import screening_forms

    ledger.at(day)
    ledger.send(COORDINATOR, M.ConsentSubject(subject, day, "2.0"))
    for form, tokens in screening_forms(weight_kg):
        ledger.send(COORDINATOR, M.RecordForm(subject, form, tuple(tokens), day))


def enrol(ledger: Ledger, subject: str, day: date) -> None:
    screen_eligible(ledger, subject, day)
    ledger.at(day + timedelta(days=3))
    ledger.send(INVESTIGATOR, M.ConfirmEligibility(subject))


def to_lymphodepletion(ledger: Ledger, subject: str, start: date) -> str:
    enrol(ledger, subject, start)
    coi = f"COI-{subject}"
    ledger.at(start + timedelta(days=7))
    ledger.send(COORDINATOR, M.RecordLeukapheresis(subject, start + timedelta(days=7), coi))
    ledger.at(start + timedelta(days=20))
    ledger.send(COORDINATOR, M.ReleaseProduct(subject, f"LOT-{subject}", coi, viable_cells=2e8))
    return coi


def through_infusion(ledger: Ledger, subject: str, start: date) -> date:
    coi = to_lymphodepletion(ledger, subject, start)
    d0 = start + timedelta(days=30)
    bsa = 1.62  # sqrt(162 * 58 / 3600)
    for offset, cyclo in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        ledger.at(d0 + timedelta(days=offset))
        ledger.send(COORDINATOR, M.GiveLymphodepletion(subject, d0 + timedelta(days=offset),
                                                       round(25 * bsa, 1), round(cyclo, 1)))
    order = ledger.subject(subject).enrolment_order
    assert order is not None
    cells = ledger.study().protocol.cohort_for(order).target_cells(58)
    ledger.at(d0)
    ledger.send(COORDINATOR, M.Infuse(subject, datetime.fromisoformat(f"{d0}T10:00:00+08:00"),
                                      cells, coi))
    return d0
