"""The projection runner: catch-up equals rebuild equals the in-memory fold; exactly once with
a crash in the middle and with several runners at once; read-only logins fold the lag."""

from __future__ import annotations

import dataclasses
import multiprocessing
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from projections import registry
from projections import tables as t
from projections.runner import Runner
from projections.views import open_view
from tests.projections.support import lifecycle, memory_snapshot, snapshot, table_snapshot
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, Desk, new_study, open_desk
from workflow.bootstrap import build_app
from workflow.commands import messages as M


def _trial(url: str, subjects: int = 2, steps: int | None = None) -> tuple[Desk, Runner]:
    clock = FakeClock("2025-01-01T04:00:00+00:00")
    flow = new_study(url, clock)
    runner = Runner(flow.store.engine, flow.store)
    plans = [lifecycle(flow, clock, f"S-00{i + 1}", date(2025, 1, 6 + 9 * i), [0, 2, -1])
             for i in range(subjects)]
    for plan in plans:
        for step in plan[:steps]:
            step()
            runner.catch_up()  # incremental: one command's events at a time
    return flow, runner


def _visit_done(url: str, visits: list[tuple[str, str, date]]) -> None:
    """Visits recorded done by the coordinator through another executor (the clock later
    than the trial's: as a second process would)."""
    other = open_desk(url, FakeClock("2025-03-01T04:00:00+00:00"))
    for subject, visit, on in visits:
        other.send(COORDINATOR, M.RecordVisit(subject, visit, "done", on))
    other.store.engine.dispose()


def _tables(flow: Desk) -> dict[str, list[str]]:
    return snapshot(open_view(flow.store.engine, flow.store))


def test_catch_up_equals_rebuild_equals_memory(db_url: str) -> None:
    flow, runner = _trial(db_url)
    incremental = _tables(flow)
    assert incremental == memory_snapshot(flow.store)
    assert len(incremental["rm_visits"]) == 2 * 14  # screening, D0 and 12 follow-up visits
    assert any('"grade": 3' in row for row in incremental["rm_adverse_events"])  # corrected
    assert len(incremental["rm_deviations"]) >= 2  # visits shifted out of their window
    runner.rebuild()
    assert _tables(flow) == incremental
    runner.rebuild(["visits"])
    assert _tables(flow) == incremental
    assert all(p["lag"] == 0 for p in runner.status())


def test_as_of_position_equals_rebuild_of_the_first_events(sqlite_url: str) -> None:
    flow, runner = _trial(sqlite_url, subjects=1)
    head = flow.store.last_position()
    for position in (head // 3, head // 2, head - 5):
        runner.rebuild(up_to=position)
        assert _checkpoints(flow) == {position}
        in_tables = table_snapshot(flow.store, position)
        assert in_tables == memory_snapshot(flow.store, position)
    runner.catch_up()  # from an old checkpoint, incrementally, to the head
    assert _tables(flow) == memory_snapshot(flow.store)


def _checkpoints(flow: Desk) -> set[int]:
    with flow.store.engine.connect() as conn:
        return {int(p) for p in conn.execute(select(t.checkpoints.c.position)).scalars()}


def test_a_crash_in_the_middle_applies_nothing(sqlite_url: str, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    flow, runner = _trial(sqlite_url, subjects=2, steps=9)
    before = _tables(flow)
    marks = _checkpoints(flow)
    _visit_done(sqlite_url, [("S-001", "D1", date(2025, 2, 5)),
                             ("S-002", "D1", date(2025, 2, 14))])
    calls: list[str] = []

    def crash(ctx: object) -> dict[str, list[dict[str, object]]]:
        calls.append("endpoints")
        raise RuntimeError("power cut")

    monkeypatch.setattr(registry, "SUBJECT_PROJECTIONS", tuple(
        dataclasses.replace(p, fold=crash) if p.name == "endpoints" else p
        for p in registry.SUBJECT_PROJECTIONS))
    with pytest.raises(RuntimeError, match="power cut"):
        runner.catch_up()
    assert calls  # the crash happened after other projections had written their rows
    assert _checkpoints(flow) == marks
    with flow.store.engine.connect() as conn:
        visits = conn.execute(select(t.visits.c.recorded_status).where(
            t.visits.c.subject == "S-001", t.visits.c.visit == "D1")).scalar()
    assert visits is None  # the visits projection's rows were rolled back with the rest
    monkeypatch.undo()
    runner.catch_up()
    after = _tables(flow)
    assert after != before and after == memory_snapshot(flow.store)


def _catch_up_in_a_process(url: str, rounds: int) -> int:
    """Events this process applied to the `visits` projection."""
    app = build_app(url)
    runner = Runner(app.engine, app.store)
    return sum(runner.catch_up().applied.get("visits", 0) for _ in range(rounds))


def test_several_runners_at_once_apply_each_event_once(db_url: str) -> None:
    flow, runner = _trial(db_url, subjects=1, steps=8)  # the runner is at the head
    start = flow.store.last_position()
    other = open_desk(db_url, FakeClock("2025-03-01T04:00:00+00:00"))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        pending = [pool.apply_async(_catch_up_in_a_process, (db_url, 20)) for _ in range(3)]
        for code, day in (("D1", 6), ("D4", 9), ("D7", 12)):
            other.send(COORDINATOR, M.RecordVisit("S-001", code, "done", date(2025, 2, day)))
        results = [p.get(timeout=120) for p in pending]
    last = runner.catch_up().applied.get("visits", 0)
    assert _tables(flow) == memory_snapshot(flow.store)
    head = flow.store.last_position()
    assert _checkpoints(flow) == {head}
    with flow.store.engine.connect() as conn:
        done = conn.execute(select(func.count()).select_from(t.visits).where(
            t.visits.c.recorded_status == "done")).scalar()
    assert done == 5  # screening, D0, D1, D4, D7: each row once
    assert sum(results) + last == head - start  # every event applied by exactly one runner


def test_a_read_only_login_folds_the_lag_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "trialflow.db"
    flow, _ = _trial(f"sqlite:///{path}", subjects=1, steps=8)
    _visit_done(f"sqlite:///{path}", [("S-001", "D1", date(2025, 2, 5))])
    marks = _checkpoints(flow)
    read_only = build_app(f"sqlite:///file:{path}?mode=ro&uri=true")
    view = open_view(read_only.engine, read_only.store)
    assert view.source == "tables+memory"
    assert list(view.overlay) == ["S-001"]
    d1 = [r for r in view.rows(t.visits, "S-001") if r["visit"] == "D1"]
    assert d1[0]["recorded_status"] == "done"  # the new event, folded in memory
    assert snapshot(view) == memory_snapshot(flow.store)
    assert _checkpoints(flow) == marks  # nothing was written


@pytest.mark.postgres
def test_a_select_only_postgres_login_folds_the_lag_in_memory(postgres_url: str) -> None:
    import uuid

    import psycopg

    flow, _ = _trial(postgres_url, subjects=1, steps=8)
    _visit_done(postgres_url, [("S-001", "D1", date(2025, 2, 5))])
    marks = _checkpoints(flow)
    role = f"tf_reader_{uuid.uuid4().hex[:8]}"
    dbname = postgres_url.rsplit("/", 1)[1]
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        reader = build_app(postgres_url.replace("//postgres@", f"//{role}@"))
        view = open_view(reader.engine, reader.store)
        assert view.source == "tables+memory" and list(view.overlay) == ["S-001"]
        assert snapshot(view) == memory_snapshot(flow.store)
        reader.engine.dispose()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'REASSIGN OWNED BY {role} TO postgres')
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(dsn.replace(dbname, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
    assert _checkpoints(flow) == marks  # nothing was written


def test_a_parallel_rebuild_writes_the_rows_of_a_serial_one(db_url: str,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from projections import parallel
    from projections import runner as runner_module

    flow, runner = _trial(db_url, subjects=3, steps=12)
    serial = _tables(flow)
    calls: list[int] = []
    real = parallel.fold_in_parallel

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel, "MIN_SUBJECTS", 1)
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    monkeypatch.setattr(parallel, "fold_in_parallel", counted)
    monkeypatch.setattr(runner_module, "CHUNK", 1)  # one subject per task: several in flight
    runner.rebuild()
    assert calls == [1]  # the pool did the folding
    assert _tables(flow) == serial == memory_snapshot(flow.store)


def test_the_runner_leaves_every_pooled_connection_fully_synchronous(sqlite_url: str) -> None:
    """The runner commits read models without a sync of its own (derived data); the log's
    appends on the same pooled connections must keep `synchronous = FULL` (2)."""
    flow, runner = _trial(sqlite_url, subjects=1, steps=4)
    with pytest.raises(ZeroDivisionError), runner._transaction():
        raise ZeroDivisionError  # a failed catch-up gives its connection back as well
    runner.rebuild()
    engine = flow.store.engine
    connections = [engine.connect() for _ in range(engine.pool.size() + 2)]
    try:
        levels = {c.exec_driver_sql("PRAGMA synchronous").scalar() for c in connections}
    finally:
        for c in connections:
            c.close()
    assert levels == {2}
