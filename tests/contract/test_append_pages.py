"""What an append writes besides its rows (issue 17): on SQLite the index by type holds only
`QueryOpened` events and there is no index by `recorded_at` (migration 4), and the command ids
the store makes are time-ordered UUIDs, so a command's commit writes fewer pages. The reads
that used what was taken away still give what they gave."""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from events.envelope import NewEvent
from events.schema import current_version, latest_version, upgrade
from events.store import AppendContext, EventStore, format_utc, time_ordered_id
from tests.support.clock import FakeClock
from workflow.bootstrap import build_app

CONTEXT = AppendContext(actor="cora", role="coordinator", site="PKU3")
QUERY_STREAMS = "SELECT DISTINCT stream_id FROM events WHERE type = 'QueryOpened'"


def _indexes(store: EventStore) -> dict[str, str]:
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            rows = conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                     "AND tbl_name = 'events' AND sql IS NOT NULL"))
        else:
            rows = conn.execute(text("SELECT indexname, indexdef FROM pg_indexes "
                                     "WHERE tablename = 'events'"))
        return {str(name): str(sql) for name, sql in rows}


def _triggers(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                 "ORDER BY name").fetchall())


def _fill(store: EventStore) -> None:
    """Three subjects, two with a query opened, among forms."""
    for subject in ("S-001", "S-002", "S-003"):
        store.append(subject, 0, [NewEvent("FormRecorded", {"form": "vitals"})], CONTEXT)
    for subject in ("S-001", "S-003"):
        store.append(subject, 1, [NewEvent("QueryOpened", {"text": "check"})], CONTEXT)
    store.append("S-002", 1, [NewEvent("FormRecorded", {"form": "vitals"})], CONTEXT)


def test_the_type_index_is_sqlites_query_index_and_postgresqls_whole(db_url: str) -> None:
    app = build_app(db_url)
    upgrade(app.engine)
    try:
        _fill(app.store)
        indexes = _indexes(app.store)
        if app.engine.dialect.name == "sqlite":
            assert not {"events_type", "events_recorded_at", "events_command_id"} & set(indexes)
            assert "WHERE type = 'QueryOpened'" in indexes["events_query_opened"]
        else:  # the append function finds the study's users by type
            assert {"events_type", "events_recorded_at", "events_command_id"} <= set(indexes)
            assert "events_query_opened" not in indexes
        with app.engine.connect() as conn:
            found = sorted(conn.execute(text(QUERY_STREAMS)).scalars())
        assert found == ["S-001", "S-003"]
    finally:
        app.engine.dispose()


def test_a_sqlite_study_of_schema_3_upgrades_and_reads_its_queries_by_the_new_index(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    app = build_app(f"sqlite:///{path}")
    upgrade(app.engine)
    app.engine.dispose()
    with sqlite3.connect(path) as conn:  # as a study made before migration 4 stands
        triggers = _triggers(path)
        conn.execute("DROP TABLE commands")
        conn.execute("CREATE TABLE commands (command_id VARCHAR(64) NOT NULL PRIMARY KEY, "
                     "request_hash CHAR(64) NOT NULL, result TEXT NOT NULL, "
                     "recorded_at VARCHAR(40) NOT NULL)")
        for name, sql in triggers.items():
            if name.startswith("commands_"):
                conn.execute(sql)
        conn.execute("DROP INDEX events_query_opened")
        conn.execute("CREATE INDEX events_type ON events (type)")
        conn.execute("CREATE INDEX events_recorded_at ON events (recorded_at)")
        conn.execute("CREATE INDEX events_command_id ON events (command_id)")
        conn.execute("DELETE FROM schema_migrations WHERE version = 4")
    app = build_app(f"sqlite:///{path}")
    try:
        assert current_version(app.engine) == 3
        _fill(app.store)
        commands = app.store.read_commands()
        triggers = _triggers(path)
        assert len(commands) == 6 and {"commands_refuse_update", "commands_refuse_delete",
                                       "commands_guard_insert"} <= set(triggers)
        assert upgrade(app.engine) == ["004 SQLite: events indexed as its reads need "
                                       "(QueryOpened by stream; no recorded_at or command_id), "
                                       "commands without rowid"]
        assert current_version(app.engine) == latest_version() == 4
        assert set(_indexes(app.store)) == {"events_query_opened"}
        assert upgrade(app.engine) == []  # idempotent, as `trialflow init` is
        # the commands kept, in their order, and their guards made again: as they were, but
        # the insert guard, which asks the log's last event instead of an index
        assert app.store.read_commands() == commands
        after = _triggers(path)
        assert after.keys() == triggers.keys()
        assert {k: v for k, v in after.items() if k != "commands_guard_insert"} == {
            k: v for k, v in triggers.items() if k != "commands_guard_insert"}
        assert "ORDER BY position DESC LIMIT 1" in after["commands_guard_insert"]
        first = app.store.find_command(commands[0][0])
        assert first is not None and first.result.positions == (1,)
        repeat = app.store.append("S-001", 0, [NewEvent("FormRecorded", {"form": "vitals"})],
                                  AppendContext(actor="cora", role="coordinator", site="PKU3",
                                                command_id=commands[0][0]))
        assert repeat.duplicate and repeat.positions == (1,)  # still a repeat, nothing written
    finally:
        app.engine.dispose()
    with sqlite3.connect(path) as conn:
        assert "WITHOUT ROWID" in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'commands'").fetchone()[0]
        for statement in ("UPDATE commands SET result = '{}'", "DELETE FROM commands"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
        with pytest.raises(sqlite3.IntegrityError, match="needs the events of its command"):
            conn.execute("INSERT INTO commands VALUES ('forged', 'h', '{}', 'x')")
        # nor for the events of an older command than the last (its row taken away first,
        # as a forger with the file would, the guards off for that alone)
        older = conn.execute("SELECT command_id FROM events WHERE position = 1").fetchone()[0]
        conn.execute("DROP TRIGGER commands_refuse_delete")
        conn.execute("DELETE FROM commands WHERE command_id = ?", (older,))
        with pytest.raises(sqlite3.IntegrityError, match="needs the events of its command"):
            conn.execute("INSERT INTO commands VALUES (?, 'h', '{}', 'x')", (older,))
        plan = " ".join(str(row) for row in conn.execute(f"EXPLAIN QUERY PLAN {QUERY_STREAMS}"))
        assert "events_query_opened" in plan
        assert sorted(r[0] for r in conn.execute(QUERY_STREAMS)) == ["S-001", "S-003"]
        # the index holds the queries' events only: a form's append does not write it
        assert conn.execute("SELECT count(*) FROM events INDEXED BY events_query_opened "
                            "WHERE type = 'QueryOpened'").fetchone() == (2,)


def test_command_ids_are_unique_uuids_of_version_7_in_the_order_they_were_made() -> None:
    ids = [time_ordered_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(value) for value in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert all(str(u) == value for u, value in zip(parsed, ids, strict=True))
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)  # the time comes first
    assert abs(millis[-1] - time.time_ns() // 1_000_000) < 60_000
    # an id of a later millisecond sorts after every id of the ones before it
    moment = 1_796_000_000_000  # 2026-11-30, in milliseconds
    earlier = [time_ordered_id(moment + n // 100) for n in range(1_000)]
    assert [uuid.UUID(value).int >> 80 for value in earlier] == [moment + n // 100
                                                                 for n in range(1_000)]
    for n in range(1, 10):
        assert min(earlier[n * 100:(n + 1) * 100]) > max(earlier[:n * 100])


def test_the_position_recorded_at_a_moment_is_the_last_one_at_or_before_it(db_url: str
                                                                          ) -> None:
    """`position_at`, SQLite reading its key backwards, PostgreSQL its index: the same answer
    as a look at every event, at moments before, between, on (ties included) and after."""
    app = build_app(db_url)
    upgrade(app.engine)
    start = datetime(2025, 3, 3, 4, tzinfo=UTC)
    clock = FakeClock(start)
    store = EventStore(app.engine, clock=clock)
    try:
        assert store.position_at(start) == 0  # an empty log
        for n, minutes in enumerate((0, 0, 5, 5, 5, 9, 30, 30, 31)):
            clock.set(start + timedelta(minutes=minutes))
            store.append(f"S-{n:03d}", 0, [NewEvent("FormRecorded", {"n": n})], CONTEXT)
        events = list(store.read_all())
        for minutes in (-1, 0, 1, 4, 5, 6, 9, 10, 29, 30, 31, 32, 600):
            moment = start + timedelta(minutes=minutes)
            expected = max((e.position for e in events
                            if e.recorded_at <= format_utc(moment)), default=0)
            assert store.position_at(moment) == expected, minutes
            assert store.position_at(format_utc(moment)) == expected, minutes
        assert store.position_at(start + timedelta(minutes=5)) == 5  # the last of a tie
    finally:
        app.engine.dispose()


@pytest.mark.parametrize("given", [None, "my-own-id"])
def test_the_store_makes_time_ordered_ids_and_keeps_a_given_one(sqlite_url: str,
                                                                 given: str | None) -> None:
    app = build_app(sqlite_url)
    upgrade(app.engine)
    try:
        context = AppendContext(actor="cora", role="coordinator", site="PKU3", command_id=given)
        result = app.store.append("S-001", 0, [NewEvent("FormRecorded", {"form": "x"})], context)
        if given is None:
            assert uuid.UUID(result.command_id).version == 7
        else:
            assert result.command_id == given
    finally:
        app.engine.dispose()
