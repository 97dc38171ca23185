"""One scheduler pass: issue what came due (exactly once), cancel what became obsolete, deliver
what is not delivered yet (at least once).

1. The read models catch up (projections/views.py), then the visit schedule and the SAE clocks
   are evaluated at `now` (projections/queries.py): whatever is due now is an obligation.
2. Each obligation not yet issued gets `ReminderIssued` in `reminders-SUBJECT` with a command
   id derived from its key: the database keeps command ids unique, so of several schedulers
   (or a retry after a crash) exactly one appends it and the others get its first result.
3. A reminder whose obligation is no longer planned (a visit whose target date moved with a
   corrected infusion date) gets `ReminderCancelled` and is not delivered any more.
4. Every issued, uncancelled reminder not yet delivered on a channel is sent there after the
   commit, and `ReminderDelivered` or `ReminderDeliveryFailed` (with the time of the next
   attempt, backing off) is recorded. A channel that fails never stops the others, and a
   failed delivery is retried at every pass after its backoff, never dropped.

A scheduler killed between 2 and 4 finds the undelivered reminders at its next pass. Visit
reminders stop when a subject leaves the study or completes it; SAE clocks never stop.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import structlog

from events.errors import EventStoreError, IntegrityFailure, StoreUnavailable
from events.store import EventStore
from events.streams import REMINDERS_PREFIX
from projections.notifiers import Notifier
from projections.per_store import PerStore
from projections.queries import Clock, ae_windows, visit_list
from projections.subject_rows import zone_of
from projections.views import View, open_view
from workflow.bootstrap import App
from workflow.commands import messages as M
from workflow.commands.executor import REMINDER_CANCEL_ID, REMINDER_ISSUE_ID, Executor
from workflow.errors import WorkflowError
from workflow.identity import Credential
from workflow.phases import TERMINAL
from workflow.reminders import (
    Obligation,
    Reminder,
    channels_due,
    fold_reminders,
    planned_obligations,
    sae_obligations,
    visit_obligations,
)

log = structlog.get_logger("trialflow.scheduler")


def _sentence(error: Exception) -> str:
    return getattr(error, "message", None) or str(error)
SCHEDULER_RETRIES = 25


@dataclass
class TickReport:
    now: str
    issued: list[str] = field(default_factory=list)  # reminder ids
    already_issued: int = 0
    cancelled: list[str] = field(default_factory=list)
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (id, channel)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (id, channel, error)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (id, why): others went on

    def to_json(self) -> dict[str, Any]:
        return {"now": self.now, "issued": self.issued, "already_issued": self.already_issued,
                "cancelled": self.cancelled,
                "delivered": [{"id": i, "channel": c} for i, c in self.delivered],
                "failed": [{"id": i, "channel": c, "error": e} for i, c, e in self.failed],
                "refused": [{"id": i, "error": e} for i, e in self.refused]}


def due_obligations(view: View, now: datetime) -> tuple[list[Obligation], set[tuple[str, str]]]:
    """(what is due at `now`, everything still planned)."""
    clock = Clock(view, now)
    subjects = view.subjects()
    zones = {row["subject"]: zone_of(view.study, row["site"]) for row in subjects}
    active = {row["subject"] for row in subjects if row["phase"] not in TERMINAL}
    visits = visit_list(view, clock, None)
    clocks = ae_windows(view, clock, None)["sae_clocks"]
    wanted = visit_obligations([v for v in visits if v["subject"] in active], zones)
    wanted += sae_obligations([c for c in clocks  # a clock runs from its start, not before
                               if datetime.fromisoformat(c["starts_at"]) <= now])
    return wanted, planned_obligations(visits, clocks)


class _Folded:
    """Every subject's reminders folded up to `position`, kept per store for the life of the
    process (a long-running scheduler, the demo): each read folds only what was appended
    since. The log is append-only and a position is visible only after every lower one, so
    the fold up to a position never changes."""

    def __init__(self) -> None:
        self.reminders: dict[str, Reminder] = {}
        self.position = 0
        self.lock = threading.Lock()

    def up_to_date(self, store: EventStore) -> dict[str, Reminder]:
        with self.lock:
            if self.position and store.last_position() < self.position:
                self.reminders, self.position = {}, 0  # another database (restored) now
            events = store.read_prefixed(REMINDERS_PREFIX, after=self.position)
            if events:
                fold_reminders(events, self.reminders)
                self.position = events[-1].position
            return {key: _copy(r) for key, r in self.reminders.items()}


def _copy(reminder: Reminder) -> Reminder:
    """A copy the caller owns (the kept fold goes on changing)."""
    return replace(reminder, delivered=dict(reminder.delivered),
                   attempts=dict(reminder.attempts), retry_at=dict(reminder.retry_at),
                   last_error=dict(reminder.last_error))


_FOLDED: Final = PerStore(_Folded)


def _folded(store: EventStore) -> _Folded:
    return _FOLDED.of(store)


def issued_reminders(store: EventStore, subjects: Collection[str]) -> dict[str, Reminder]:
    """The reminders of `subjects` as the log holds them now (one statement reads what was
    appended to any reminder stream since the last call)."""
    wanted = set(subjects)
    return {key: reminder for key, reminder in _folded(store).up_to_date(store).items()
            if reminder.subject in wanted}


def message_of(reminder: Reminder) -> dict[str, Any]:
    return {"id": reminder.reminder_id, "subject": reminder.subject,
            "obligation": reminder.obligation, "kind": reminder.kind,
            "due_at": reminder.due_at, "detail": reminder.detail,
            "issued_at": reminder.issued_at}


class _Desk:
    """The scheduler's writes, each a message through the one executor with the scheduler's
    own credential (a service account: it may send only these messages)."""

    def __init__(self, app: App, credential: Credential, now: datetime) -> None:
        # several schedulers may write one subject's reminders at once: more reloads than a
        # coordinator's command needs before a conflict is given up (each is a fresh decide)
        self.executor = Executor(app, clock=lambda: now, retries=SCHEDULER_RETRIES)
        self.credential = credential
        user = self.executor.authenticate(credential)  # before any work
        self.executor.may_send(user, M.IssueReminder)
        self.executor.check_clock(now)  # a future --now is for reads, never for a pass

    def send(self, message: M.Message, command_id: str | None = None) -> bool:
        """Carry out `message`; False when it was a repeat (another scheduler did it)."""
        outcome = self.executor.execute(message, self.credential, command_id=command_id)
        return not outcome.result.duplicate

    def issue(self, obligation: Obligation) -> bool:
        """Issue once by the obligation's command id. A command row for that id that is not
        the reminder's (written outside trialflow, to silence it) is an integrity failure:
        the reminder is then issued under a second id every scheduler derives alike."""
        message = M.IssueReminder(obligation.subject, obligation.obligation, obligation.kind,
                                  obligation.due_at, obligation.detail, obligation.generation)
        command_id = f"{REMINDER_ISSUE_ID}{obligation.reminder_id}"
        try:
            return self.send(message, command_id)
        except IntegrityFailure as error:
            log.error("reminder command id taken by a foreign row", error=str(error),
                      reminder_id=obligation.reminder_id)
            return self.send(message, f"{command_id}-reissued")


def tick(app: App, credential: Credential, now: datetime,
         notifiers: Sequence[Notifier]) -> TickReport:
    desk = _Desk(app, credential, now)  # refuses anyone but a scheduler, before any work
    store = app.store
    report = TickReport(now.isoformat())
    view = open_view(app.engine, store)
    wanted, planned = due_obligations(view, now)
    subjects = [row["subject"] for row in view.subjects()]
    known = issued_reminders(store, subjects)
    by_key: dict[tuple[str, str, str], list[Reminder]] = {}
    for reminder in known.values():
        by_key.setdefault((reminder.subject, reminder.obligation, reminder.kind),
                          []).append(reminder)
    for obligation in wanted:
        earlier = by_key.get((obligation.subject, obligation.obligation, obligation.kind), [])
        if any(r.cancelled is None for r in earlier):
            continue
        # planned again after a cancellation (e.g. an infusion time corrected back): a new
        # reminder, numbered by the cancellations before it, so it too is issued once
        obligation = replace(obligation, generation=len(earlier))
        # the command id derives from the obligation's key: issued once by any scheduler
        try:
            issued = desk.issue(obligation)
        except (WorkflowError, EventStoreError) as error:
            if isinstance(error, StoreUnavailable):
                raise  # the database is away: the pass stops, the next one retries
            report.refused.append((obligation.reminder_id, _sentence(error)))
            log.error("reminder not issued", reminder_id=obligation.reminder_id,
                      error=_sentence(error))
            continue  # one refusal never stops the other reminders
        if issued:
            report.issued.append(obligation.reminder_id)
        else:
            report.already_issued += 1  # another scheduler issued it first
    for reminder in known.values():
        base = reminder.obligation.split("/", 1)[0]
        if reminder.cancelled is not None or (reminder.subject, base) in planned:
            continue
        if desk.send(M.CancelReminder(
                reminder.subject, reminder.reminder_id,
                f"{reminder.obligation} is no longer planned (its target moved or it was "
                "withdrawn); a reminder for the new target replaces it."),
                command_id=f"{REMINDER_CANCEL_ID}{reminder.reminder_id}"):
            report.cancelled.append(reminder.reminder_id)  # not if another did it first
    _deliver(desk, issued_reminders(store, subjects), notifiers, now, report)
    log.info("scheduler pass", **report.to_json())
    return report


def _deliver(desk: _Desk, reminders: dict[str, Reminder], notifiers: Sequence[Notifier],
             now: datetime, report: TickReport) -> None:
    channels = [n.channel for n in notifiers]
    by_channel = {n.channel: n for n in notifiers}
    for reminder in sorted(reminders.values(), key=lambda r: r.position):
        for channel in channels_due(reminder, channels, now):
            try:
                by_channel[channel].send(message_of(reminder))
            except Exception as error:  # any failure of a channel is recorded and retried
                text = f"{type(error).__name__}: {error}"
                desk.send(M.RecordDeliveryFailure(reminder.subject, reminder.reminder_id,
                                                  channel, text))
                report.failed.append((reminder.reminder_id, channel, text))
                continue
            desk.send(M.RecordDelivery(reminder.subject, reminder.reminder_id, channel))
            report.delivered.append((reminder.reminder_id, channel))


def reminder_list(store: EventStore, view: View, now: datetime, channels: Sequence[str],
                  subject: str | None, *, pending: bool) -> list[dict[str, Any]]:
    """Issued reminders with their state, then what will come due next (state `upcoming`)."""
    subjects = [r["subject"] for r in view.subjects()
                if subject is None or r["subject"] == subject]
    rows = [r.to_json(channels) for r in issued_reminders(store, subjects).values()]
    if pending:
        rows = [r for r in rows if r["state"] in ("issued", "failed")]
    issued = {r["id"] for r in rows}
    upcoming = [o for o in next_obligations(view, now) if o.reminder_id not in issued
                and (subject is None or o.subject == subject)]
    rows.sort(key=lambda r: (r["subject"], r["position"]))
    return rows + [{"id": o.reminder_id, "subject": o.subject, "obligation": o.obligation,
                    "kind": o.kind, "due_at": o.due_at, "state": "upcoming",
                    "detail": o.detail} for o in upcoming]


def next_obligations(view: View, now: datetime) -> list[Obligation]:
    """The next reminder of each open visit window and running SAE clock, after `now`."""
    clock = Clock(view, now)
    subjects = view.subjects()
    zones = {row["subject"]: zone_of(view.study, row["site"]) for row in subjects}
    sites = {row["subject"]: row["site"] for row in subjects}
    active = {row["subject"] for row in subjects if row["phase"] not in TERMINAL}
    out: list[Obligation] = []
    for row in visit_list(view, clock, None):
        if row["subject"] not in active or row["status"] not in ("upcoming", "due"):
            continue
        protocol = view.study.protocol_of(row["protocol_version"])
        start, end = date.fromisoformat(row["window_start"]), date.fromisoformat(
            row["window_end"])
        today = clock.today(sites[row["subject"]])
        if row["visit"] == "screening":
            lead = protocol.screening_expiring_lead_days
            steps = [(end - timedelta(days=lead - 1), "screening_expiring",
                      f"screening:{row['target_date']}")]
        else:
            lead = protocol.window_opening_lead_days
            target = f"visit:{row['visit']}@{row['target_date']}"
            steps = [(start - timedelta(days=lead), "window_opening", target),
                     (start, "due", target), (end + timedelta(days=1), "overdue", target)]
        for day, kind, obligation in steps:
            if day > today:
                out.append(Obligation(row["subject"], obligation, kind, datetime.combine(
                    day, time(0), zones[row["subject"]]).isoformat(),
                    f"{row['visit']} window {row['window_start']} to {row['window_end']}: "
                    f"{kind.replace('_', ' ')}."))
                break
    for c in ae_windows(view, clock, None)["sae_clocks"]:
        if c["clock"] == "sae_report" and c["state"] == "due":
            out.append(Obligation(c["subject"], f"sae:{c['ae_position']}",
                                  "sae_report_overdue", c["due_at"],
                                  f"AE at position {c['ae_position']}: SAE report due by "
                                  f"{c['due_at']}."))
    return sorted(out, key=lambda o: (o.due_at, o.subject))
