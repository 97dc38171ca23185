"""The visit schedule of one subject: planned rows (time-independent) and their state on a day.

`planned_visits` folds a `SubjectState` into one row per scheduled contact, in schedule order:
`screening` (anchored on consent), `D0` (the infusion, anchored on the last lymphodepletion
dose) and every follow-up visit of the protocol (anchored on D0). The rows hold only what the
log says, so a projection can store them; `visit_state` adds what depends on the day asked
about (status, days left, the reminders that apply), computed at query time, never stored.
Dates are the site's local calendar dates (ISO strings in the rows): a daylight-saving change
moves no study day.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

from workflow.instruments.study_days import VisitWindow as Window
from workflow.instruments.study_days import infusion_window, visit_status, visit_windows
from workflow.subject import SubjectState

if TYPE_CHECKING:  # only named in annotations: reads need no protocol parser
    from workflow.protocol import Protocol

SCREENING: Final = "screening"
INFUSION: Final = "D0"
ROW_KEYS: Final = (
    "subject", "visit", "anchor", "target_day", "target_date", "window_start", "window_end",
    "recorded_status", "done_on", "missed_reason", "missed_note", "protocol_version",
)
MISSED_REASONS: Final = ("recorded", "next_visit_done", "subject_exited")
REMINDER_KINDS: Final = ("window_opening", "due", "overdue", "screening_expiring")


def planned_visits(
    s: SubjectState, protocol_of: Callable[[int], Protocol]
) -> list[dict[str, Any]]:
    """The subject's schedule under its current protocol version, in schedule order.

    `screening` once consented; `D0` once the regimen's last lymphodepletion dose is recorded;
    the follow-up visits (D1 ... D360) once infused. A visit is `missed` when recorded so,
    when a later visit is recorded done (`next_visit_done`), or when the subject went off study
    before its window opened (`subject_exited`): such a visit will never happen, so it is
    closed here rather than left to turn overdue. A visit whose window had opened by the exit
    and that was not recorded keeps `recorded_status` None.
    """
    if s.consent is None or s.protocol_version is None:
        return []
    protocol = protocol_of(s.protocol_version)
    rows = [_screening_row(s, protocol)]
    if _regimen_complete(s, protocol):
        rows.append(_infusion_row(s, protocol))
    if s.infused_on is not None:
        rows.extend(_follow_up_rows(s, protocol, s.infused_on))
    return rows


def _row(s: SubjectState, visit: str, anchor: str, target_day: int | None, target: date,
         start: date, end: date) -> dict[str, Any]:
    return {
        "subject": s.subject, "visit": visit, "anchor": anchor, "target_day": target_day,
        "target_date": target.isoformat(), "window_start": start.isoformat(),
        "window_end": end.isoformat(), "recorded_status": None, "done_on": None,
        "missed_reason": None, "missed_note": None, "protocol_version": s.protocol_version,
    }


def _done(row: dict[str, Any], on: date) -> dict[str, Any]:
    return {**row, "recorded_status": "done", "done_on": on.isoformat()}


def _missed(row: dict[str, Any], reason: str, note: str | None = None) -> dict[str, Any]:
    """`reason` is why the row counts as missed (one of MISSED_REASONS); `note` the reason
    the user gave with `visit --missed --reason` (the event's `reason`; None for a visit
    recorded missed before reasons were required, and for the other MISSED_REASONS)."""
    return {**row, "recorded_status": "missed", "missed_reason": reason, "missed_note": note}


# Source: docs/clinical-rules.md, screening window (default 28 days after consent).
def _screening_row(s: SubjectState, protocol: Protocol) -> dict[str, Any]:
    assert s.consent is not None
    consented = s.consent.consent_date
    row = _row(s, SCREENING, "consent", None, consented, consented,
               consented + timedelta(days=protocol.screening_window_days))
    if s.eligibility_confirmed_on is not None:
        return _done(row, s.eligibility_confirmed_on)
    if s.exited_on is not None:
        return _missed(row, "subject_exited")
    return row


def _regimen_complete(s: SubjectState, protocol: Protocol) -> bool:
    """The regimen's last dose is recorded (or the infusion is, after a shorter old regimen)."""
    if not s.doses:
        return False
    return s.infusion is not None or len(s.doses) >= len(protocol.lymphodepletion.days)


# Source: docs/clinical-rules.md, lymphodepletion: infusion allowed 2-7 days after the last dose.
def _infusion_row(s: SubjectState, protocol: Protocol) -> dict[str, Any]:
    regimen = protocol.lymphodepletion
    window = infusion_window(s.doses[-1].on, min_days=regimen.infusion_window_min_days,
                             max_days=regimen.infusion_window_max_days)
    row = _row(s, INFUSION, "lymphodepletion", 0, window.earliest, window.earliest,
               window.latest)
    if s.infused_on is not None:
        return _done(row, s.infused_on)
    if s.exited_on is not None:
        return _missed(row, "subject_exited")
    return row


def schedule_of(protocol: Protocol) -> Mapping[str, tuple[int, int]]:
    """The protocol's follow-up visits as study_days expects them: code -> (day, ± days)."""
    return protocol.follow_up_schedule


# Source: docs/clinical-rules.md, follow-up visits: day ± window; missed if recorded or next done.
def _follow_up_rows(s: SubjectState, protocol: Protocol, d0: date) -> list[dict[str, Any]]:
    windows = visit_windows(d0, schedule=schedule_of(protocol))
    done = [i for i, w in enumerate(windows) if _recorded(s, w.visit) == "done"]
    last_done = done[-1] if done else -1
    rows = []
    for index, window in enumerate(windows):
        row = _row(s, window.visit, "D0", window.target_day, window.target_date,
                   window.window_start, window.window_end)
        rows.append(_follow_up_status(s, row, window, later_done=index < last_done))
    return rows


def visit_window(s: SubjectState, protocol: Protocol, visit: str) -> Window | None:
    """The window of follow-up visit `visit` under `protocol`, from the subject's D0 (the
    arithmetic of `_follow_up_rows`, `visit_windows`): None before the infusion or when
    that protocol version has no such visit."""
    if s.infused_on is None:
        return None
    schedule = schedule_of(protocol)
    if visit not in schedule:
        return None
    return next(w for w in visit_windows(s.infused_on, schedule=schedule) if w.visit == visit)


def _recorded(s: SubjectState, visit: str) -> str | None:
    record = s.visit_records.get(visit)
    return None if record is None else str(record.payload["status"])


def _follow_up_status(s: SubjectState, row: dict[str, Any], window: Window, *,
                      later_done: bool) -> dict[str, Any]:
    record = s.visit_records.get(window.visit)
    if record is not None and record.payload["status"] == "done":
        return _done(row, record.on)
    if record is not None:
        return _missed(row, "recorded", record.reason)
    if later_done:
        return _missed(row, "next_visit_done")
    if s.exited_on is not None and window.window_start > s.exited_on:
        return _missed(row, "subject_exited")
    return row


# --- the state of a row on a given day ----------------------------------------------------


# Source: docs/clinical-rules.md follow-up visits (statuses); docs/design.md "Reminders".
def visit_state(row: Mapping[str, Any], today: date, *, lead_days: int) -> dict[str, Any]:
    """The row with `status`, `outside_window`, `days_left` and `reminders_due` on `today`.

    `lead_days` is the protocol's lead for this row: `window_opening_lead_days` for a visit,
    `screening_expiring_lead_days` for the screening row.
    """
    window = _window_of(row)
    done_on = row.get("done_on")
    verdict = visit_status(
        window, today=today,
        done_on=None if done_on is None else date.fromisoformat(done_on),
        missed=row.get("recorded_status") == "missed",
    )
    days_left = (window.window_end - today).days if verdict.status == "due" else None
    reminders = (_screening_reminders(row, window, today, verdict.status, lead_days)
                 if row["visit"] == SCREENING
                 else _visit_reminders(row, window, today, verdict.status, lead_days))
    return {**row, "status": verdict.status, "outside_window": verdict.outside_window,
            "days_left": days_left, "reminders_due": reminders}


def _window_of(row: Mapping[str, Any]) -> Window:
    target = date.fromisoformat(row["target_date"])
    start = date.fromisoformat(row["window_start"])
    end = date.fromisoformat(row["window_end"])
    target_day = row.get("target_day")
    return Window(row["visit"], 0 if target_day is None else int(target_day),
                  (target - start).days, target, start, end)


def _reminder(kind: str, obligation: str, due_on: date) -> dict[str, Any]:
    return {"kind": kind, "obligation": obligation, "due_on": due_on.isoformat()}


def _visit_reminders(row: Mapping[str, Any], window: Window, today: date, status: str,
                     lead_days: int) -> list[dict[str, Any]]:
    obligation = f"visit:{row['visit']}@{row['target_date']}"
    opens_notice = window.window_start - timedelta(days=lead_days)
    if status == "upcoming" and opens_notice <= today:
        return [_reminder("window_opening", obligation, opens_notice)]
    if status == "due":
        return [_reminder("due", obligation, window.window_start)]
    if status == "overdue":
        return [_reminder("overdue", obligation, window.window_end + timedelta(days=1))]
    return []


def _screening_reminders(row: Mapping[str, Any], window: Window, today: date, status: str,
                         lead_days: int) -> list[dict[str, Any]]:
    """Only `screening_expiring`, from `lead_days` days before the window's last day (the
    protocol's "warn 7 days before the screening window closes"; `status` lists the subject
    from the same day): the window opens at consent (nothing to announce) and, once it
    closes, the coordinator records the screen failure, so neither an opening nor an overdue
    reminder is issued."""
    expiring_from = window.window_end - timedelta(days=lead_days)
    if status == "due" and lead_days > 0 and expiring_from <= today:
        return [_reminder("screening_expiring", f"screening:{row['target_date']}",
                          expiring_from)]
    return []
