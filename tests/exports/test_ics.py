"""`trialflow export ics SUBJECT`: RFC 5545 as `icalendar` parses it, one all-day event per
planned visit, stable UIDs when the dates move."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import icalendar

from projections.exports.ics import escape_text, fold
from tests.exports.support import cli, store_of
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, open_desk
from workflow.commands import messages as M
from workflow.schedule import planned_visits
from workflow.study import fold_study
from workflow.subject import fold_subject


def export(db: str, tmp_path: Path, subject: str = "S-001") -> tuple[bytes, icalendar.Calendar]:
    out = tmp_path / f"{subject}.ics"
    status, _, err = cli(db, "export", "ics", subject, "--out", str(out))
    assert status == 0, err
    raw = out.read_bytes()
    return raw, icalendar.Calendar.from_ical(raw)


def events_of(calendar: icalendar.Calendar) -> dict[str, icalendar.Event]:
    return {str(event["UID"]): event for event in calendar.walk("VEVENT")}


def test_one_all_day_event_per_planned_visit(db: str, tmp_path: Path) -> None:
    raw, calendar = export(db, tmp_path)
    store = store_of(db)
    state = fold_subject("S-001", store.read_stream("S-001"))
    planned = planned_visits(state, fold_study(store.read_stream("study")).protocol_of)
    events = events_of(calendar)
    assert len(planned) == len(events) == 14  # screening, D0, twelve follow-up visits
    for row in planned:
        event = events[f"{row['visit']}.S-001@NCT06513429.trialflow"]
        start, end = event["DTSTART"].dt, event["DTEND"].dt
        assert type(start) is date and start.isoformat() == row["target_date"]
        assert end - start == timedelta(days=1)
        description = str(event["DESCRIPTION"])
        assert f"Window {row['window_start']} to {row['window_end']}" in description
        assert str(event["SUMMARY"]) == f"S-001 {row['visit']}"
    assert str(events["D28.S-001@NCT06513429.trialflow"]["DESCRIPTION"]).startswith(
        "Follow-up visit D28: study day 28 ± 2 days")
    assert str(calendar["VERSION"]) == "2.0" and calendar["PRODID"]
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) <= 75 for line in lines)
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_uids_stay_when_a_corrected_infusion_moves_the_dates(db: str, tmp_path: Path) -> None:
    _, before = export(db, tmp_path)
    flow = open_desk(db, FakeClock(datetime.now(UTC)))
    infusion = flow.subject("S-001").infusion
    assert infusion is not None
    later = datetime.fromisoformat("2025-02-06T09:00:00+08:00")
    flow.send(COORDINATOR, M.CorrectRecord("S-001", infusion.position,
                                           (f"infused_at={later.isoformat()}",),
                                           "infusion time transcribed from the wrong day"))
    flow.store.engine.dispose()
    _, after = export(db, tmp_path)
    old, new = events_of(before), events_of(after)
    assert set(old) == set(new)
    uid = "D28.S-001@NCT06513429.trialflow"
    assert new[uid]["DTSTART"].dt == old[uid]["DTSTART"].dt + timedelta(days=1)
    assert new[uid]["DTSTAMP"].dt >= old[uid]["DTSTAMP"].dt
    assert (int(old[uid]["SEQUENCE"]), int(new[uid]["SEQUENCE"])) == (0, 1)
    screening = "screening.S-001@NCT06513429.trialflow"
    assert new[screening]["DTSTART"].dt == old[screening]["DTSTART"].dt
    assert int(new[screening]["SEQUENCE"]) == 0


def test_an_unknown_subject_is_refused(db: str, tmp_path: Path) -> None:
    status, _, err = cli(db, "export", "ics", "S-404", "--out", str(tmp_path / "x.ics"))
    assert status == 2 and "S-404" in err
    assert not (tmp_path / "x.ics").exists()


def test_text_is_escaped_and_folded_on_character_boundaries() -> None:
    text = "a;b,c\\d\nµ" * 20
    line = f"DESCRIPTION:{escape_text(text)}"
    folded = fold(line).encode("utf-8")
    assert all(len(part) <= 75 for part in folded.split(b"\r\n"))
    parsed = icalendar.Calendar.from_ical(
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n" + folded + b"END:VEVENT\r\nEND:VCALENDAR\r\n")
    assert str(parsed.walk("VEVENT")[0]["DESCRIPTION"]) == text
