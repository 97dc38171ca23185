"""The scheduler's only writes: issue, cancel and record the delivery of reminders, each to
`reminders-SUBJECT` (so a scheduler never conflicts with a coordinator's append), and only for
a user with the `scheduler` role."""

from __future__ import annotations

from datetime import datetime

from events.envelope import NewEvent
from events.store import AppendContext, AppendResult, EventStore
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.errors import RuleViolation
from workflow.reminders import Obligation, Reminder, backoff, stream_of
from workflow.study import User, fold_study


class ReminderDesk:
    def __init__(self, store: EventStore, user: str | None) -> None:
        self.store = store
        self.actor = _scheduler(store, user)

    def _context(self, command_id: str) -> AppendContext:
        return AppendContext(actor=self.actor.name, role=self.actor.role,
                             site=self.actor.site, command_id=command_id)

    def issue(self, obligation: Obligation) -> AppendResult:
        """Appends once per obligation key: the command id is derived from it and the
        database keeps command ids unique (a repeat returns the first result)."""
        return self.store.append(
            stream_of(obligation.subject), None,
            [NewEvent(T.REMINDER_ISSUED, obligation.payload(), occurred_at=obligation.due_at)],
            self._context(f"reminder-issue-{obligation.reminder_id}"))

    def cancel(self, reminder: Reminder, reason: str) -> AppendResult:
        return self.store.append(
            stream_of(reminder.subject), None,
            [NewEvent(T.REMINDER_CANCELLED, {"reminder_id": reminder.reminder_id,
                                             "reason": reason})],
            self._context(f"reminder-cancel-{reminder.reminder_id}"))

    def delivered(self, reminder: Reminder, channel: str) -> AppendResult:
        attempt = reminder.attempts.get(channel, 0) + 1
        return self.store.append(
            stream_of(reminder.subject), None,
            [NewEvent(T.REMINDER_DELIVERED, {"reminder_id": reminder.reminder_id,
                                             "channel": channel, "attempt": attempt})],
            self._context(self.store.new_id()))

    def failed(self, reminder: Reminder, channel: str, error: str, now: datetime
               ) -> AppendResult:
        attempt = reminder.attempts.get(channel, 0) + 1
        retry_at = (now + backoff(attempt)).isoformat()
        return self.store.append(
            stream_of(reminder.subject), None,
            [NewEvent(T.REMINDER_DELIVERY_FAILED, {
                "reminder_id": reminder.reminder_id, "channel": channel, "attempt": attempt,
                "error": error[:500], "retry_at": retry_at})],
            self._context(self.store.new_id()))


def _scheduler(store: EventStore, user: str | None) -> User:
    actor = fold_study(store.read_stream(STUDY_STREAM)).user(user)
    if actor.role != "scheduler":
        raise RuleViolation(f"User {actor.name} has role {actor.role}; only a user with the "
                            "scheduler role issues and delivers reminders.", rule="role",
                            field="user")
    return actor
