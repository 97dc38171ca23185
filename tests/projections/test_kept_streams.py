"""Catch-ups fold onto the streams (and the study's facts) their process keeps
(projections/kept_streams.py): what they write is what a fold of the whole log writes, the
kept state is used only when the stored event at its version is the one kept, and a rebuild
never uses it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from events.store import EventStore
from events.streams import STUDY_STREAM
from projections.kept_streams import KeptStreams, kept_streams
from projections.runner import Runner
from tests.projections.support import lifecycle, memory_snapshot, table_snapshot
from tests.projections.test_runner import _tables, _trial
from tests.support.clock import FakeClock
from tests.support.study import ADMIN, COORDINATOR, on_day, open_desk
from workflow.commands import messages as M
from workflow.study import Study


@contextmanager
def stream_reads(store: EventStore) -> Iterator[list[dict[str, Any]]]:
    """The keyword arguments of every `read_stream` of `store` while inside."""
    calls: list[dict[str, Any]] = []
    real = store.read_stream

    def spy(stream_id: str, **kwargs: Any) -> Any:
        calls.append({"stream": stream_id, **kwargs})
        return real(stream_id, **kwargs)

    store.read_stream = spy  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del store.read_stream


def kept_facts(store: EventStore, position: int | None = None) -> Study | None:
    """The study's facts `store`'s catch-ups keep, if kept for the study stream as it ends at
    `position` (default: the head)."""
    at = store.last_position() if position is None else position
    return kept_streams(store).study_for(store.stream_head_at(STUDY_STREAM, at))


def test_catch_ups_fold_onto_what_they_kept_and_write_what_a_whole_fold_writes(
        db_url: str) -> None:
    flow, runner = _trial(db_url, subjects=2)  # a catch-up after every command
    kept = kept_streams(flow.store)
    assert len(kept) == 2
    with stream_reads(flow.store) as reads:
        flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("heart_rate=71",),
                                            date(2025, 3, 1)))
        runner.catch_up()
    version = flow.subject("S-001").version
    # one read, from the version kept (its stored event proves the rest), none of the stream
    assert reads == [{"stream": "S-001", "after_version": version - 2,
                      "up_to_position": flow.store.last_position()}]
    assert kept_facts(flow.store) is not None
    causality = [f for f in flow.subject("S-002").forms.values() if f.form == "causality"]
    before = table_snapshot(flow.store)
    flow.send(COORDINATOR, M.VoidRecord("S-002", causality[0].position, "entered for the "
                                        "wrong adverse event"))  # mended: the kept fold follows
    runner.catch_up()
    caught_up = table_snapshot(flow.store)
    assert caught_up == memory_snapshot(flow.store)
    assert [r for r in before["rm_adverse_events"] if '"subject": "S-002"' in r] != [
        r for r in caught_up["rm_adverse_events"] if '"subject": "S-002"' in r]
    runner.rebuild()
    assert table_snapshot(flow.store) == caught_up


def test_a_rebuild_folds_every_stream_afresh(sqlite_url: str) -> None:
    flow, runner = _trial(sqlite_url, subjects=1)
    with stream_reads(flow.store) as reads:
        runner.rebuild()
    assert [r for r in reads if r["stream"] == "S-001"] == [
        {"stream": "S-001", "up_to_position": flow.store.last_position()}]


def _copy(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as reader, sqlite3.connect(target) as writer:
        reader.backup(writer)
    reader.close()
    writer.close()


def test_a_log_put_back_to_an_older_copy_is_folded_afresh(tmp_path: Path) -> None:
    """The file replaced by an older copy whose S-001 then went another way, to past the
    version kept: the event stored at the kept version is another one, so the stream is read
    and folded again; folding onto the kept state would keep the visits of the lost branch."""
    path = tmp_path / "trialflow.db"
    url = f"sqlite:///{path}"
    flow, runner = _trial(url, subjects=1, steps=8)  # up to the infusion
    older = tmp_path / "older.db"
    _copy(path, older)
    clock = FakeClock("2025-03-01T04:00:00+00:00")
    on_day(flow.clock, date(2025, 3, 1))
    for code, day in (("D1", 1), ("D4", 4), ("D7", 7)):  # kept: this branch's visits
        flow.send(COORDINATOR, M.RecordVisit("S-001", code, "done",
                                             date(2025, 2, 5 + day)))
    runner.catch_up()
    kept_version = kept_streams(flow.store).stream(flow.store, "S-001",
                                                   flow.store.last_position())
    assert kept_version is not None
    flow.store.engine.dispose()
    _copy(older, path)  # the older copy put in place under the same process
    other = open_desk(url, clock)  # a fresh executor writes the other branch
    for code, day in (("D1", 2), ("D4", 5), ("D7", 8), ("D10", 10)):
        missed = day == 5
        other.send(COORDINATOR, M.RecordVisit("S-001", code, "missed" if missed else "done",
                                              date(2025, 2, 5 + day),
                                              "subject unwell" if missed else None))
    other.store.engine.dispose()
    assert flow.store.stream_version("S-001") > kept_version.state.version
    runner.catch_up()
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


def test_a_catch_up_to_before_the_kept_version_reads_the_stream_whole(
        sqlite_url: str) -> None:
    flow, runner = _trial(sqlite_url, subjects=1)  # kept up to the head
    head = flow.store.last_position()
    runner.rebuild(up_to=head - 8)
    with stream_reads(flow.store) as reads:
        runner.catch_up(up_to=head - 4)
    assert [r for r in reads if r["stream"] == "S-001"] == [
        {"stream": "S-001", "up_to_position": head - 4}]
    assert table_snapshot(flow.store, head - 4) == memory_snapshot(flow.store, head - 4)
    runner.catch_up()
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


def test_the_study_s_facts_kept_give_way_to_a_study_event(db_url: str) -> None:
    """A site added (a study event: every subject is refolded) reads the facts again; its
    time zone is in the rows the next catch-ups write from the facts they keep."""
    flow, runner = _trial(db_url, subjects=1, steps=11)
    before = kept_facts(flow.store)
    assert before is not None and "THIRD" not in before.sites
    flow.send(ADMIN, M.AddSite("THIRD", "America/Chicago"))
    runner.catch_up()
    after = kept_facts(flow.store)
    assert after is None  # a study event's catch-up keeps nothing: the next reads the table
    on_day(flow.clock, date(2025, 3, 1))
    flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("heart_rate=70",),
                                        date(2025, 3, 1)))
    runner.catch_up()
    kept_now = kept_facts(flow.store)
    assert kept_now is not None and kept_now.sites["THIRD"] == "America/Chicago"
    assert table_snapshot(flow.store) == memory_snapshot(flow.store)


def test_the_streams_kept_are_bounded_least_recent_out(sqlite_url: str) -> None:
    flow, _ = _trial(sqlite_url, subjects=3, steps=2)
    head = flow.store.last_position()
    kept = KeptStreams(size=2)
    for subject in ("S-001", "S-002", "S-003", "S-001"):
        assert kept.stream(flow.store, subject, head) is not None
    assert len(kept) == 2
    with stream_reads(flow.store) as reads:
        kept.stream(flow.store, "S-003", head)  # kept: read from its version
        kept.stream(flow.store, "S-002", head)  # let go: read whole
    assert [("after_version" in r, r["stream"]) for r in reads] == [(True, "S-003"),
                                                                   (False, "S-002")]
    assert kept.stream(flow.store, "S-404", head) is None


def test_one_runner_per_read_shares_what_the_store_keeps(sqlite_url: str) -> None:
    """Queries make a runner each (projections/views.py): what they keep lives with the
    store, so the next query's catch-up folds onto it."""
    flow, _ = _trial(sqlite_url, subjects=1, steps=3)
    plan = lifecycle(flow, flow.clock, "S-009", date(2025, 1, 9), [0])
    plan[0]()
    Runner(flow.store.engine, flow.store).catch_up()
    on_day(flow.clock, date(2025, 1, 10))
    with stream_reads(flow.store) as reads:
        flow.send(COORDINATOR, M.RecordForm("S-009", "vitals", ("heart_rate=66",),
                                            date(2025, 1, 10)))
        through_a_query = _tables(flow)  # open_view: its own runner
    assert [("after_version" in r) for r in reads if r["stream"] == "S-009"] == [True]
    assert through_a_query == memory_snapshot(flow.store)
