"""The store's fast paths against the reference definitions, and its pooled connections under
threads, processes and a fork. Every test runs on SQLite and on PostgreSQL (`db_url`).

The store writes the hashed text of an event, the command's result and the request hash out
by hand (events/store.py) instead of calling `canonical_json` per field; these tests hold it to
the reference: `event_hash` of the stored envelope, `canonical_json` of the result, and the
request hash as the store first defined it (`reference_request_hash` below).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from events.chain import verify
from events.envelope import GENESIS_HASH, NewEvent, canonical_json, event_hash
from events.errors import ConcurrencyConflict
from events.schema import upgrade
from events.store import SQLITE_ROWS_PER_INSERT, AppendContext, EventStore, StreamAppend
from workflow.bootstrap import build_app

AWKWARD = "é ü \u2028 \"quoted\" back\\slash tab\t newline\n nul-ish \x01 \U0001f489"


def fresh_store(url: str) -> EventStore:
    app = build_app(url)
    upgrade(app.engine)
    return app.store


def reference_request_hash(appends: Sequence[StreamAppend], context: AppendContext) -> str:
    """The request hash exactly as the store computed it before its fast path."""
    request = {
        "actor": context.actor,
        "appends": [
            {
                "stream_id": a.stream_id,
                "events": [
                    [e.type, e.schema_version, e.payload, e.occurred_at, e.reason]
                    for e in a.events
                ],
            }
            for a in appends
        ],
    }
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


def command_row(store: EventStore, command_id: str) -> tuple[str, str]:
    with store.engine.connect() as conn:
        mark = "?" if store.engine.dialect.name == "sqlite" else "%s"
        row = conn.exec_driver_sql(
            f"SELECT request_hash, result FROM commands WHERE command_id = {mark}", (command_id,)
        ).one()
    return str(row[0]), str(row[1])


def test_stored_hashes_match_the_reference_serialisation(db_url: str) -> None:
    store = fresh_store(db_url)
    odd = NewEvent(
        f"Type {AWKWARD}",
        {"z": None, "é": AWKWARD, "n": 1.5, "big": 2**70, "t": True, "a": [1, {"b": "\x1f"}]},
        schema_version=3,
        occurred_at="2025-01-01T00:00:00+08:00",
        reason=f"reason {AWKWARD}",
        causation_id="cause-1",
    )
    context = AppendContext(actor=f"actor {AWKWARD}", role="coördinator", site=None,
                            command_id="c-1", correlation_id="corr-1")
    store.append("S-1", 0, [odd, NewEvent("Plain", {}), odd], context)
    store.append_streams(  # continues S-1 from the stored head, starts S-2, names S-1 twice
        [StreamAppend("S-1", 3, [NewEvent("A", {"k": 1})]),
         StreamAppend("S-2", 0, [NewEvent("B", {"k": 2}), NewEvent("B", {"k": 3})]),
         StreamAppend("S-1", 4, [NewEvent("A", {"k": 4}, schema_version=2)])],
        AppendContext(actor="bob", role="coordinator", site="PKU3"),
    )
    events = list(store.read_all())
    assert [e.position for e in events] == list(range(1, 8))
    assert [(e.stream_id, e.version) for e in events] == [
        ("S-1", 1), ("S-1", 2), ("S-1", 3), ("S-1", 4), ("S-2", 1), ("S-2", 2), ("S-1", 5)]
    previous: dict[str, str] = {}
    for event in events:
        assert event.hash == event_hash(event.envelope())
        assert event.prev_hash == previous.get(event.stream_id, GENESIS_HASH)
        previous[event.stream_id] = event.hash
    first = events[0]
    assert first.payload == odd.payload and first.payload_text == canonical_json(odd.payload)
    assert (first.type, first.reason, first.actor, first.site) == (
        odd.type, odd.reason, context.actor, None)
    assert first.occurred_at == odd.occurred_at and first.correlation_id == "corr-1"
    assert events[1].occurred_at == events[1].recorded_at
    assert verify(store).events == 7


def test_command_row_and_request_hash_match_the_reference(db_url: str) -> None:
    store = fresh_store(db_url)
    appends = [
        StreamAppend("S-1", 0, [NewEvent("A", {"x": AWKWARD}, reason="r", occurred_at="o"),
                                NewEvent("B", {"y": [1, 2]}, schema_version=2)]),
        StreamAppend("study", None, [NewEvent(f"C {AWKWARD}", {})]),
    ]
    context = AppendContext(actor=AWKWARD, role="coordinator", command_id="cmd-ref")
    result = store.append_streams(appends, context)
    request_hash, stored_result = command_row(store, "cmd-ref")
    assert request_hash == reference_request_hash(appends, context)
    assert stored_result == canonical_json(result.to_json())
    assert result.positions == (1, 2, 3) and result.versions == {"S-1": 2, "study": 1}
    again = store.append_streams(appends, context)  # the same arguments: the first result
    assert again.duplicate and again.positions == result.positions
    assert store.last_position() == 3


def test_a_repeat_is_answered_even_if_its_payload_cannot_be_serialised(db_url: str) -> None:
    """With the caller's request hash, a repeat returns the first result before the payload is
    ever needed; a new command with such a payload fails and writes nothing."""
    store = fresh_store(db_url)
    context = AppendContext(actor="a", role="coordinator", command_id="c-9", request_hash="h" * 64)
    first = store.append("S-1", 0, [NewEvent("T", {"v": 1})], context)
    repeat = store.append("S-1", 0, [NewEvent("T", {"v": float("nan")})], context)
    assert repeat.duplicate and repeat.positions == first.positions
    other = AppendContext(actor="a", role="coordinator", command_id="c-10", request_hash="h" * 64)
    with pytest.raises(ValueError):
        store.append("S-1", 1, [NewEvent("T", {"v": float("nan")})], other)
    with pytest.raises(ValueError):
        store.append("S-1", 1, [NewEvent("T", {"v": float("nan")})],
                     AppendContext(actor="a", role="coordinator"))
    assert store.last_position() == 1 and store.find_command("c-10") is None


def test_a_large_append_is_one_atomic_call(db_url: str) -> None:
    store = fresh_store(db_url)
    count = 2 * SQLITE_ROWS_PER_INSERT + 37  # whole multi-row statements and a remainder
    result = store.append("S-1", 0, [NewEvent("T", {"i": i}) for i in range(count)],
                          AppendContext(actor="a", role="coordinator"))
    assert result.positions == tuple(range(1, count + 1))
    events = store.read_stream("S-1")
    assert [e.payload["i"] for e in events] == list(range(count))
    assert [e.version for e in events] == list(range(1, count + 1))
    with pytest.raises(ConcurrencyConflict):
        store.append("S-1", 0, [NewEvent("T", {"i": i}) for i in range(count)],
                     AppendContext(actor="a", role="coordinator"))
    assert store.last_position() == count
    assert verify(store).events == count


def test_read_batches_are_bounded_and_can_be_abandoned(db_url: str) -> None:
    store = fresh_store(db_url)
    store.append("S-1", 0, [NewEvent("T", {"i": i}) for i in range(23)],
                 AppendContext(actor="a", role="coordinator"))
    sizes = [len(batch) for batch in store.read_batches(batch_size=5)]
    assert sizes == [5, 5, 5, 5, 3]
    assert [len(b) for b in store.read_batches(after=20, batch_size=3)] == [3]
    assert list(store.read_batches(after=23)) == []
    for _ in range(12):  # more abandoned readers than the pool keeps connections
        batches = store.read_batches(batch_size=4)
        assert len(next(batches)) == 4
        batches.close()
    store.append("S-1", 23, [NewEvent("T", {})], AppendContext(actor="a", role="coordinator"))
    assert [e.position for e in store.read_all(after=21, batch_size=1)] == [22, 23, 24]


def _append_with_retries(store: EventStore, stream: str, worker: int, count: int) -> None:
    for i in range(count):
        while True:
            try:
                store.append(stream, store.stream_version(stream),
                             [NewEvent("T", {"w": worker, "i": i})],
                             AppendContext(actor=f"w{worker}", role="coordinator"))
                break
            except ConcurrencyConflict:
                continue


def test_threads_share_one_pooled_engine(db_url: str) -> None:
    store = fresh_store(db_url)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            _append_with_retries(store, "SHARED", worker, 15)
            _append_with_retries(store, f"W-{worker}", worker, 5)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert [e.version for e in store.read_stream("SHARED")] == list(range(1, 91))
    assert [e.position for e in store.read_all()] == list(range(1, 121))
    assert verify(store).events == 120


def _child_appends(store: EventStore, queue: Any) -> None:
    try:
        inherited = store.engine.pool.checkedin()  # type: ignore[attr-defined]
        store.append("S-CHILD", 0, [NewEvent("T", {"pid": os.getpid()})],
                     AppendContext(actor="child", role="coordinator"))
        queue.put(("ok", inherited, store.last_position()))
    except BaseException as error:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(error)))


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX only")
def test_a_forked_child_opens_its_own_connections(db_url: str) -> None:
    """The parent's pooled connections are not inherited for use: the child's pools start
    empty (engine.py), so parent and child append through separate connections."""
    store = fresh_store(db_url)
    store.append("S-PARENT", 0, [NewEvent("T", {})], AppendContext("parent", "coordinator"))
    assert store.engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_appends, args=(store, queue))
    child.start()
    outcome = queue.get(timeout=60)
    child.join(timeout=60)
    assert outcome == ("ok", 0, 2) and child.exitcode == 0
    store.append("S-PARENT", 1, [NewEvent("T", {})], AppendContext("parent", "coordinator"))
    assert [(e.stream_id, e.position) for e in store.read_all()] == [
        ("S-PARENT", 1), ("S-CHILD", 2), ("S-PARENT", 3)]
    assert verify(store).events == 3


def test_the_logged_lines_follow_the_level(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Filtered out (the CLI's default, warning) nothing is written; at info every event is."""
    from cli.logging_setup import configure

    store = fresh_store(db_url)
    configure("warning", sys.stderr)
    store.append("S-1", 0, [NewEvent("T", {}), NewEvent("T", {})], AppendContext("a", "c"))
    assert capsys.readouterr().err == ""
    configure("info", sys.stderr)
    store.append("S-1", 2, [NewEvent("T", {}), NewEvent("U", {})], AppendContext("a", "c"))
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(x["event"], x["version"], x["type"], x["position"]) for x in lines] == [
        ("event appended", 3, "T", 3), ("event appended", 4, "U", 4)]


def _terminate_other_backends(url: str) -> int:
    """Kill every server process of this database but the caller's (a restart, as a pooled
    connection sees it) and wait until they are gone."""
    import time

    import psycopg

    from tests.support.pg import admin_dsn

    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_dsn(dbname), autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        for _ in range(200):
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.01)
    return int(killed[0]) if killed else 0


@pytest.mark.postgres
def test_connections_the_server_dropped_are_replaced_without_an_error(postgres_url: str) -> None:
    """The store checks a pooled connection by its own first round trip instead of a ping and
    retries on a fresh one; everyone else's checkouts are pinged as with pool_pre_ping."""
    app = build_app(postgres_url)
    upgrade(app.engine)
    store = app.store

    def fill_pool() -> None:  # two idle pooled connections, both about to be killed
        with app.engine.connect() as one, app.engine.connect() as two:
            one.exec_driver_sql("SELECT 1")
            two.exec_driver_sql("SELECT 1")

    fill_pool()
    assert _terminate_other_backends(postgres_url) >= 2
    result = store.append("S-1", 0, [NewEvent("T", {})], AppendContext("a", "coordinator"))
    assert result.positions == (1,) and not result.duplicate
    fill_pool()
    _terminate_other_backends(postgres_url)
    assert [e.version for e in store.read_stream("S-1")] == [1]
    fill_pool()
    _terminate_other_backends(postgres_url)
    assert [e.position for e in store.read_all()] == [1]
    fill_pool()
    _terminate_other_backends(postgres_url)
    with app.engine.connect() as conn:  # SQLAlchemy's own users: pinged, then replaced
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 1
    assert store.find_command(result.command_id) is not None
    fill_pool()
    _terminate_other_backends(postgres_url)
    read, rows = store.read_streams_since([("S-1", 0)], also=[("SELECT count(*) FROM events", ())])
    assert [e.version for e in read[0]] == [1] and rows == [[(1,)]]  # fetch_many: pipelined
    assert verify(store).events == 1
    app.engine.dispose()


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [1.5, null, true], "c": {"d": "\\u00e9"}}', ' {"a": 1}', '{"a": 1} \n',
    '{"a": 1}x', '{"a": 1}{"b": 2}', '{', '{"a": NaN}', '[1]', '"text"', "", b'{"a": 1}',
    canonical_json({"weight_kg": 58.5, "flags": [True, False], "note": "line\nbreak"}),
])
def test_payload_decoding_is_json_loads(text: str | bytes) -> None:
    """A stored payload is decoded by the scanner directly when it is an object with nothing
    around it (events/envelope.py `_loads`); whatever the text, the value or the error is
    exactly `json.loads`'s."""
    from events.envelope import _loads

    def outcome(decode: Any) -> tuple[str, Any]:
        try:
            return "value", decode(text)
        except (TypeError, ValueError) as error:
            return type(error).__name__, str(error)

    assert repr(outcome(_loads)) == repr(outcome(json.loads))
