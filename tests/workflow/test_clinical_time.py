"""One rule for clinical date-times (issue 15; workflow/clinical_time.py, docs/cli.md "Dates and
times"): ISO 8601 with a time of day; with an offset that instant, without one the local time
at the subject's site; a bare date is refused. `infuse --at` and a form's date-time fields
(`awareness_at`, `sponsor_aware_at`, `sent_at`, a corrected `infused_at`) follow it alike.
Through the one executor on SQLite and PostgreSQL; refusals write nothing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, Desk, new_study, on_day, through_infusion
from workflow.clinical_time import NotADateTime, parse_datetime, site_time
from workflow.commands import messages as M
from workflow.errors import InvalidInput

START = date(2025, 1, 6)
D0 = date(2025, 2, 5)
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-03-01T09:30+08:00", datetime(2025, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=8)))),
    ("2025-03-01T01:30Z", datetime(2025, 3, 1, 1, 30, tzinfo=UTC)),
    ("2025-03-01 09:30:15+0800", datetime(2025, 3, 1, 9, 30, 15,
                                          tzinfo=timezone(timedelta(hours=8)))),
    ("2025-03-01T09:30", datetime(2025, 3, 1, 9, 30)),
    (" 2025-03-01T09:30:00.5 ", datetime(2025, 3, 1, 9, 30, 0, 500000)),
])
def test_an_iso_date_time_is_read_with_or_without_offset(text: str, expected: datetime) -> None:
    moment = parse_datetime(text)
    assert moment == expected
    assert (moment.utcoffset() is None) == (expected.utcoffset() is None)


@pytest.mark.parametrize("text", ["2025-03-01", "2025-03-01T09", "yesterday", "",
                                  "2025-03-01T25:00", "2025-03-01T09:30+25:00",
                                  "2025-03-01T09:30 Asia/Shanghai", "20250301T0930"])
def test_a_bare_date_or_anything_else_is_no_date_time(text: str) -> None:
    with pytest.raises(NotADateTime):
        parse_datetime(text)


def test_a_time_without_offset_is_local_at_the_site_daylight_saving_included() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert site_time(datetime(2025, 1, 15, 9, 30), berlin).isoformat() == \
        "2025-01-15T09:30:00+01:00"
    assert site_time(datetime(2025, 7, 15, 9, 30), berlin).isoformat() == \
        "2025-07-15T09:30:00+02:00"
    # 02:30 does not exist on 2025-03-30 in Berlin: moved forward by the gap
    assert site_time(datetime(2025, 3, 30, 2, 30), berlin).isoformat() == \
        "2025-03-30T03:30:00+02:00"
    typed = datetime(2025, 7, 15, 9, 30, tzinfo=UTC)
    assert site_time(typed, berlin) is typed  # with an offset: that instant, as typed


@pytest.fixture
def desk(db_url: str) -> tuple[Desk, FakeClock]:
    clock = FakeClock(datetime(2025, 1, 6, 4, tzinfo=UTC))
    flow = new_study(db_url, clock)
    assert through_infusion(flow, "S-001", START, clock) == D0
    return flow, clock


def test_infuse_at_a_time_without_offset_is_site_time(db_url: str) -> None:
    clock = FakeClock(datetime(2025, 1, 6, 4, tzinfo=UTC))
    flow = new_study(db_url, clock)
    through_infusion(flow, "S-001", START, clock)  # at 10:00+08:00
    assert flow.subject("S-001").infused_at == "2025-02-05T10:00:00+08:00"
    assert M.Infuse("S-002", parse_datetime("2025-02-05T10:00"), 1e8, "C").at.tzinfo is None


def test_a_form_date_time_without_offset_is_site_time(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, D0 + timedelta(days=1))
    outcome = flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=fever", "category=other", f"onset_date={D0 + timedelta(days=1)}", "grade=3",
        "serious_criteria=hospitalisation", "awareness_at=2025-02-06T09:30",
        "sponsor_aware_at=2025-02-06T01:45Z")))
    values = outcome.summary["values"]
    assert values["awareness_at"] == "2025-02-06T09:30:00+08:00"  # local time at PKU3
    assert values["sponsor_aware_at"] == "2025-02-06T01:45:00+00:00"  # the instant typed
    (form,) = [f for f in flow.subject("S-001").forms.values() if f.form == "adverse_event"]
    assert form.values["awareness_at"] == "2025-02-06T09:30:00+08:00"
    report = flow.send(COORDINATOR, M.RecordForm("S-001", "sae_report", (
        f"ae_position={outcome.result.positions[0]}", "report_kind=initial",
        "sent_at=2025-02-06T20:00")))
    assert report.summary["values"]["sent_at"] == "2025-02-06T20:00:00+08:00"


def test_a_corrected_date_time_without_offset_is_site_time(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, D0 + timedelta(days=2))
    outcome = flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=fever", f"onset_date={D0 + timedelta(days=1)}", "grade=1",
        "awareness_at=2025-02-06T09:30+08:00")))
    position = outcome.result.positions[0]
    correction = flow.send(COORDINATOR, M.CorrectRecord(
        "S-001", position, ("awareness_at=2025-02-06T11:00",), "time misread"))
    assert correction.summary["changes"] == {"awareness_at": "2025-02-06T11:00:00+08:00"}
    infusion = flow.subject("S-001").infusion
    assert infusion is not None
    moved = flow.send(COORDINATOR, M.CorrectRecord(
        "S-001", infusion.position, ("infused_at=2025-02-05T14:00",), "time misread"))
    assert moved.result.positions
    assert flow.subject("S-001").infused_at == "2025-02-05T14:00:00+08:00"


def test_a_bare_date_where_a_time_is_expected_is_refused(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, D0 + timedelta(days=2))
    before = flow.store.last_position()
    with pytest.raises(InvalidInput) as caught:
        flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
            "term=fever", f"onset_date={D0 + timedelta(days=1)}", "grade=1",
            "awareness_at=2025-02-06")))
    assert caught.value.field == "awareness_at"
    assert "a date alone is not a time" in caught.value.message
    assert flow.store.last_position() == before
