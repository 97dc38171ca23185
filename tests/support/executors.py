"""Two executors (two processes' worth: two engines) on one study, for the tests of what an
executor keeps folded between commands and reads ahead (tests/workflow/test_executor_cache.py,
tests/workflow/test_read_ahead_attacks.py)."""

from __future__ import annotations

from datetime import date

from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, Desk, new_study, on_day, open_desk, screen_eligible
from workflow.commands import messages as M
from workflow.monitoring import fold_monitoring
from workflow.study import load_study
from workflow.subject import fold_subject

START = date(2025, 3, 3)


def two_desks(url: str) -> tuple[Desk, Desk]:
    """A study with S-001 screened on `url`, and two desks on it sharing one clock."""
    clock = FakeClock()
    first = new_study(url, clock)
    screen_eligible(first, "S-001", START, clock=clock)
    on_day(clock, date(2025, 3, 10))
    return first, open_desk(url, clock)


def vitals_message(heart_rate: int) -> M.RecordForm:
    return M.RecordForm("S-001", "vitals", (f"heart_rate={heart_rate}",), date(2025, 3, 9))


def vitals(desk: Desk, heart_rate: int) -> int:
    """A vitals form for S-001 by the coordinator; its event's position."""
    return desk.send(COORDINATOR, vitals_message(heart_rate)).result.positions[0]


def kept_is_the_log(desk: Desk, subject: str, *, as_is: bool = False) -> None:
    """The executor's kept folds are a fresh fold of the log: `as_is`, as they are (after a
    refusal: nothing to bring up to date), else brought up to date as the next command would
    (the events since its last load, its own last append among them)."""
    if not as_is:
        desk.executor.study()
        desk.executor._subject_stream(subject)
    kept = desk.executor._subjects[subject]
    events = desk.store.read_stream(subject)
    assert [e.position for e in kept.events] == [e.position for e in events]
    assert kept.state == fold_subject(subject, events)
    assert kept.review == fold_monitoring(subject, events)
    assert desk.executor._study == load_study(desk.store)
