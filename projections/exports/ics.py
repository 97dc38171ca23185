"""iCalendar (RFC 5545) export of one subject's visit calendar.

One VEVENT per planned visit of `workflow.schedule.planned_visits` (screening, anchored on
consent; D0, once the lymphodepletion regimen is complete; the follow-up visits, once
infused), all-day on the target date (`DTSTART;VALUE=DATE`, `DTEND` the next day), the
window and the recorded status in DESCRIPTION. Dates are the site's calendar dates, so they
are floating dates with no time zone. `UID` is `VISIT.SUBJECT@REGISTRY.trialflow`: the same
visit keeps its UID when its date moves (a corrected infusion), so a calendar updates it.
`DTSTAMP` is the `recorded_at` of the subject's last exported event (no wall-clock time);
`SEQUENCE` counts the corrections and voids of the subject's infusions, the only records
whose mending moves planned dates (every follow-up visit is anchored on D0), so a calendar
that already holds an event knows the new one supersedes it.

Text values are escaped (backslash, semicolon, comma, newline) and lines folded at 75 octets
with CRLF line ends, as RFC 5545 section 3.1 and 3.3.11 require.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Final

from projections.exports.snapshot import Snapshot
from workflow import event_types as T
from workflow.errors import InvalidInput
from workflow.schedule import INFUSION, SCREENING, planned_visits

PRODID: Final = "-//trialflow//IM19 visit calendar//EN"
LINE_OCTETS: Final = 75


def escape_text(text: str) -> str:
    """RFC 5545 TEXT: backslash, semicolon and comma escaped, newlines as \\n."""
    return (text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n"))


def fold(line: str) -> str:
    """One content line folded to lines of at most 75 octets (never inside a character)."""
    out: list[str] = []
    current, size, limit = "", 0, LINE_OCTETS
    for char in line:
        width = len(char.encode("utf-8"))
        if size + width > limit:
            out.append(current)
            current, size, limit = " ", 1, LINE_OCTETS  # a continuation starts with a space
        current += char
        size += width
    out.append(current)
    return "\r\n".join(out) + "\r\n"


def _utc_stamp(recorded_at: str) -> str:
    moment = datetime.fromisoformat(recorded_at.replace("Z", "+00:00"))
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _label(row: dict[str, Any]) -> str:
    visit = row["visit"]
    if visit == SCREENING:
        return "Screening: eligibility to be confirmed within the window after consent"
    if visit == INFUSION:
        return "CAR-T infusion (D0), in the window after the last lymphodepletion dose"
    days = (date.fromisoformat(row["window_end"]) - date.fromisoformat(row["target_date"])).days
    return f"Follow-up visit {visit}: study day {row['target_day']} ± {days} days"


def _status(row: dict[str, Any]) -> str:
    if row["recorded_status"] == "done":
        return f"Done on {row['done_on']}."
    if row["recorded_status"] == "missed":
        note = f": {row['missed_note']}" if row.get("missed_note") else ""
        return f"Missed ({row['missed_reason'].replace('_', ' ')}{note})."
    return "Not recorded yet."


def build_ics(snapshot: Snapshot, subject: str) -> bytes:
    """The visit calendar of `subject`; an unknown or unconsented subject is refused."""
    state = snapshot.subjects.get(subject)
    if state is None:
        raise InvalidInput(f"Subject {subject} is not known at this point of the log: it has no "
                           "consent recorded.", field="subject", subject=subject)
    registry = snapshot.registry_id
    stamp = _utc_stamp(snapshot.streams[subject][-1].recorded_at)
    calendar = f"{subject} visits ({registry})"
    stream = snapshot.streams[subject]
    infusions = {event.position for event in stream if event.type == T.INFUSION_GIVEN}
    moves = sum(1 for event in stream if event.type in (T.FORM_CORRECTED, T.RECORD_VOIDED)
                and event.payload.get("target_position") in infusions)
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "CALSCALE:GREGORIAN",
             "METHOD:PUBLISH", f"X-WR-CALNAME:{escape_text(calendar)}"]
    for row in planned_visits(state, snapshot.study.protocol_of):
        start = date.fromisoformat(row["target_date"])
        summary = f"{subject} {row['visit']}"
        description = (f"{_label(row)}. Window {row['window_start']} to {row['window_end']}. "
                       f"{_status(row)}")
        lines += [
            "BEGIN:VEVENT",
            f"UID:{row['visit']}.{subject}@{registry}.trialflow",
            f"DTSTAMP:{stamp}",
            f"SEQUENCE:{moves if row['anchor'] == 'D0' else 0}",
            f"DTSTART;VALUE=DATE:{start.strftime('%Y%m%d')}",
            f"DTEND;VALUE=DATE:{(start + timedelta(days=1)).strftime('%Y%m%d')}",
            f"SUMMARY:{escape_text(summary)}",
            f"DESCRIPTION:{escape_text(description)}",
            "TRANSP:TRANSPARENT",
            "END:VEVENT",
        ]
    lines.append("END:VCALENDAR")
    return "".join(fold(line) for line in lines).encode("utf-8")
