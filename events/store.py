"""The append-only event store: atomic, optimistic, idempotent appends.

Appends are serialised: SQLite by `BEGIN IMMEDIATE` (the database write lock), PostgreSQL by a
transaction-level advisory lock taken before anything is read. Under that lock the appender
reads the stream heads and the last position, numbers the new events `last + 1 …`, hashes
them and commits; the lock is released only after the commit is visible. Commit order is
therefore position order, and a follower reading `position > checkpoint` can never skip an
event that commits late with a lower position (the high-water-mark problem of sequences
under concurrent writers). An advisory lock, unlike `LOCK TABLE … IN EXCLUSIVE MODE`, needs no
table privilege, so it works for per-person logins (docs/event-store.md). On PostgreSQL the
events and the command row are inserted by one call of `trialflow_append`
(events/migrations/v003_guards.py), which takes the same lock, checks positions, versions,
previous hashes and, for a personal login, the actor, and computes the global chain; on SQLite
the store computes the chain and the `events_guard_insert` trigger checks the rest.

The store talks to the driver's own connection (`sqlite3` / `psycopg`), taken from the
engine's pool (`events.translate.driver_connection`): its statements are plain SQL text with
no SQLAlchemy construct to compile and no result to process, so the engine only pools and
configures the connections. Under the lock one statement reads everything an append needs
(the last position and time, the command id's earlier result, each stream's head). On
PostgreSQL BEGIN, the lock and that read go out together, as do the inserts and COMMIT
(psycopg's pipeline mode), so an append costs two round trips; the pool's checkout ping is
skipped, since the first of them proves the connection alive, and an append or read whose
connection turns out dead before it answered is retried on a fresh one (engine.py).
Reads of the whole log run one query and fetch it a batch at a time (a server-side cursor on
PostgreSQL), so memory stays bounded by the batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Final, TypeVar

import structlog
from sqlalchemy import Engine

from events.envelope import (
    ENVELOPE_FIELDS,
    GENESIS_HASH,
    NewEvent,
    RecordedEvent,
    canonical_json,
    canonical_value,
    from_rows,
)
from events.errors import (
    ClockAhead,
    ConcurrencyConflict,
    IdempotencyMismatch,
    StoreUnavailable,
)
from events.migrations.v003_guards import APPEND_FUNCTION
from events.streams import check_stream_id
from events.translate import driver_connection, lost_connection

_T = TypeVar("_T")

CLOCK_TOLERANCE: Final = timedelta(seconds=60)  # writer's clock vs the store's (host skew)
APPEND_LOCK_KEY: Final = 7_320_002  # pg_advisory_xact_lock id shared by every appender
ANY_VERSION: Final = None
_COLUMNS: Final = ", ".join(ENVELOPE_FIELDS)
_INSERT_COLUMNS: Final = _COLUMNS + ", chain_hash"  # the envelope, then the global chain
_INSERTED: Final = len(ENVELOPE_FIELDS) + 1
_READ_CURSOR: Final = "trialflow_read_all"  # PostgreSQL server-side cursor of read_batches
SQLITE_ROWS_PER_INSERT: Final = 200  # rows per multi-row INSERT statement on SQLite
_UNSET: Final = object()

log = structlog.get_logger("trialflow.events")

_sha256 = hashlib.sha256
_encode = canonical_value


def format_utc(moment: datetime) -> str:
    """Recorded times: UTC, microseconds, `Z`; fixed width, so text order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment.year >= 1000:  # the same text as strftime below, in a third of the time
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StreamAppend:
    stream_id: str
    expected_version: int | None  # None: append whatever the stream's version
    events: Sequence[NewEvent]


@dataclass(frozen=True)
class Unchanged:
    """A stream an append's decision read but does not write: the append is refused
    (ConcurrencyConflict) when an event of it after `version` is there, except events of the
    types in `ignoring` (ones that cannot change the decision)."""

    stream_id: str
    version: int
    ignoring: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LockedAppend:
    """What `EventStore.append_under_lock`'s `build` returns: the arguments of an append."""

    appends: Sequence[StreamAppend]
    context: AppendContext
    also: Sequence[Statement] = ()
    expected_last_position: int | None = None
    unchanged: Sequence[Unchanged] = ()


@dataclass(frozen=True)
class AppendContext:
    actor: str
    role: str
    site: str | None = None
    command_id: str | None = None
    correlation_id: str | None = None
    request_hash: str | None = None  # hash of the command's arguments, for idempotency
    # The moment the writer decided at (its "now"): refused when ahead of the store's clock
    # (the database's, or the injected one) by more than CLOCK_TOLERANCE.
    acted_at: datetime | None = None


@dataclass(frozen=True)
class Statement:
    """A statement run inside an append's transaction, after its events are inserted and only
    when the append is not a repeat (e.g. a credential row that must change with its event).
    `sql` uses `?` marks; datetimes are bound as UTC text on SQLite."""

    sql: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class AppendResult:
    command_id: str
    positions: tuple[int, ...]
    versions: dict[str, int]
    recorded_at: str
    duplicate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "positions": list(self.positions),
            "versions": dict(self.versions),
            "recorded_at": self.recorded_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, duplicate: bool) -> AppendResult:
        return cls(
            command_id=data["command_id"],
            positions=tuple(data["positions"]),
            versions=dict(data["versions"]),
            recorded_at=data["recorded_at"],
            duplicate=duplicate,
        )


@dataclass(frozen=True)
class CommandRecord:
    command_id: str
    request_hash: str
    result: AppendResult


@dataclass
class _Head:
    version: int
    hash: str


def time_ordered_id(millis: int | None = None) -> str:
    """A new command id: a UUID of version 7 (RFC 9562), the Unix time in milliseconds
    (`millis`, default now) then 74 random bits. Unique as a random UUID is, and an id of a
    later millisecond sorts after every id of the earlier ones (within one millisecond their
    order is random), so the `commands` key takes them at its right edge: a random id lands on
    a random leaf, which splits and is one more page for every commit to write and sync
    (issue 17)."""
    if millis is None:
        millis = time.time_ns() // 1_000_000
    value = (millis & (1 << 48) - 1) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # the version, 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # the variant, RFC 9562
    text = f"{value:032x}"  # as str(uuid.UUID(int=value)) writes it, without the object
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# The payloads of an append as their canonical JSON text, one list per StreamAppend; None when
# they could not be serialised before the lock (see `_payload_texts`).
_Texts = list[list[str]] | None


@dataclass
class EventStore:
    """Append and read events. `clock` overrides the database clock (tests, simulations);
    `new_id` makes the ids of commands that bring none (default: `time_ordered_id`; the demo
    passes a seeded one so that the same seed gives the same hashes)."""

    engine: Engine
    clock: Callable[[], datetime] | None = None
    new_id: Callable[[], str] = field(default=lambda: time_ordered_id())
    _sqlite: bool = field(init=False)
    _mark: str = field(init=False)
    _insert_event: str = field(init=False)
    _insert_command: str = field(init=False)
    _insert_event_and_command: str = field(init=False)
    _state_sql: dict[tuple[int, tuple[int, ...]], str] = field(init=False)
    _multi_insert: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._mark = "?" if self._sqlite else "%s"
        marks = ", ".join([self._mark] * _INSERTED)
        self._insert_event = f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES ({marks})"
        self._insert_command = (
            "INSERT INTO commands (command_id, request_hash, result, recorded_at) VALUES "
            f"({self._mark}, {self._mark}, {self._mark}, {self._mark})"
        )
        # PostgreSQL: one call of the append function (events/migrations/v003_guards.py), the
        # only door to the log for every role but the owner; it checks and chains again.
        self._insert_event_and_command = (
            f"SELECT {APPEND_FUNCTION}(%s::bigint[], %s::text[], %s::integer[], %s::text[], "
            "%s::integer[], %s::text[], %s::text[], %s, %s, %s, %s, %s::text[], %s, %s, "
            "%s::text[], %s::text[], %s::text[], %s, %s)"
        )
        self._state_sql = {}
        self._multi_insert = {}

    # ---------------------------------------------------------------- appending
    def append(
        self,
        stream_id: str,
        expected_version: int | None,
        events: Sequence[NewEvent],
        context: AppendContext,
    ) -> AppendResult:
        return self.append_streams([StreamAppend(stream_id, expected_version, events)], context)

    def append_streams(
        self,
        appends: Sequence[StreamAppend],
        context: AppendContext,
        *,
        also: Sequence[Statement] = (),
        expected_last_position: int | None = None,
        unchanged: Sequence[Unchanged] = (),
    ) -> AppendResult:
        """Append to one or more streams atomically: all or nothing. `also` runs in the same
        transaction; `expected_last_position` refuses the append (ConcurrencyConflict on the
        pseudo-stream `log`) when anything was appended since the caller read that head;
        `unchanged` refuses it (ConcurrencyConflict on that stream) when a stream the decision
        read has moved on (`Unchanged`): checked under the append lock, in the append's
        transaction, so state a caller cached is never trusted unchecked."""
        for item in appends:
            check_stream_id(item.stream_id)
        command_id = context.command_id or self.new_id()
        # Serialising the payloads needs no lock: done first, it also shortens the lock's hold.
        texts = _payload_texts(appends, strict=context.request_hash is None)
        request_hash = context.request_hash or _request_hash(appends, context, texts)
        args = (appends, context, command_id, request_hash, texts, tuple(also),
                expected_last_position, tuple(unchanged))
        if self._sqlite:
            with driver_connection(self.engine) as driver:  # translates the driver's errors
                result, rows = self._append_sqlite(driver, *args)
        else:
            attempts = self._attempts()
            for attempt in range(1, attempts + 1):
                trip = _Trip()
                token = _TRIP.set(trip)
                try:
                    with driver_connection(self.engine, unpinged=True) as driver:
                        result, rows = self._append_postgres(driver, *args)
                    break
                except StoreUnavailable as error:
                    # The connection was dead before it answered (a server restart, say):
                    # nothing was sent but BEGIN, the lock and the read, so try a fresh one,
                    # as the pool's ping would have.
                    if trip.answered or attempt == attempts or not lost_connection(error):
                        raise
                finally:
                    _TRIP.reset(token)
        if rows:
            _log_appended(rows)
        return result

    def append_under_lock(self, build: Callable[[], LockedAppend]) -> AppendResult:
        """Take the append lock first, then call `build` and append what it returns in the
        same transaction. While the lock is held nothing else can be appended, so what `build`
        reads (through other connections: committed data, and nothing more can commit) stays
        current and its versions cannot conflict. For a writer that lost the optimistic race
        too often (a stream many writers append to, such as the study's enrolment places); it
        holds the lock while `build` decides, so it is the exception, not the rule. `build`
        must only read. Its reads take other connections of the engine's pool while this one
        holds the lock: threads sharing one engine (not the CLI's one process per command, nor
        the scheduler's one executor per pass) must leave the pool a connection to spare."""
        if self._sqlite:
            with driver_connection(self.engine) as driver:
                cursor = driver.cursor()
                self._lock(cursor)
                try:
                    result, rows = self._write(cursor, *self._built(build()))
                    driver.commit()
                except BaseException:
                    _rollback(driver)
                    raise
        else:
            with driver_connection(self.engine) as driver, _autocommit(driver):
                cursor = driver.cursor()
                try:
                    self._lock(cursor)
                    result, rows = self._write(cursor, *self._built(build()))
                    cursor.execute("COMMIT")
                except BaseException:
                    _rollback(driver)
                    raise
        if rows:
            _log_appended(rows)
        return result

    def _built(self, spec: LockedAppend) -> tuple[Any, ...]:
        """The arguments of `_write` for what a `build` returned."""
        for item in spec.appends:
            check_stream_id(item.stream_id)
        context = spec.context
        command_id = context.command_id or self.new_id()
        texts = _payload_texts(spec.appends, strict=context.request_hash is None)
        request_hash = context.request_hash or _request_hash(spec.appends, context, texts)
        return (spec.appends, context, command_id, request_hash, texts, tuple(spec.also),
                spec.expected_last_position, tuple(spec.unchanged))

    def _attempts(self) -> int:
        return _attempts(self.engine)

    def _append_sqlite(
        self, driver: Any, *args: Any
    ) -> tuple[AppendResult, list[tuple[Any, ...]]]:
        cursor = driver.cursor()
        self._lock(cursor)
        try:
            written = self._write(cursor, *args)
            driver.commit()
        except BaseException:
            _rollback(driver)
            raise
        return written

    def _append_postgres(
        self, driver: Any, *args: Any
    ) -> tuple[AppendResult, list[tuple[Any, ...]]]:
        # Autocommit, so the transaction is our own BEGIN … COMMIT, and pipeline mode: BEGIN,
        # the lock and the read go out together (the server runs them in order, so the read's
        # snapshot is taken once the lock is held), then the inserts and COMMIT together.
        # Two round trips instead of six.
        with _autocommit(driver):
            cursor = driver.cursor()  # one cursor for all (each execute's result is read
            # before the next, or not at all)
            try:
                with driver.pipeline():
                    self._lock(cursor)
                    written = self._write(cursor, *args)
                    cursor.execute("COMMIT")
            except BaseException:
                _rollback(driver)
                raise
        return written

    def _lock(self, cursor: Any) -> None:
        """Open the append's transaction holding the append lock, before anything is read."""
        if self._sqlite:
            cursor.execute("BEGIN IMMEDIATE")  # the database's write lock
        else:  # released by COMMIT or ROLLBACK
            cursor.execute("BEGIN")
            cursor.execute(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")

    def _write(
        self,
        cursor: Any,
        appends: Sequence[StreamAppend],
        context: AppendContext,
        command_id: str,
        request_hash: str,
        texts: _Texts,
        also: tuple[Statement, ...] = (),
        expected_last_position: int | None = None,
        unchanged: tuple[Unchanged, ...] = (),
    ) -> tuple[AppendResult, list[tuple[Any, ...]]]:
        """Under the append lock: read the log's state, then either return the command's first
        result (a repeat), or check the expected versions, the writer's clock and the log's
        head, and insert the events, the command and the `also` statements. Returns the result
        and the inserted rows (none for a repeat)."""
        streams = list(dict.fromkeys(item.stream_id for item in appends))
        checks: list[Any] = []
        for check in unchanged:
            checks += [check.stream_id, check.version]
            checks += (sorted(check.ignoring) if self._sqlite else [sorted(check.ignoring)])
        shape = (len(streams), tuple(len(check.ignoring) for check in unchanged))
        row = cursor.execute(self._state_query(*shape), (command_id, *streams, *checks)
                             ).fetchone()
        _answered()  # the connection is alive: from here on a lost one is not retried
        last_position = 0 if row[0] is None else int(row[0])
        last_recorded = "" if row[1] is None else str(row[1])
        if row[2] is not None:  # this command id was carried out before
            earlier = AppendResult.from_json(json.loads(row[3]), duplicate=True)
            return _repeat(CommandRecord(command_id, str(row[2]), earlier), request_hash), []
        if texts is None:  # a payload is not serialisable: raise here, under the lock
            texts = _payload_texts(appends, strict=True)
            assert texts is not None
        if self.clock is not None:
            store_now = self.clock()
        elif self._sqlite:  # an embedded database: its clock is this host's clock
            store_now = datetime.now(UTC)
        else:
            store_now = row[4]  # clock_timestamp(), read under the lock
        acted_at = context.acted_at
        if acted_at is not None and acted_at > store_now + CLOCK_TOLERANCE:
            raise ClockAhead(acted_at, store_now)
        if expected_last_position is not None and expected_last_position != last_position:
            raise ConcurrencyConflict("log", expected_last_position, last_position)
        now = format_utc(store_now)
        recorded_at = max(now, last_recorded)
        heads: dict[str, _Head] = {}
        # SQLite: the global chain is computed here (PostgreSQL's append function does it)
        chain = (GENESIS_HASH if row[4] is None else str(row[4])) if self._sqlite else None
        column = 5  # the first head, after the tail, the command and the chain (the clock)
        for stream in streams:
            version_value, hash_value = row[column], row[column + 1]
            heads[stream] = (
                _Head(0, GENESIS_HASH) if version_value is None
                else _Head(int(version_value), str(hash_value))
            )
            column += 2
        for check in unchanged:
            if row[column] is not None:  # the first relevant event since the version read
                raise ConcurrencyConflict(check.stream_id, check.version, int(row[column]))
            column += 1
        correlation_id = context.correlation_id or command_id
        actor, role, site = context.actor, context.role, context.site
        rows: list[tuple[Any, ...]] = []
        versions: dict[str, int] = {}
        position = last_position
        # The hash of an event is SHA-256 of the canonical JSON of its envelope without `hash`
        # (events.envelope.canonical_bytes: sorted keys, compact separators). It is written
        # out here directly: the values the events of an append share are encoded once, None
        # is `null`, our own hex digests need no escaping, and `canonical_value` does the
        # rest. tests/contract checks the result against `event_hash` (verify() after every
        # append scenario, and a test of awkward values).
        encode = _encode
        shared_head = f'{{"actor":{encode(actor)},"causation_id":'
        shared_ids = (
            f',"command_id":{encode(command_id)},"correlation_id":{encode(correlation_id)},'
            '"occurred_at":'
        )
        recorded_j = encode(recorded_at)
        shared_tail = f',"recorded_at":{recorded_j},"role":{encode(role)},"schema_version":'
        site_j = encode(site)
        # the events of an append mostly share their type and schema version
        last_kind: object = _UNSET
        last_schema: object = _UNSET
        kind_j = schema_j = ""
        for item, payloads in zip(appends, texts, strict=True):
            stream_id = item.stream_id
            head = heads[stream_id]
            if item.expected_version is not None and item.expected_version != head.version:
                raise ConcurrencyConflict(stream_id, item.expected_version, head.version)
            stream_part = f',"site":{site_j},"stream_id":{encode(stream_id)},"type":'
            version, prev_hash = head.version, head.hash
            prev_j = encode(prev_hash)
            for new, payload in zip(item.events, payloads, strict=True):
                position += 1
                version += 1
                causation, reason, kind, schema = (
                    new.causation_id, new.reason, new.type, new.schema_version
                )
                if kind is not last_kind:
                    last_kind, kind_j = kind, encode(kind)
                if schema is not last_schema:
                    last_schema, schema_j = schema, encode(schema)
                occurred_at = new.occurred_at or recorded_at
                text = (
                    f'{shared_head}{"null" if causation is None else encode(causation)}'
                    f'{shared_ids}'
                    f'{recorded_j if occurred_at is recorded_at else encode(occurred_at)}'
                    f',"payload":{encode(payload)},"position":{position},"prev_hash":{prev_j},'
                    f'"reason":{"null" if reason is None else encode(reason)}'
                    f'{shared_tail}{schema_j}{stream_part}{kind_j},"version":{version}}}'
                )
                digest = _sha256(text.encode()).hexdigest()
                if chain is not None:
                    chain = _sha256((chain + digest).encode()).hexdigest()  # envelope.link
                rows.append((
                    position, stream_id, version, kind, schema, payload,
                    occurred_at, recorded_at, actor, role, site, reason, command_id,
                    correlation_id, causation, prev_hash, digest, chain,
                ))
                prev_hash, prev_j = digest, f'"{digest}"'
            head.version, head.hash = version, prev_hash
            versions[stream_id] = version
        result = AppendResult(
            command_id=command_id,
            positions=tuple(range(last_position + 1, position + 1)),
            versions=versions,
            recorded_at=recorded_at,
        )
        # canonical_json(result.to_json()), written out: sorted keys at both levels
        versions_j = ",".join([f"{encode(k)}:{v}" for k, v in sorted(versions.items())])
        result_j = (
            f'{{"command_id":{encode(command_id)},'
            f'"positions":[{",".join(map(str, result.positions))}],'
            f'"recorded_at":{recorded_j},"versions":{{{versions_j}}}}}'
        )
        command = (command_id, request_hash, result_j, recorded_at)
        self._insert(cursor, rows, command)
        for statement in also:
            cursor.execute(self._statement_sql(statement.sql), self._bind(statement.params))
        return result, rows

    def _statement_sql(self, sql: str) -> str:
        return sql if self._sqlite else sql.replace("?", "%s")

    def _bind(self, params: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self._sqlite:
            return params
        return tuple(format_utc(p) if isinstance(p, datetime) else p for p in params)

    def _insert(self, cursor: Any, rows: list[tuple[Any, ...]], command: tuple[Any, ...]) -> None:
        """Insert the events and the command. PostgreSQL: one statement for a single event,
        else psycopg's pipelined `executemany`. SQLite: `INSERT … VALUES (…), (…), …` of up to
        SQLITE_ROWS_PER_INSERT rows per statement (fewer statement steps than `executemany`),
        the remainder and single events row by row."""
        if not self._sqlite:  # one call of the append function for all of them
            cursor.execute(self._insert_event_and_command, _function_arguments(rows, command))
            return
        if self._sqlite and len(rows) >= SQLITE_ROWS_PER_INSERT:
            chunk = self._sqlite_rows_per_insert(cursor.connection)
            full = len(rows) - len(rows) % chunk
            if full:
                sql = self._insert_events_sql(chunk)
                execute = cursor.execute
                for start in range(0, full, chunk):
                    execute(sql, [value for row in rows[start:start + chunk] for value in row])
            rows = rows[full:]
        if len(rows) == 1:
            cursor.execute(self._insert_event, rows[0])
        elif rows:
            cursor.executemany(self._insert_event, rows)
        cursor.execute(self._insert_command, command)

    def _sqlite_rows_per_insert(self, connection: Any) -> int:
        """SQLITE_ROWS_PER_INSERT, fewer if this SQLite binds fewer variables per statement."""
        limit = int(connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        return max(1, min(SQLITE_ROWS_PER_INSERT, limit // _INSERTED))

    def _insert_events_sql(self, rows: int) -> str:
        sql = self._multi_insert.get(rows)
        if sql is None:
            one = f"({', '.join([self._mark] * _INSERTED)})"
            sql = self._multi_insert[rows] = (
                f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES {', '.join([one] * rows)}"
            )
        return sql

    def _state_query(self, streams: int, checks: tuple[int, ...] = ()) -> str:
        """One statement for everything an append reads under the lock: the last position and
        recorded time, the command id's earlier request hash and result, on PostgreSQL the
        database clock, then each stream's last version and hash (NULLs when absent), then
        for each `Unchanged` check the version of the first event after the one read that is
        not of an ignored type (NULL: none). Parameters: the command id, the stream ids, then
        each check's stream id, version and ignored types (`checks` holds how many types,
        one parameter each on SQLite, one array on PostgreSQL). Each part is an index lookup;
        SQLite runs scalar subqueries fastest, PostgreSQL plans joined subqueries fastest."""
        key = (streams, checks)
        sql = self._state_sql.get(key)
        if sql is None:
            if self._sqlite:
                last = "(SELECT {} FROM events ORDER BY position DESC LIMIT 1)"
                command = "(SELECT {} FROM commands WHERE command_id = ?1)"
                head = "(SELECT {} FROM events WHERE stream_id = ?{} ORDER BY version DESC LIMIT 1)"
                columns = [last.format("position"), last.format("recorded_at"),
                           command.format("request_hash"), command.format("result"),
                           last.format("chain_hash")]
                for i in range(streams):
                    columns += [head.format("version", i + 2), head.format("hash", i + 2)]
                for ignored in checks:
                    types = f" AND type NOT IN ({', '.join(['?'] * ignored)})" if ignored \
                        else ""
                    columns.append("(SELECT version FROM events WHERE stream_id = ? AND "
                                   f"version > ?{types} ORDER BY version LIMIT 1)")
                sql = f"SELECT {', '.join(columns)}"
            else:
                columns = ["t.position", "t.recorded_at", "c.request_hash", "c.result",
                           "clock_timestamp()"]
                joins = [
                    "LEFT JOIN (SELECT position, recorded_at FROM events "
                    "ORDER BY position DESC LIMIT 1) t ON true",
                    "LEFT JOIN (SELECT request_hash, result FROM commands "
                    "WHERE command_id = %s) c ON true",
                ]
                for i in range(streams):
                    columns += [f"h{i}.version", f"h{i}.hash"]
                    joins.append(
                        "LEFT JOIN (SELECT version, hash FROM events WHERE stream_id = %s "
                        f"ORDER BY version DESC LIMIT 1) h{i} ON true"
                    )
                for i, _ in enumerate(checks):
                    columns.append(f"u{i}.version")
                    joins.append(
                        "LEFT JOIN (SELECT version FROM events WHERE stream_id = %s AND "
                        "version > %s AND type <> ALL(%s::text[]) ORDER BY version LIMIT 1) "
                        f"u{i} ON true"
                    )
                sql = f"SELECT {', '.join(columns)} FROM (SELECT 1) o {' '.join(joins)}"
            self._state_sql[key] = sql
        return sql

    # ---------------------------------------------------------------- reading
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return fetch_rows(self.engine, sql, params)

    def find_command(self, command_id: str) -> CommandRecord | None:
        """The first result of a command id, if that command was already carried out."""
        rows = self._fetch(
            f"SELECT request_hash, result FROM commands WHERE command_id = {self._mark}",
            (command_id,),
        )
        if not rows:
            return None
        result = AppendResult.from_json(json.loads(rows[0][1]), duplicate=True)
        return CommandRecord(command_id, str(rows[0][0]), result)

    def stream_version(self, stream_id: str) -> int:
        rows = self._fetch(
            f"SELECT version FROM events WHERE stream_id = {self._mark} "
            "ORDER BY version DESC LIMIT 1",
            (stream_id,),
        )
        return int(rows[0][0]) if rows else 0

    def stream_head_at(self, stream_id: str, position: int) -> tuple[int, str] | None:
        """The version and hash of the stream's last event at or before `position` (None:
        the stream had no event yet)."""
        rows = self._fetch(
            f"SELECT version, hash FROM events WHERE stream_id = {self._mark} "
            f"AND position <= {self._mark} ORDER BY version DESC LIMIT 1",
            (stream_id, position),
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def read_streams_since(self, versions: Sequence[tuple[str, int]], *,
                           also: Sequence[tuple[str, Sequence[Any]]] = ()
                           ) -> tuple[list[list[RecordedEvent]], list[list[Any]]]:
        """Each stream's events after the version given, and the rows of the `also` queries,
        read together (`fetch_many`: one round trip on PostgreSQL)."""
        sql = (f"SELECT {_COLUMNS} FROM events WHERE stream_id = {self._mark} "
               f"AND version > {self._mark} ORDER BY version")
        rows = fetch_many(self.engine, [*((sql, (stream, version)) for stream, version in versions),
                                        *also])
        cut = len(versions)
        return [from_rows(found) for found in rows[:cut]], rows[cut:]

    def read_stream(self, stream_id: str, *, up_to_version: int | None = None,
                    up_to_position: int | None = None,
                    after_version: int | None = None) -> list[RecordedEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE stream_id = {self._mark}"
        params: list[Any] = [stream_id]
        if after_version is not None:
            sql += f" AND version > {self._mark}"
            params.append(after_version)
        if up_to_version is not None:
            sql += f" AND version <= {self._mark}"
            params.append(up_to_version)
        if up_to_position is not None:
            sql += f" AND position <= {self._mark}"
            params.append(up_to_position)
        return from_rows(self._fetch(sql + " ORDER BY version", params))

    def read_prefixed(self, prefix: str, *, after: int = 0) -> list[RecordedEvent]:
        """Every event after position `after` of the streams whose id starts with `prefix`,
        in position order: one statement (a range of the stream index) for a family of
        streams, such as every subject's reminders."""
        if not prefix:
            raise ValueError("read_prefixed needs a prefix")
        bound = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the first id past the prefix's range
        return from_rows(self._fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream_id >= {self._mark} "
            f"AND stream_id < {self._mark} AND position > {self._mark} ORDER BY position",
            (prefix, bound, after)))

    def read_all(
        self, *, after: int = 0, up_to: int | None = None, batch_size: int = 1000
    ) -> Iterator[RecordedEvent]:
        """Every event with `after < position <= up_to`, in order, a batch at a time (lazily:
        nothing is read before the first event is asked for)."""
        return chain.from_iterable(
            self.read_batches(after=after, up_to=up_to, batch_size=batch_size)
        )

    def read_batches(
        self, *, after: int = 0, up_to: int | None = None, batch_size: int = 1000
    ) -> Iterator[list[RecordedEvent]]:
        """Lists of at most `batch_size` events, in position order. One query, fetched a batch
        at a time (a server-side cursor on PostgreSQL, SQLite's own stepping otherwise): it
        reads one consistent snapshot and holds one pooled connection until it is exhausted
        or closed."""
        for rows in self._row_batches(_COLUMNS, after, up_to, batch_size):
            yield from_rows(rows)

    def read_chained(self, *, batch_size: int = 5000
                     ) -> Iterator[list[tuple[RecordedEvent, str]]]:
        """`read_batches` of the whole log, each event with its stored global chain hash (for
        `audit verify`)."""
        cut = len(ENVELOPE_FIELDS)
        for rows in self._row_batches(_INSERT_COLUMNS, 0, None, batch_size):
            events = from_rows([row[:cut] for row in rows])
            yield [(event, str(row[cut] or "")) for event, row in zip(events, rows, strict=True)]

    def _row_batches(self, columns: str, after: int, up_to: int | None, batch_size: int
                     ) -> Iterator[list[Any]]:
        size = int(batch_size)
        if size < 1:  # as `LIMIT 0` did
            return
        sql = (
            f"SELECT {columns} FROM events WHERE position > {self._mark} "
            f"AND position <= {self._mark} ORDER BY position"
        )
        bound = up_to if up_to is not None else 2**62
        attempts = 1 if self._sqlite else self._attempts()
        for attempt in range(1, attempts + 1):
            started = False
            try:
                with driver_connection(self.engine, unpinged=not self._sqlite) as driver:
                    # SQLite: a plain statement, stepped as rows are fetched. PostgreSQL: a
                    # server-side cursor (DECLARE … FETCH n) in a read-only transaction.
                    cursor = driver.cursor() if self._sqlite else driver.cursor(name=_READ_CURSOR)
                    try:
                        cursor.execute(sql, (after, bound))
                        while True:
                            rows = cursor.fetchmany(size)
                            started = True
                            if rows:
                                yield rows
                            if len(rows) < size:
                                break
                        if not self._sqlite:
                            driver.commit()  # ends the read; a commit, unlike a rollback,
                            # keeps psycopg's prepared statements
                    finally:
                        cursor.close()
                return
            except StoreUnavailable as error:
                # only before the first batch: the query itself checked the connection
                if started or attempt == attempts or not lost_connection(error):
                    raise

    def read_commands(self) -> list[tuple[str, str]]:
        """Every row of the command table: (command id, its result as stored JSON text)."""
        return [(str(r[0]), str(r[1])) for r in
                self._fetch("SELECT command_id, result FROM commands ORDER BY recorded_at")]

    def position_at(self, recorded_at: datetime | str) -> int:
        """The last position recorded at or before a moment (0 when none was). PostgreSQL
        finds it by its index of `recorded_at`. SQLite has none (migration 4): it reads the key
        backwards from the head to the first event recorded at or before the moment, as its
        plan for `max(position) … WHERE recorded_at <= ?` already did with the index there
        (about 33 ms for the earliest moment of a 158,000-event log, 0.01 ms near the head)."""
        moment = recorded_at if isinstance(recorded_at, str) else format_utc(recorded_at)
        sql = ("SELECT position FROM events WHERE recorded_at <= ? ORDER BY position DESC "
               "LIMIT 1" if self._sqlite else
               "SELECT max(position) FROM events WHERE recorded_at <= %s")
        rows = self._fetch(sql, (moment,))
        return int(rows[0][0] or 0) if rows else 0

    def read_until(self, recorded_at: datetime | str) -> Iterator[RecordedEvent]:
        """Everything the system had recorded at a moment (recorded_at ≤ moment)."""
        return self.read_all(up_to=self.position_at(recorded_at))

    def database_time(self) -> datetime:
        """The store's clock: the injected one, this host's for SQLite, else the server's."""
        if self.clock is not None:
            return self.clock()
        if self._sqlite:
            return datetime.now(UTC)
        value = self._fetch("SELECT clock_timestamp()")[0][0]
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))

    def last_position(self) -> int:
        rows = self._fetch("SELECT position FROM events ORDER BY position DESC LIMIT 1")
        return int(rows[0][0]) if rows else 0

    def stream_heads(self) -> dict[str, tuple[int, str]]:
        """Each stream's last version and hash."""
        rows = self._fetch(
            "SELECT e.stream_id, e.version, e.hash FROM events e JOIN ("
            " SELECT stream_id, max(version) AS version FROM events GROUP BY stream_id"
            ") m ON e.stream_id = m.stream_id AND e.version = m.version"
        )
        return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}


def _attempts(engine: Engine) -> int:
    """Tries of an unpinged operation: enough to meet every pooled connection dead."""
    size = getattr(engine.pool, "size", None)
    return (int(size()) if callable(size) else 0) + 1


def fetch_rows(engine: Engine, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of one query, which is its own transaction (no BEGIN … ROLLBACK around it, no
    ping first: on PostgreSQL three round trips fewer, and psycopg keeps its prepared
    statements). On PostgreSQL the query itself checks the connection: a read can always be
    retried, on a fresh connection when the pooled one was dead."""
    if engine.dialect.name == "sqlite":
        with driver_connection(engine) as driver:
            rows: list[Any] = driver.execute(sql, tuple(params)).fetchall()
        return rows
    return _unpinged_read(engine, lambda driver: driver.execute(sql, tuple(params)).fetchall())


def fetch_many(engine: Engine, queries: Sequence[tuple[str, Sequence[Any]]]
               ) -> list[list[Any]]:
    """The rows of several queries, each its own transaction as in `fetch_rows`, read
    together: on PostgreSQL sent at once in psycopg's pipeline mode (one round trip for all),
    on SQLite one after the other on one pooled connection."""
    if engine.dialect.name == "sqlite":
        with driver_connection(engine) as driver:
            return [driver.execute(sql, tuple(params)).fetchall() for sql, params in queries]

    def read(driver: Any) -> list[list[Any]]:
        with driver.pipeline():
            cursors = [driver.execute(sql, tuple(params)) for sql, params in queries]
        return [cursor.fetchall() for cursor in cursors]

    return _unpinged_read(engine, read)


def _unpinged_read(engine: Engine, read: Callable[[Any], _T]) -> _T:
    """`read(driver)` on an unpinged PostgreSQL connection in autocommit mode: the query
    itself checks the connection, and a read found dead before answering is tried again on
    a fresh one (up to every pooled connection)."""
    attempts = _attempts(engine)
    for attempt in range(1, attempts + 1):
        try:
            with driver_connection(engine, unpinged=True) as driver, _autocommit(driver):
                return read(driver)
        except StoreUnavailable as error:
            if attempt == attempts or not lost_connection(error):
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


class _Trip:
    """Whether an append's connection has answered yet (see `append_streams`)."""

    __slots__ = ("answered",)

    def __init__(self) -> None:
        self.answered = False


_TRIP: ContextVar[_Trip | None] = ContextVar("trialflow_append_trip", default=None)


def _answered() -> None:
    trip = _TRIP.get()
    if trip is not None:
        trip.answered = True


def _payload_texts(appends: Sequence[StreamAppend], *, strict: bool) -> _Texts:
    """Each payload's canonical JSON text. When the caller supplied the request hash, a payload
    that cannot be serialised must not fail a repeat of an earlier command (which appends
    nothing); then None, and `_write` serialises again after the repeat check, raising there."""
    try:
        return [[canonical_json(new.payload) for new in item.events] for item in appends]
    except (TypeError, ValueError):
        if strict:
            raise
        return None


def _request_hash(
    appends: Sequence[StreamAppend], context: AppendContext, texts: _Texts
) -> str:
    """SHA-256 of the canonical JSON of
    `{"actor": …, "appends": [{"stream_id": …, "events": [[type, schema_version, payload,
    occurred_at, reason], …]}, …]}`, assembled from the payloads' canonical texts (a nested
    value serialises to the same text as on its own), so each payload is serialised once."""
    assert texts is not None  # strict when no request hash was supplied
    encode = _encode
    last_kind: object = _UNSET
    last_schema: object = _UNSET
    prefix = ""
    parts = []
    for item, payloads in zip(appends, texts, strict=True):
        events = []
        for event, payload in zip(item.events, payloads, strict=True):
            kind, schema, occurred, reason = (
                event.type, event.schema_version, event.occurred_at, event.reason
            )
            if kind is not last_kind or schema is not last_schema:
                last_kind, last_schema = kind, schema
                prefix = f"[{encode(kind)},{encode(schema)},"
            events.append(
                f"{prefix}{payload},{'null' if occurred is None else encode(occurred)},"
                f"{'null' if reason is None else encode(reason)}]"
            )
        parts.append(f'{{"events":[{",".join(events)}],"stream_id":{encode(item.stream_id)}}}')
    text = f'{{"actor":{_encode(context.actor)},"appends":[{",".join(parts)}]}}'
    return _sha256(text.encode("utf-8")).hexdigest()


def _function_arguments(rows: list[tuple[Any, ...]], command: tuple[Any, ...]
                        ) -> tuple[Any, ...]:
    """The arguments of the PostgreSQL append function: one array per column that differs
    between the events of an append, one value per column they share."""
    (positions, streams, versions, kinds, schemas, payloads, occurred, _recorded, _actor,
     _role, _site, reasons, _command, _correlation, causations, prevs, hashes, _chain) = (
        list(column) for column in zip(*rows, strict=True))
    first = rows[0]
    command_id, request_hash, result, recorded_at = command
    return (positions, streams, versions, kinds, schemas, payloads, occurred, recorded_at,
            first[8], first[9], first[10], reasons, command_id, first[13], causations, prevs,
            hashes, request_hash, result)


def _log_appended(rows: list[tuple[Any, ...]]) -> None:
    """Every appended event is logged at info: stream, version, type, actor and position. The
    logger is bound once per append and, when it filters info out, asked so once."""
    logger = log.bind()
    enabled = getattr(logger, "is_enabled_for", None)
    if enabled is not None and not enabled(logging.INFO):
        return
    for row in rows:
        logger.info(
            "event appended",
            stream=row[1], version=row[2], type=row[3], actor=row[8], position=row[0],
        )


@contextlib.contextmanager
def _autocommit(driver: Any) -> Iterator[None]:
    """psycopg in autocommit mode for the duration: no implicit BEGIN (a round trip of its
    own), so a single statement is its own transaction and `BEGIN … COMMIT` is ours to send.
    The connection goes back to the pool as it came (autocommit off); one that cannot be put
    back so is closed, and the pool discards it."""
    driver.autocommit = True
    try:
        yield
    finally:
        try:
            driver.autocommit = False
        except Exception:
            driver.close()


def _rollback(driver: Any) -> None:
    """Roll back after a failed append. If even that fails (a lost connection), the pool rolls
    back or discards the connection when it comes back; the first error is the one raised."""
    with contextlib.suppress(Exception):
        driver.rollback()


def _repeat(existing: CommandRecord, request_hash: str) -> AppendResult:
    if existing.request_hash != request_hash:
        raise IdempotencyMismatch(existing.command_id)
    log.info("command repeated, nothing appended", command_id=existing.command_id)
    return existing.result
