"""Study days (D0 = infusion), visit windows and statuses, the infusion window."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow.errors import InvalidInput
from workflow.instruments.codes import VISITS
from workflow.instruments.study_days import (
    DEFAULT_VISIT_SCHEDULE,
    date_of_day,
    infusion_window,
    study_day,
    visit_status,
    visit_window,
    visit_windows,
)

D0 = date(2025, 3, 10)


@pytest.mark.parametrize(("on", "day"), [
    (date(2025, 3, 10), 0), (date(2025, 3, 11), 1), (date(2025, 3, 9), -1),
    (date(2025, 3, 5), -5), (date(2025, 4, 7), 28), (date(2026, 3, 5), 360),
])
def test_study_day_of_a_date(on: date, day: int) -> None:
    assert study_day(D0, on) == day
    assert date_of_day(D0, day) == on


def test_leap_day_is_counted() -> None:
    assert study_day(date(2024, 2, 28), date(2024, 3, 1)) == 2


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 1, 1)),
       st.integers(min_value=-3650, max_value=3650))
def test_day_and_date_round_trip(infusion: date, day: int) -> None:
    assert study_day(infusion, date_of_day(infusion, day)) == day


def test_schedule_has_every_visit_code_in_order() -> None:
    assert tuple(DEFAULT_VISIT_SCHEDULE) == VISITS


@pytest.mark.parametrize(("visit", "start", "target", "end"), [
    ("D1", date(2025, 3, 11), date(2025, 3, 11), date(2025, 3, 11)),
    ("D28", date(2025, 4, 5), date(2025, 4, 7), date(2025, 4, 9)),
    ("D90", date(2025, 6, 1), date(2025, 6, 8), date(2025, 6, 15)),
    ("D360", date(2026, 2, 19), date(2026, 3, 5), date(2026, 3, 19)),
])
def test_visit_windows(visit: str, start: date, target: date, end: date) -> None:
    window = visit_window(D0, visit)
    assert (window.window_start, window.target_date, window.window_end) == (start, target, end)


def test_all_windows_are_returned_in_order() -> None:
    windows = visit_windows(D0)
    assert [w.visit for w in windows] == list(VISITS)
    assert windows[4].window_days == 2


@pytest.mark.parametrize(("today", "status"), [
    (date(2025, 4, 4), "upcoming"), (date(2025, 4, 5), "due"), (date(2025, 4, 9), "due"),
    (date(2025, 4, 10), "overdue"),
])
def test_visit_status_by_today(today: date, status: str) -> None:
    assert visit_status(visit_window(D0, "D28"), today=today).status == status


def test_done_inside_and_outside_the_window() -> None:
    window = visit_window(D0, "D28")
    inside = visit_status(window, today=date(2025, 5, 1), done_on=date(2025, 4, 9))
    assert (inside.status, inside.outside_window) == ("done", False)
    outside = visit_status(window, today=date(2025, 5, 1), done_on=date(2025, 4, 10))
    assert (outside.status, outside.outside_window) == ("done", True)
    assert "deviation" in outside.explanation


def test_missed_when_recorded_or_when_the_next_visit_is_done() -> None:
    window = visit_window(D0, "D28")
    assert visit_status(window, today=date(2025, 4, 6), missed=True).status == "missed"
    assert visit_status(window, today=date(2025, 4, 20), next_visit_done=True).status == "missed"


def test_infusion_window_is_2_to_7_days_after_the_last_dose() -> None:
    window = infusion_window(date(2025, 3, 7))
    assert (window.earliest, window.latest) == (date(2025, 3, 9), date(2025, 3, 14))


@pytest.mark.parametrize(("call", "field"), [
    (lambda: study_day(datetime(2025, 3, 10, 8), D0), "infusion_date"),
    (lambda: study_day(D0, "2025-03-11"), "date"),  # type: ignore[arg-type]
    (lambda: date_of_day(D0, 2.5), "day"),  # type: ignore[arg-type]
    (lambda: date_of_day(D0, 10**6), "day"),
    (lambda: date_of_day(date(1, 1, 2), -5), "day"),
    (lambda: visit_window(D0, "D30"), "visit"),
    (lambda: infusion_window(D0, min_days=5, max_days=3), "max_days"),
])
def test_bad_inputs_are_refused(call: object, field: str) -> None:
    assert callable(call)
    with pytest.raises(InvalidInput) as caught:
        call()
    assert caught.value.field == field


def test_default_window_list_matches_the_rules() -> None:
    assert DEFAULT_VISIT_SCHEDULE["D180"] == (180, 14)
    assert visit_window(D0, "D180").window_end - visit_window(D0, "D180").window_start == (
        timedelta(days=28)
    )
