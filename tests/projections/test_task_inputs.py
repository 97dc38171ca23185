"""The `tasks` read model (`rm_task_inputs`): the clock applied to a subject's stored task
inputs gives exactly the tasks its own fold gives (`workflow.tasks.subject_tasks`, what
`status SUBJECT` shows), at every point of the demo's history and at several clocks; and
`todo` reads the stored inputs instead of folding every stream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from events.engine import create_store_engine
from events.store import EventStore
from projections import tables as t
from projections.runner import Runner
from projections.todo import todo_list
from projections.views import open_view
from tests.support.clock import FakeClock
from tests.support.demo import copy_demo
from tests.support.study import COORDINATOR, MONITOR, new_study, on_day, through_infusion
from workflow.commands import messages as M
from workflow.study import fold_study
from workflow.subject import fold_subject
from workflow.tasks import TaskInputs, subject_tasks, tasks_at

SAMPLES = 14  # points of the demo's history
SERIOUS_AE = ("term=Pneumonia", "category=infection", "onset_date=2025-02-06", "grade=3",
              "serious_criteria=hospitalisation", "awareness_at=2025-02-06T20:00:00+08:00")


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo(tmp_path_factory, tmp_path_factory.mktemp("tasks") / "demo.db")


def compare_at(engine: Engine, position: int, nows: Iterable[datetime]) -> Counter[str]:
    """Rebuild up to `position`; every subject's stored inputs at each clock equal its fold's
    tasks; the kinds compared."""
    store = EventStore(engine)
    Runner(engine, store).rebuild(up_to=position)
    study = fold_study(store.read_stream("study", up_to_position=position))
    with engine.connect() as conn:
        rows = {r.subject: r for r in conn.execute(t.task_inputs.select()).all()}
    kinds: Counter[str] = Counter()  # none before the first consent
    for subject, row in rows.items():
        events = store.read_stream(subject, up_to_position=position)
        state = fold_subject(subject, events)
        stored = TaskInputs.from_json(row.inputs)
        assert (row.site, row.phase, row.screening) == (
            state.site, state.phase, state.phase == "screening")
        for now in nows:
            expected = subject_tasks(study, state, now, events)
            got = tasks_at(study, stored, now, state if stored.screening else None)
            assert got == expected, (subject, position, now)
            kinds.update(task.kind for task in got)
        kinds["(screening folds)"] += stored.screening
    return kinds


def clocks_after(store: EventStore, position: int) -> list[datetime]:
    """The time of the event at `position`, three days later, 45 days later."""
    (event,) = store.read_all(after=position - 1, up_to=position)
    recorded = datetime.fromisoformat(event.recorded_at.replace("Z", "+00:00"))
    return [recorded, recorded + timedelta(days=3, hours=7), recorded + timedelta(days=45)]


def test_stored_inputs_at_any_clock_equal_the_fold_through_the_demos_history(
        demo_url: str) -> None:
    engine = create_store_engine(demo_url)
    store = EventStore(engine)
    head = store.last_position()
    kinds: Counter[str] = Counter()
    for step in range(1, SAMPLES + 1):
        position = head * step // SAMPLES
        kinds += compare_at(engine, position, clocks_after(store, position))
    # the comparison covered every part of the inputs the demo reaches (not an empty list)
    for kind in ("visit", "procedure", "confirm_eligibility", "screening_form", "screen_fail",
                 "sdv", "(screening folds)"):
        assert kinds[kind] > 0, (kind, kinds)


def test_stored_inputs_with_clocks_causality_queries_and_signatures(db_url: str) -> None:
    """What the demo's sampled points miss: a running SAE clock, an unassessed causality, an
    open query, the lymphodepletion days, the completion awaiting its signature; on SQLite
    and through PostgreSQL's JSON."""
    clock = FakeClock()
    desk = new_study(db_url, clock)
    through_infusion(desk, "S-001", date(2025, 1, 6), clock)
    on_day(clock, date(2025, 2, 6))
    ae = desk.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", SERIOUS_AE,
                                             date(2025, 2, 6))).result.positions[0]
    desk.send(MONITOR, M.OpenQuery("S-001", ae, "grade", "Grade 3 or 2?"))
    d0 = through_infusion(desk, "S-003", date(2025, 1, 8), clock)
    for visit in desk.study().protocol.visits:
        day = d0 + timedelta(days=visit.target_day)
        on_day(clock, day)
        desk.send(COORDINATOR, M.RecordVisit("S-003", visit.code, "done", day))
    desk.send(COORDINATOR, M.CompleteStudy("S-003"))
    engine = create_store_engine(db_url)
    store = EventStore(engine)
    kinds: Counter[str] = Counter()
    head = store.last_position()
    for position in range(1, head + 1, 7):
        kinds += compare_at(engine, position, clocks_after(store, position))
    kinds += compare_at(engine, head, clocks_after(store, head))
    for kind in ("sae_report", "causality", "query_answer", "signature", "procedure",
                 "visit", "sdv"):
        assert kinds[kind] > 0, (kind, kinds)
    engine.dispose()


def test_a_subject_in_screening_needs_its_fold(demo_url: str, tmp_path: Path) -> None:
    inputs = TaskInputs("S-001", "PKU3", "screening", screening=True)
    engine = create_store_engine(demo_url)
    study = fold_study(EventStore(engine).read_stream("study"))
    with pytest.raises(ValueError, match="S-001 is in screening"):
        tasks_at(study, inputs, datetime.fromisoformat("2025-01-01T00:00:00+00:00"))


def test_todo_reads_the_stored_inputs_not_the_streams(demo_url: str) -> None:
    """After the catch-up, `todo` reads no subject's stream unless it is in screening."""
    engine = create_store_engine(demo_url)
    store = EventStore(engine)
    Runner(engine, store).catch_up()
    reads: list[str] = []
    original = store.read_stream

    def counting(stream_id: str, **kwargs: object) -> object:
        reads.append(stream_id)
        return original(stream_id, **kwargs)  # type: ignore[arg-type]

    store.read_stream = counting  # type: ignore[method-assign]
    view = open_view(engine, store)
    with engine.connect() as conn:
        screening = {r.subject for r in conn.execute(t.task_inputs.select()).all()
                     if r.screening}
    now = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    tasks = todo_list(view, store, now)
    assert tasks, "the demo's end has open tasks (signatures, source verification)"
    assert sorted(s for s in reads if s != "study") == sorted(screening)
