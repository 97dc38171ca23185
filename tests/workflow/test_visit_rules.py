"""Follow-up visits (issue 15): a visit done outside its window is accepted and the decision
says so at once (`warnings`, naming the window and the deviation it makes); a visit is marked
missed only once its window has closed (judged on today at the site), and only with a reason,
which the event keeps. On SQLite and PostgreSQL, through the one executor; every refusal
writes nothing.

Dates: consent 2025-01-06, infusion (D0) 2025-02-05 at PKU3 (Asia/Shanghai). Windows under
protocol version 2: D1 2025-02-06 (±0), D7 2025-02-11..2025-02-13, D14 2025-02-17..2025-02-21.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    Desk,
    new_study,
    on_day,
    refused,
    through_infusion,
)
from workflow.commands import messages as M
from workflow.deviations import VISIT_OUT_OF_WINDOW, deviations
from workflow.errors import InvalidInput
from workflow.schedule import planned_visits, visit_window

START = date(2025, 1, 6)
D0 = date(2025, 2, 5)


@pytest.fixture
def desk(db_url: str) -> tuple[Desk, FakeClock]:
    clock = FakeClock(datetime(2025, 1, 6, 4, tzinfo=UTC))
    flow = new_study(db_url, clock)
    assert through_infusion(flow, "S-001", START, clock) == D0
    return flow, clock


def row(flow: Desk, visit: str) -> dict[str, object]:
    state = flow.subject("S-001")
    return next(r for r in planned_visits(state, flow.study().protocol_of)
                if r["visit"] == visit)


def test_the_window_is_the_schedule_s_own(desk: tuple[Desk, FakeClock]) -> None:
    """`visit_window` is the arithmetic the schedule rows and the deviations use."""
    flow, _ = desk
    state = flow.subject("S-001")
    protocol = flow.study().protocol_of(state.protocol_version)
    for code in ("D1", "D7", "D14", "D360"):
        window = visit_window(state, protocol, code)
        assert window is not None
        planned = row(flow, code)
        assert (window.window_start.isoformat(), window.window_end.isoformat()) == (
            planned["window_start"], planned["window_end"])
    assert visit_window(state, protocol, "D999") is None


def test_a_visit_done_outside_its_window_is_accepted_with_a_warning(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    late = date(2025, 2, 23)  # D14 window 2025-02-17..2025-02-21: two days after it closed
    on_day(clock, late + timedelta(days=5))  # entered later: judged on the visit's date
    outcome = flow.send(COORDINATOR, M.RecordVisit("S-001", "D14", "done", late))
    assert outcome.result.positions  # accepted and written
    (warning,) = outcome.summary["warnings"]
    for word in ("Subject S-001", "visit D14", "2025-02-23", "2 days after its window closed",
                 "window 2025-02-17 to 2025-02-21", VISIT_OUT_OF_WINDOW):
        assert word in warning, (word, warning)
    assert warning.count(".") == 1 and warning.endswith(".")  # one sentence
    state = flow.subject("S-001")
    assert state.visits["D14"] == ("done", late)
    found = [d for d in deviations(state, flow.study().protocol_of)
             if d["kind"] == VISIT_OUT_OF_WINDOW]
    assert [(d["visit"], d["position"], d["on"]) for d in found] == [
        ("D14", outcome.result.positions[0], "2025-02-23")]  # the deviation the warning named
    assert "window 2025-02-17 to 2025-02-21" in found[0]["detail"]


def test_a_visit_done_before_its_window_opened_is_warned_of_too(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    early = date(2025, 2, 10)  # D7 window opens 2025-02-11
    on_day(clock, early)
    outcome = flow.send(COORDINATOR, M.RecordVisit("S-001", "D7", "done",
                                                   reason="only day the subject could come"))
    (warning,) = outcome.summary["warnings"]
    assert "1 day before its window opened" in warning, warning
    assert "window 2025-02-11 to 2025-02-13" in warning, warning
    state = flow.subject("S-001")
    assert state.visit_records["D7"].reason == "only day the subject could come"
    (deviation,) = [d for d in deviations(state, flow.study().protocol_of)
                    if d["kind"] == VISIT_OUT_OF_WINDOW]
    assert "reason recorded: only day the subject could come" in deviation["detail"]


def test_a_visit_done_in_its_window_has_no_warning(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, date(2025, 2, 21))
    for visit, day in (("D7", date(2025, 2, 11)), ("D14", date(2025, 2, 21))):  # both bounds
        outcome = flow.send(COORDINATOR, M.RecordVisit("S-001", visit, "done", day))
        assert "warnings" not in outcome.summary, outcome.summary
    assert [d for d in deviations(flow.subject("S-001"), flow.study().protocol_of)
            if d["kind"] == VISIT_OUT_OF_WINDOW] == []


def test_a_visit_cannot_be_marked_missed_before_its_window_closes(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    missed = M.RecordVisit("S-001", "D7", "missed", reason="subject in hospital")
    for today in (date(2025, 2, 6), date(2025, 2, 12), date(2025, 2, 13)):  # before, in, last day
        on_day(clock, today)
        refused(flow, COORDINATOR, missed, "visit_window_open", "Subject S-001", "visit D7",
                "2025-02-13", "record it missed from 2025-02-14")
    on_day(clock, date(2025, 2, 13))
    # a date in the past changes nothing: the window is judged on today at the site
    refused(flow, COORDINATOR, M.RecordVisit("S-001", "D7", "missed", date(2025, 2, 8),
                                             "subject in hospital"),
            "visit_window_open", "2025-02-13")
    clock.set(datetime(2025, 2, 13, 15, 59, tzinfo=UTC))  # 23:59 on 2025-02-13 at the site
    refused(flow, COORDINATOR, missed, "visit_window_open", "today at the site is 2025-02-13")
    clock.set(datetime(2025, 2, 13, 16, 0, tzinfo=UTC))  # midnight: 2025-02-14 at the site
    outcome = flow.send(COORDINATOR, missed)
    assert "warnings" not in outcome.summary
    state = flow.subject("S-001")
    assert state.visits["D7"] == ("missed", date(2025, 2, 14))
    assert state.visit_records["D7"].reason == "subject in hospital"  # the event's reason
    d7 = row(flow, "D7")
    assert (d7["recorded_status"], d7["missed_reason"], d7["missed_note"]) == (
        "missed", "recorded", "subject in hospital")


def test_a_missed_visit_needs_a_reason(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, date(2025, 2, 20))  # D7's window has closed
    before = flow.store.last_position()
    for reason in (None, "", "   "):
        with pytest.raises(InvalidInput) as caught:
            flow.send(COORDINATOR, M.RecordVisit("S-001", "D7", "missed", reason=reason))
        assert caught.value.field == "reason"
        assert "needs --reason" in caught.value.message
    assert flow.store.last_position() == before
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D7", "missed", reason="  lost contact  "))
    assert flow.subject("S-001").visit_records["D7"].reason == "lost contact"


def test_a_done_visit_may_go_without_a_reason(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, date(2025, 2, 6))
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D1", "done"))
    record = flow.subject("S-001").visit_records["D1"]
    assert (record.payload["status"], record.reason) == ("done", None)
