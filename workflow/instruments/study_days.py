"""Study-day arithmetic: D0 is the infusion day; visit windows; the infusion window."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.sources import PROTOCOL_CALENDAR

DAY_LIMIT: Final = 3650

# Protocol default (docs/clinical-rules.md): visit -> (target study day, window ± days).
DEFAULT_VISIT_SCHEDULE: Final[Mapping[str, tuple[int, int]]] = {
    "D1": (1, 0), "D4": (4, 1), "D7": (7, 1), "D10": (10, 1), "D14": (14, 2),
    "D21": (21, 2), "D28": (28, 2), "D60": (60, 7), "D90": (90, 7), "D180": (180, 14),
    "D270": (270, 14), "D360": (360, 14),
}
DEFAULT_INFUSION_MIN_DAYS: Final = 2
DEFAULT_INFUSION_MAX_DAYS: Final = 7

VISIT_STATUSES: Final = ("upcoming", "due", "overdue", "done", "missed")


@dataclass(frozen=True)
class VisitWindow:
    visit: str
    target_day: int
    window_days: int
    target_date: date
    window_start: date
    window_end: date

    def contains(self, on: date) -> bool:
        return self.window_start <= on <= self.window_end


@dataclass(frozen=True)
class VisitStatus:
    visit: str
    status: str
    outside_window: bool
    explanation: str


@dataclass(frozen=True)
class InfusionWindow:
    earliest: date
    latest: date
    explanation: str


# Source: IM19-SLE protocol calendar (docs/clinical-rules.md): D0 = infusion, negative days before.
def study_day(infusion_date: date, on: date) -> int:
    """Days from D0 to `on`: the infusion day is 0, the day before it -1 (no day-zero gap)."""
    d0 = check.calendar_date(infusion_date, "infusion_date")
    return (check.calendar_date(on, "date") - d0).days


# Source: IM19-SLE protocol calendar (docs/clinical-rules.md): day N is the date D0 + N days.
def date_of_day(infusion_date: date, day: int) -> date:
    """The calendar date of study day `day`."""
    d0 = check.calendar_date(infusion_date, "infusion_date")
    offset = check.whole_number(day, "day", minimum=-DAY_LIMIT, maximum=DAY_LIMIT)
    try:
        return d0 + timedelta(days=offset)
    except OverflowError as error:
        raise InvalidInput(
            f"day {offset} from infusion_date {d0.isoformat()} is outside the calendar.",
            field="day",
        ) from error


# Source: IM19-SLE protocol visit schedule (docs/clinical-rules.md): target day ± window days.
def visit_windows(
    infusion_date: date,
    *,
    schedule: Mapping[str, tuple[int, int]] = DEFAULT_VISIT_SCHEDULE,
) -> tuple[VisitWindow, ...]:
    """Every follow-up visit's target date and window, in schedule order."""
    try:
        key = tuple((visit, tuple(days)) for visit, days in schedule.items())
        return _visit_windows(infusion_date, key)
    except TypeError:  # unhashable input: let the checks below name the field
        return _windows(infusion_date, schedule)


@lru_cache(maxsize=4096)
def _visit_windows(infusion_date: date, schedule: tuple[tuple[str, tuple[int, ...]], ...]
                   ) -> tuple[VisitWindow, ...]:
    """Pure and called for every subject by several read models: computed once per D0."""
    return _windows(infusion_date, {visit: (days[0], days[1]) if len(days) == 2 else days
                                    for visit, days in schedule})


def _windows(infusion_date: date, schedule: Mapping[str, Any]) -> tuple[VisitWindow, ...]:
    d0 = check.calendar_date(infusion_date, "infusion_date")
    windows = []
    for visit, (target, width) in schedule.items():
        day = check.whole_number(target, f"schedule[{visit}] target day", minimum=0,
                                 maximum=DAY_LIMIT)
        margin = check.whole_number(width, f"schedule[{visit}] window", minimum=0,
                                    maximum=DAY_LIMIT)
        windows.append(VisitWindow(
            visit, day, margin, date_of_day(d0, day), date_of_day(d0, day - margin),
            date_of_day(d0, day + margin),
        ))
    return tuple(windows)


# Source: IM19-SLE protocol visit schedule (docs/clinical-rules.md): one visit's window.
def visit_window(
    infusion_date: date,
    visit: str,
    *,
    schedule: Mapping[str, tuple[int, int]] = DEFAULT_VISIT_SCHEDULE,
) -> VisitWindow:
    """The window of one visit code (D1 ... D360)."""
    code = check.choice(visit, "visit", tuple(schedule))
    return next(w for w in visit_windows(infusion_date, schedule=schedule) if w.visit == code)


# Source: IM19-SLE protocol visit rules (docs/clinical-rules.md): upcoming, due, overdue, missed.
def visit_status(
    window: VisitWindow,
    *,
    today: date,
    done_on: date | None = None,
    missed: bool = False,
    next_visit_done: bool = False,
) -> VisitStatus:
    """Done (outside its window: a deviation), missed (recorded, or next visit done), else by
    today: upcoming before the window opens, due inside it, overdue after it closes."""
    now = check.calendar_date(today, "today")
    recorded_missed = check.boolean(missed, "missed")
    skipped = check.boolean(next_visit_done, "next_visit_done")
    span = f"{window.window_start.isoformat()} to {window.window_end.isoformat()}"
    if done_on is not None:
        done = check.calendar_date(done_on, "done_on")
        outside = not window.contains(done)
        text = (
            f"{window.visit} done on {done.isoformat()}, "
            + ("outside its window" if outside else "inside its window")
            + f" {span}" + (": a protocol deviation." if outside else ".")
        )
        return VisitStatus(window.visit, "done", outside, text)
    if recorded_missed or skipped:
        why = "recorded as missed" if recorded_missed else "the next visit is done"
        return VisitStatus(window.visit, "missed", False, f"{window.visit} missed: {why}.")
    if now < window.window_start:
        status = "upcoming"
    elif now <= window.window_end:
        status = "due"
    else:
        status = "overdue"
    return VisitStatus(
        window.visit, status, False,
        f"{window.visit} {status} on {now.isoformat()} (window {span}, {PROTOCOL_CALENDAR}).",
    )


# Source: IM19-SLE protocol (docs/clinical-rules.md): infusion 2-7 days after the last LD dose.
def infusion_window(
    last_lymphodepletion_on: date,
    *,
    min_days: int = DEFAULT_INFUSION_MIN_DAYS,
    max_days: int = DEFAULT_INFUSION_MAX_DAYS,
) -> InfusionWindow:
    """Earliest and latest infusion dates after the regimen's last dose."""
    last = check.calendar_date(last_lymphodepletion_on, "last_lymphodepletion_on")
    low = check.whole_number(min_days, "min_days", minimum=0, maximum=DAY_LIMIT)
    high = check.whole_number(max_days, "max_days", minimum=low, maximum=DAY_LIMIT)
    earliest = last + timedelta(days=low)
    latest = last + timedelta(days=high)
    return InfusionWindow(
        earliest,
        latest,
        f"Infusion allowed {low}-{high} days after the last lymphodepletion dose on "
        f"{last.isoformat()}: {earliest.isoformat()} to {latest.isoformat()}.",
    )
