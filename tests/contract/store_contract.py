"""The store's contract: one abstract case, subclassed once per backend (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from events.chain import Root, make_seal, parse_seal, verify, verify_against_seal
from events.envelope import GENESIS_HASH, NewEvent
from events.errors import (
    ConcurrencyConflict,
    IdempotencyMismatch,
    IntegrityFailure,
    InvalidStreamId,
)
from events.schema import current_version, latest_version, upgrade
from events.seals import SealKey
from events.store import AppendContext, EventStore, StreamAppend
from tests.support.clock import FakeClock
from tests.support.tamper import rechain_with_payload
from workflow.bootstrap import build_app

ROOT = Path(__file__).resolve().parents[2]
KEY = SealKey(Ed25519PrivateKey.generate())


def ctx(command_id: str | None = None, actor: str = "alice") -> AppendContext:
    return AppendContext(actor=actor, role="coordinator", site="PKU3", command_id=command_id)


def ev(kind: str = "Tested", **payload: object) -> NewEvent:
    return NewEvent(kind, payload)


class StoreContract:
    """Subclasses provide the `url` fixture."""

    @pytest.fixture
    def url(self) -> Iterator[str]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield ""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock("2025-03-01T08:00:00+00:00")

    @pytest.fixture
    def store(self, url: str, clock: FakeClock) -> EventStore:
        app = build_app(url, store_clock=clock)
        upgrade(app.engine)
        return app.store

    def raw(self, store: EventStore, sql: str) -> None:
        with store.engine.begin() as conn:
            for statement in sql.split(";"):
                conn.exec_driver_sql(statement)

    def disable_guards(self, store: EventStore) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ------------------------------------------------------------- schema
    def test_init_is_idempotent(self, store: EventStore) -> None:
        assert current_version(store.engine) == latest_version()
        assert upgrade(store.engine) == []
        with store.engine.connect() as conn:
            columns = [c["name"] for c in sa.inspect(conn).get_columns("events")]
        assert columns == [
            "position", "stream_id", "version", "type", "schema_version", "payload",
            "occurred_at", "recorded_at", "actor", "role", "site", "reason", "command_id",
            "correlation_id", "causation_id", "prev_hash", "hash", "chain_hash",
        ]

    # ------------------------------------------------------------- appending
    def test_append_numbers_versions_and_positions(self, store: EventStore) -> None:
        first = store.append("S-001", 0, [ev(a=1), ev(a=2)], ctx())
        second = store.append("S-002", 0, [ev(b=1)], ctx())
        third = store.append("S-001", 2, [ev(a=3)], ctx())
        assert first.positions == (1, 2) and second.positions == (3,)
        assert third.positions == (4,) and third.versions == {"S-001": 3}
        events = store.read_stream("S-001")
        assert [e.version for e in events] == [1, 2, 3]
        assert [e.payload for e in events] == [{"a": 1}, {"a": 2}, {"a": 3}]
        assert events[0].prev_hash == GENESIS_HASH
        assert events[1].prev_hash == events[0].hash
        assert json.loads(events[0].payload_text) == {"a": 1}

    def test_stale_expected_version_conflicts_and_writes_nothing(self, store: EventStore) -> None:
        store.append("S-001", 0, [ev()], ctx())
        with pytest.raises(ConcurrencyConflict) as caught:
            store.append("S-001", 0, [ev(), ev()], ctx())
        assert caught.value.actual == 1 and caught.value.expected == 0
        assert store.last_position() == 1
        assert store.stream_version("S-001") == 1

    def test_multi_stream_append_is_atomic(self, store: EventStore) -> None:
        store.append("study", 0, [ev()], ctx())
        with pytest.raises(ConcurrencyConflict):
            store.append_streams(
                [StreamAppend("S-001", 0, [ev()]), StreamAppend("study", 0, [ev()])], ctx()
            )
        assert store.read_stream("S-001") == []
        result = store.append_streams(
            [StreamAppend("S-001", 0, [ev()]), StreamAppend("study", 1, [ev()])], ctx("c-1")
        )
        assert result.versions == {"S-001": 1, "study": 2}
        assert result.positions == (2, 3)

    def test_invalid_stream_id_is_refused(self, store: EventStore) -> None:
        for bad in ("s-001", "", "A" * 21, "reminders-", "x;drop table events"):
            with pytest.raises(InvalidStreamId):
                store.append(bad, 0, [ev()], ctx())
        assert store.last_position() == 0

    def test_repeated_command_id_appends_nothing_and_returns_first_result(
        self, store: EventStore, url: str
    ) -> None:
        first = store.append("S-001", 0, [ev(a=1)], ctx("cmd-1"))
        again = store.append("S-001", 0, [ev(a=1)], ctx("cmd-1"))
        assert again.duplicate and not first.duplicate
        assert again.positions == first.positions and again.versions == first.versions
        assert store.last_position() == 1
        # across a reconnect: a new engine, as after a crash and restart
        fresh = build_app(url).store
        assert fresh.append("S-001", 0, [ev(a=1)], ctx("cmd-1")).positions == first.positions
        assert fresh.find_command("cmd-1") is not None
        assert fresh.last_position() == 1

    def test_same_command_id_with_other_arguments_is_refused(self, store: EventStore) -> None:
        store.append("S-001", 0, [ev(a=1)], ctx("cmd-1"))
        with pytest.raises(IdempotencyMismatch):
            store.append("S-001", 1, [ev(a=2)], ctx("cmd-1"))
        assert store.last_position() == 1

    def test_recorded_at_never_decreases_even_if_the_clock_does(
        self, store: EventStore, clock: FakeClock
    ) -> None:
        store.append("S-001", 0, [ev()], ctx())
        clock.advance(hours=-5)
        store.append("S-001", 1, [ev()], ctx())
        first, second = store.read_stream("S-001")
        assert second.recorded_at == first.recorded_at
        assert first.occurred_at == first.recorded_at  # default occurred_at

    def test_occurred_at_and_reason_are_kept(self, store: EventStore) -> None:
        new = NewEvent("FormCorrected", {"f": 1}, occurred_at="2025-02-03T09:00:00+08:00",
                       reason="transcription error")
        store.append("S-001", 0, [new], ctx())
        stored = store.read_stream("S-001")[0]
        assert stored.occurred_at == "2025-02-03T09:00:00+08:00"
        assert stored.reason == "transcription error"
        assert stored.site == "PKU3" and stored.actor == "alice"

    def test_every_append_logs_stream_version_type_actor(self, store: EventStore) -> None:
        with capture_logs() as logs:
            store.append("S-001", 0, [ev("SubjectConsented")], ctx(actor="bob"))
        appended = [e for e in logs if e["event"] == "event appended"]
        assert appended == [{
            "event": "event appended", "log_level": "info", "stream": "S-001", "version": 1,
            "type": "SubjectConsented", "actor": "bob", "position": 1,
        }]

    # ------------------------------------------------------------- reading
    def test_readers(self, store: EventStore, clock: FakeClock) -> None:
        for i in range(25):
            store.append(f"S-{i % 3}", None, [ev(i=i)], ctx())
            clock.advance(minutes=1)
        everything = list(store.read_all(batch_size=7))
        assert [e.position for e in everything] == list(range(1, 26))
        assert [e.position for e in store.read_all(after=20)] == [21, 22, 23, 24, 25]
        assert [e.position for e in store.read_all(after=3, up_to=6)] == [4, 5, 6]
        assert [e.version for e in store.read_stream("S-1", up_to_version=3)] == [1, 2, 3]
        moment = everything[9].recorded_at
        assert [e.position for e in store.read_until(moment)] == list(range(1, 11))
        assert store.position_at("2000-01-01T00:00:00.000000Z") == 0
        heads = store.stream_heads()
        assert heads["S-0"][0] == 9 and heads["S-1"][0] == 8 and heads["S-2"][0] == 8

    def test_read_prefixed_reads_one_family_of_streams_in_position_order(
            self, store: EventStore) -> None:
        # ids sorting on both sides of the range: subject ids (capital letters) before it,
        # "study" after it; and a narrower prefix that leaves out another subject's stream
        for stream in ["reminders-S-2", "S-1", "reminders-S-1", "study", "reminders-S-2",
                       "REMINDERS-S-1", "reminders-T-1"]:
            store.append(stream, None, [ev(stream=stream)], ctx())
        found = store.read_prefixed("reminders-")
        assert [(e.position, e.stream_id, e.version) for e in found] == [
            (1, "reminders-S-2", 1), (3, "reminders-S-1", 1), (5, "reminders-S-2", 2),
            (7, "reminders-T-1", 1)]
        assert [e.position for e in store.read_prefixed("reminders-S-")] == [1, 3, 5]
        assert [e.position for e in store.read_prefixed("reminders-", after=3)] == [5, 7]
        assert store.read_prefixed("reminders-", after=7) == []
        with pytest.raises(ValueError):
            store.read_prefixed("")

    # ------------------------------------------------------------- refusals by the database
    @pytest.mark.parametrize("sql", [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "UPDATE commands SET result = '{}'",
        "DELETE FROM commands",
    ])
    def test_database_refuses_update_and_delete(self, store: EventStore, sql: str) -> None:
        store.append("S-001", 0, [ev(a=1)], ctx())
        with pytest.raises(sa.exc.DBAPIError) as caught:
            self.raw(store, sql)
        assert "append-only" in str(caught.value)
        assert store.read_stream("S-001")[0].payload == {"a": 1}

    # ------------------------------------------------------------- tamper evidence
    def seeded(self, store: EventStore) -> None:
        store.append("S-001", 0, [ev(a=1), ev(a=2), ev(a=3)], ctx())
        store.append("study", 0, [ev("SiteAdded", site="PKU3")], ctx())
        store.append("S-002", 0, [ev(b=1), ev(b=2)], ctx())
        verify(store)

    @pytest.mark.parametrize("sql, stream, version", [
        ("UPDATE events SET payload = '{\"a\":9}' WHERE stream_id='S-001' AND version=2",
         "S-001", 2),
        ("UPDATE events SET actor = 'mallory' WHERE stream_id='S-002' AND version=1",
         "S-002", 1),
        ("UPDATE events SET occurred_at = '2020-01-01' WHERE stream_id='study'", "study", 1),
        ("DELETE FROM events WHERE stream_id='S-001' AND version=2", "S-001", 2),
        ("UPDATE events SET version = version + 10 WHERE stream_id='S-001' AND version > 1;"
         "UPDATE events SET version = 15 - version WHERE stream_id='S-001' AND version > 10",
         "S-001", 2),
    ], ids=["payload", "field", "occurred_at", "removed", "reordered"])
    def test_verify_names_the_first_bad_stream_and_version(
        self, store: EventStore, sql: str, stream: str, version: int
    ) -> None:
        self.seeded(store)
        self.disable_guards(store)
        self.raw(store, sql)
        with pytest.raises(IntegrityFailure) as caught:
            verify(store)
        assert (caught.value.stream_id, caught.value.version) == (stream, version)
        assert stream in str(caught.value)

    def test_removal_from_a_stream_end_is_caught_by_its_command_and_the_seal(
        self, store: EventStore
    ) -> None:
        self.seeded(store)
        seal = parse_seal(json.dumps(make_seal(store, KEY)), "seal.json", KEY.public)
        self.disable_guards(store)
        self.raw(store, "DELETE FROM events WHERE stream_id='S-002' AND version=2")
        with pytest.raises(IntegrityFailure, match="events of stream S-002 are missing"):
            verify(store)  # the command row names the event that is gone
        self.raw(store, "DELETE FROM commands")  # and without the command rows …
        verify(store)  # … a clean cut at the end leaves a valid chain …
        with pytest.raises(IntegrityFailure) as caught:  # … which the seal exposes
            verify_against_seal(store, seal)
        assert "ends at position 5, before position 6" in str(caught.value)

    def test_a_whole_stream_removed_from_the_middle_is_named(self, store: EventStore) -> None:
        self.seeded(store)
        store.append("S-003", 0, [ev(c=1)], ctx())
        self.disable_guards(store)
        self.raw(store, "DELETE FROM events WHERE stream_id='study'")
        with pytest.raises(IntegrityFailure) as caught:
            verify(store)
        message = str(caught.value)
        assert "position 4 is missing" in message and "stream study" in message
        assert "global chain does not link it to position 3" in message

    def test_seal_file_edits_are_detected(self, store: EventStore) -> None:
        self.seeded(store)
        seal = make_seal(store, KEY)
        assert verify_against_seal(store, parse_seal(json.dumps(seal), "s", KEY.public)
                                   ).events == 6
        assert set(seal) == {"format", "root", "streams", "position", "sealed_at", "key_id",
                             "signature"}
        edited = json.loads(json.dumps(seal))
        edited["streams"]["S-001"]["version"] = 2
        with pytest.raises(IntegrityFailure, match="altered"):
            parse_seal(json.dumps(edited), "s", KEY.public)
        with pytest.raises(IntegrityFailure, match="not a readable seal"):
            parse_seal(json.dumps(seal)[:40], "s", KEY.public)
        other = SealKey(Ed25519PrivateKey.generate())
        with pytest.raises(IntegrityFailure, match="another key"):
            parse_seal(json.dumps(make_seal(store, other)), "s", KEY.public)
        unsigned = {k: v for k, v in seal.items() if k not in ("signature", "format")}
        with pytest.raises(IntegrityFailure, match="carries no signature"):
            parse_seal(json.dumps(unsigned), "s", KEY.public)

    def test_a_consistent_rechain_is_caught_by_an_earlier_root(self, store: EventStore) -> None:
        """Full write access: edit a payload, rehash its stream and the global chain; verify
        passes, a fresh seal would too, but a root kept from before does not."""
        self.seeded(store)
        root = Root(verify(store).root, 6)
        self.disable_guards(store)
        rechain_with_payload(store, "S-001", 2, '{"a":99}')
        assert verify(store).position == 6  # consistent again
        with pytest.raises(IntegrityFailure, match="does not pass through the root"):
            verify(store, root=root)
        assert verify(store, root=Root(verify(store).root)).root_checked is not None

    # ------------------------------------------------------------- real concurrency
    def test_eight_processes_append_while_a_follower_reads(
        self, store: EventStore, url: str
    ) -> None:
        workers, count = 8, 12
        seen: list[int] = []
        done = threading.Event()

        def follow() -> None:
            checkpoint = 0
            while True:
                finished = done.is_set()
                for event in store.read_all(after=checkpoint, batch_size=50):
                    seen.append(event.position)
                    checkpoint = event.position
                if finished:
                    return
                time.sleep(0.005)  # polling interval of the follower, not waiting for time

        follower = threading.Thread(target=follow)
        follower.start()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.support.appender", url, str(w), str(count)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for w in range(workers)
        ]
        reported: list[int] = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            reported += [p for line in out.splitlines() for p in json.loads(line)["positions"]]
        done.set()
        follower.join(timeout=30)
        total = workers * count * 2
        assert sorted(reported) == list(range(1, total + 1))
        assert seen == list(range(1, total + 1))  # every event once, in order
        assert Counter(e.stream_id for e in store.read_all())["SHARED"] == workers * count
        for stream in ["SHARED", *[f"W-{w}" for w in range(workers)]]:
            versions = [e.version for e in store.read_stream(stream)]
            assert versions == list(range(1, len(versions) + 1))
        assert verify(store).events == total

    def test_follower_never_skips_a_late_commit(self, store: EventStore) -> None:
        """Writer A appends and stays open; B appends (waiting, appends are serialised); the
        follower reads; A commits: the follower still gets A's event, then B's."""
        a_written, release_a = threading.Event(), threading.Event()
        writer_a = EventStore(store.engine, clock=store.clock)
        original = writer_a._write

        def write_and_wait(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = original(*args, **kwargs)
            a_written.set()
            assert release_a.wait(timeout=30)
            return result

        writer_a._write = write_and_wait  # type: ignore[method-assign]
        results: dict[str, object] = {}
        thread_a = threading.Thread(
            target=lambda: results.setdefault("a", writer_a.append("S-A", 0, [ev()], ctx())))
        thread_b = threading.Thread(
            target=lambda: results.setdefault("b", store.append("S-B", 0, [ev()], ctx())))
        thread_a.start()
        assert a_written.wait(timeout=30)
        thread_b.start()
        time.sleep(0.2)  # give B the chance to commit first if the store let it
        early = [e.position for e in store.read_all()]
        release_a.set()
        thread_a.join(timeout=30)
        thread_b.join(timeout=30)
        late = [(e.position, e.stream_id) for e in store.read_all(after=max(early, default=0))]
        assert early == []
        assert late == [(1, "S-A"), (2, "S-B")]
