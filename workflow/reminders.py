"""Reminders: which obligations are due at a moment, their ids, and the fold of a subject's
`reminders-SUBJECT` stream. Pure functions; the scheduler (projections/scheduler.py) issues,
cancels and delivers.

An obligation is (subject, obligation with its target, kind), e.g. (S-001, `visit:D28@2025-
03-05`, `due`) or (S-001, `sae:123`, `sae_report_overdue`) (docs/design.md "Reminders"). Its
reminder id is a UUID derived from that key, and the scheduler appends `ReminderIssued` with a
command id derived from it: the database keeps command ids unique, so a reminder is issued
once whatever the number of schedulers, retries or restarts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from events.envelope import RecordedEvent
from workflow import event_types as T

KINDS: Final = ("window_opening", "due", "overdue", "sae_report_due", "sae_report_overdue",
                "expedited_7d", "expedited_15d", "screening_expiring")
NAMESPACE: Final = uuid.UUID("6f1d1c5e-3b7a-4c1e-9a58-2f0b7d9e4a10")  # trialflow reminders
BACKOFF_FIRST: Final = timedelta(minutes=1)
BACKOFF_MAX: Final = timedelta(hours=1)


@dataclass(frozen=True)
class Obligation:
    subject: str
    obligation: str
    kind: str
    due_at: str  # ISO 8601 with offset
    detail: str
    generation: int = 0  # how many reminders of this key were cancelled before this one

    @property
    def key(self) -> str:
        key = f"{self.subject}|{self.obligation}|{self.kind}"
        return key if self.generation == 0 else f"{key}#{self.generation}"

    @property
    def reminder_id(self) -> str:
        return str(uuid.uuid5(NAMESPACE, self.key))

    def payload(self) -> dict[str, Any]:
        return {"reminder_id": self.reminder_id, "subject": self.subject,
                "obligation": self.obligation, "kind": self.kind, "due_at": self.due_at,
                "detail": self.detail}


def _start_of(day: str, zone: ZoneInfo) -> str:
    return datetime.combine(date.fromisoformat(day), time(0), zone).isoformat()


# Source: docs/clinical-rules.md "Study days" (windows); docs/design.md "Reminders" (kinds).
def visit_obligations(visits: Iterable[Mapping[str, Any]], zones: Mapping[str, ZoneInfo]
                      ) -> list[Obligation]:
    """The reminders due today of each visit row (`workflow.schedule.visit_state` output):
    due at the start of their day in the site's calendar."""
    out = []
    for row in visits:
        zone = zones[row["subject"]]
        for due in row["reminders_due"]:
            out.append(Obligation(
                row["subject"], due["obligation"], due["kind"], _start_of(due["due_on"], zone),
                f"{row['visit']} window {row['window_start']} to {row['window_end']} "
                f"(target {row['target_date']}): {due['kind'].replace('_', ' ')}."))
    return out


def planned_obligations(visits: Iterable[Mapping[str, Any]],
                        clocks: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(subject, obligation) of everything still planned: a reminder for anything else is
    obsolete (e.g. a visit whose target date moved with a corrected infusion date)."""
    planned = {(row["subject"], f"visit:{row['visit']}@{row['target_date']}")
               for row in visits if row["visit"] != "screening"}
    planned |= {(row["subject"], f"screening:{row['target_date']}")
                for row in visits if row["visit"] == "screening"}
    planned |= {(c["subject"], f"sae:{c['ae_position']}") for c in clocks}
    return planned


# Source: docs/clinical-rules.md "Adverse events" (24 h report; 7/15-day expedited, ICH E2A).
def sae_obligations(clocks: Iterable[Mapping[str, Any]]) -> list[Obligation]:
    """From `workflow.safety.clock_state` rows: a running 24-hour clock is `sae_report_due`,
    or `sae_report_overdue` once past due; a running expedited clock is `expedited_7d` or
    `expedited_15d` (the complete report of a fatal SUSAR counts as a 15-day deadline)."""
    out = []
    for c in clocks:
        if c["state"] == "stopped":
            continue
        obligation = f"sae:{c['ae_position']}"
        if c["clock"] == "sae_report":
            kind = "sae_report_overdue" if c["state"] == "overdue" else "sae_report_due"
            due_at = c["due_at"] if kind == "sae_report_overdue" else c["starts_at"]
        else:
            kind = "expedited_7d" if c["clock"] == "expedited_7d" else "expedited_15d"
            obligation += "/complete" if c["clock"] == "expedited_complete" else ""
            due_at = c["starts_at"]
        out.append(Obligation(c["subject"], obligation, kind, due_at,
                              f"AE at position {c['ae_position']}: {c['clock']} report due by "
                              f"{c['due_at']} ({c['state']})."))
    return out


# --- the fold of a reminders stream -------------------------------------------------------


@dataclass
class Reminder:
    reminder_id: str
    subject: str
    obligation: str
    kind: str
    due_at: str
    detail: str
    issued_at: str
    position: int
    cancelled: str | None = None  # the reason
    delivered: dict[str, str] = field(default_factory=dict)  # channel -> recorded_at
    attempts: dict[str, int] = field(default_factory=dict)  # channel -> failed attempts
    retry_at: dict[str, str] = field(default_factory=dict)  # channel -> next attempt
    last_error: dict[str, str] = field(default_factory=dict)

    def state(self, channels: Sequence[str]) -> str:
        if self.cancelled is not None:
            return "cancelled"
        if all(c in self.delivered for c in channels):
            return "delivered"
        return "failed" if self.attempts else "issued"

    def to_json(self, channels: Sequence[str]) -> dict[str, Any]:
        return {"id": self.reminder_id, "subject": self.subject,
                "obligation": self.obligation, "kind": self.kind, "due_at": self.due_at,
                "state": self.state(channels), "issued_at": self.issued_at,
                "position": self.position, "detail": self.detail,
                "delivered": dict(self.delivered), "failed_attempts": dict(self.attempts),
                "retry_at": dict(self.retry_at), "cancelled": self.cancelled}


def fold_reminders(events: Iterable[RecordedEvent],
                   into: dict[str, Reminder] | None = None) -> dict[str, Reminder]:
    """The reminders of `events` (one subject's stream, or several in position order),
    folded onto `into` when given (its reminders are updated in place)."""
    found: dict[str, Reminder] = {} if into is None else into
    for event in events:
        p = event.payload
        if event.type == T.REMINDER_ISSUED:
            found[p["reminder_id"]] = Reminder(
                p["reminder_id"], p["subject"], p["obligation"], p["kind"], p["due_at"],
                p["detail"], event.recorded_at, event.position)
            continue
        reminder = found.get(p.get("reminder_id", ""))
        if reminder is None:
            continue
        if event.type == T.REMINDER_CANCELLED:
            reminder.cancelled = p["reason"]
        elif event.type == T.REMINDER_DELIVERED:
            reminder.delivered[p["channel"]] = event.recorded_at
            reminder.retry_at.pop(p["channel"], None)
        elif event.type == T.REMINDER_DELIVERY_FAILED:
            reminder.attempts[p["channel"]] = int(p["attempt"])
            reminder.retry_at[p["channel"]] = p["retry_at"]
            reminder.last_error[p["channel"]] = p["error"]
    return found


def backoff(attempt: int) -> timedelta:
    """Wait before attempt `attempt + 1`: 1, 2, 4 … minutes, at most an hour; never give up."""
    wait: timedelta = BACKOFF_FIRST * (2 ** max(0, min(attempt - 1, 10)))
    return min(wait, BACKOFF_MAX)


def channels_due(reminder: Reminder, channels: Sequence[str], now: datetime) -> list[str]:
    """The channels this reminder still has to go out on at `now`."""
    if reminder.cancelled is not None:
        return []
    out = []
    for channel in channels:
        if channel in reminder.delivered:
            continue
        retry = reminder.retry_at.get(channel)
        if retry is None or datetime.fromisoformat(retry) <= now:
            out.append(channel)
    return out
