"""Decisions of the scheduler's messages, each to `reminders-SUBJECT` (so a scheduler never
conflicts with a coordinator's append): issue a reminder once its due time has come by the
executor's clock (itself never ahead of the database's), cancel one, record a delivery or a
failed attempt with its backoff. Issue-once is the database's: the scheduler sends
`IssueReminder` with a command id derived from the obligation's key."""

from __future__ import annotations

from datetime import datetime

from events.envelope import NewEvent
from events.streams import reminders_stream
from workflow import event_types as T
from workflow.commands.decision import Context, Decision, decided
from workflow.commands.messages import (
    CancelReminder,
    IssueReminder,
    RecordDelivery,
    RecordDeliveryFailure,
)
from workflow.errors import InvalidInput, RuleViolation
from workflow.reminders import KINDS, Obligation, Reminder, backoff


def issue(m: IssueReminder, c: Context) -> Decision:
    if m.kind not in KINDS:
        raise InvalidInput(f"Reminder kind {m.kind!r} is not one of {', '.join(KINDS)}.",
                           field="kind")
    try:
        due = datetime.fromisoformat(m.due_at)
    except ValueError:
        raise InvalidInput(f"due_at {m.due_at!r} is not an ISO 8601 time.",
                           field="due_at") from None
    if due.tzinfo is None or due > c.now:
        raise RuleViolation(f"The reminder {m.kind} of subject {m.subject} is due at {m.due_at}, "
                            f"after now ({c.now.isoformat()}); a reminder is never issued "
                            "before it is due.", rule="reminder_not_due", subject=m.subject,
                            field="due_at")
    obligation = Obligation(m.subject, m.obligation, m.kind, m.due_at, m.detail, m.generation)
    earlier = c.reminders.get(obligation.reminder_id)
    if earlier is not None:
        raise RuleViolation(f"Reminder {obligation.reminder_id} of subject {m.subject} is "
                            "already issued.", rule="reminder_issued", subject=m.subject)
    return decided(reminders_stream(m.subject), [NewEvent(
        T.REMINDER_ISSUED, obligation.payload(), occurred_at=m.due_at)],
        {"reminder_id": obligation.reminder_id, "subject": m.subject})


def cancel(m: CancelReminder, c: Context) -> Decision:
    reminder = _issued(m.subject, m.reminder_id, c)
    if reminder.cancelled is not None:
        raise RuleViolation(f"Reminder {m.reminder_id} is already cancelled.",
                            rule="reminder_cancelled", subject=m.subject)
    return decided(reminders_stream(m.subject), [NewEvent(T.REMINDER_CANCELLED, {
        "reminder_id": m.reminder_id, "reason": m.reason})],
        {"reminder_id": m.reminder_id, "cancelled": True})


def delivered(m: RecordDelivery, c: Context) -> Decision:
    reminder = _issued(m.subject, m.reminder_id, c)
    attempt = reminder.attempts.get(m.channel, 0) + 1
    return decided(reminders_stream(m.subject), [NewEvent(T.REMINDER_DELIVERED, {
        "reminder_id": m.reminder_id, "channel": m.channel, "attempt": attempt})],
        {"reminder_id": m.reminder_id, "channel": m.channel, "attempt": attempt})


def delivery_failed(m: RecordDeliveryFailure, c: Context) -> Decision:
    reminder = _issued(m.subject, m.reminder_id, c)
    attempt = reminder.attempts.get(m.channel, 0) + 1
    retry_at = (c.now + backoff(attempt)).isoformat()
    return decided(reminders_stream(m.subject), [NewEvent(T.REMINDER_DELIVERY_FAILED, {
        "reminder_id": m.reminder_id, "channel": m.channel, "attempt": attempt,
        "error": m.error[:500], "retry_at": retry_at})],
        {"reminder_id": m.reminder_id, "channel": m.channel, "attempt": attempt,
         "retry_at": retry_at})


def _issued(subject: str, reminder_id: str, c: Context) -> Reminder:
    reminder = c.reminders.get(reminder_id)
    if reminder is None:
        raise InvalidInput(f"Subject {subject} has no reminder {reminder_id}.",
                           field="reminder_id", subject=subject)
    return reminder
