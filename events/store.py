"""The append-only event store on SQLAlchemy Core: atomic, optimistic, idempotent appends.

Appends are serialised: SQLite by `BEGIN IMMEDIATE` (the database write lock), PostgreSQL by a
transaction-level advisory lock taken before anything is read. Under that lock the appender
reads the stream heads and the last position, numbers the new events `last + 1 …`, hashes
them and commits; the lock is released only after the commit is visible. Commit order is
therefore position order, and a follower reading `position > checkpoint` can never skip an
event that commits late with a lower position (the high-water-mark problem of sequences
under concurrent writers). An advisory lock, unlike `LOCK TABLE … IN EXCLUSIVE MODE`, needs no
privilege beyond INSERT and SELECT, so it works for per-person logins (docs/event-store.md).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from sqlalchemy import Connection, Engine

from events.engine import WRITE
from events.envelope import (
    ENVELOPE_FIELDS,
    GENESIS_HASH,
    NewEvent,
    RecordedEvent,
    canonical_json,
    event_hash,
)
from events.errors import ConcurrencyConflict, IdempotencyMismatch
from events.streams import check_stream_id
from events.translate import translated

APPEND_LOCK_KEY: Final = 7_320_002  # pg_advisory_xact_lock id shared by every appender
ANY_VERSION: Final = None
_COLUMNS: Final = ", ".join(ENVELOPE_FIELDS)

log = structlog.get_logger("trialflow.events")


def format_utc(moment: datetime) -> str:
    """Recorded times: UTC, microseconds, `Z`; fixed width, so text order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StreamAppend:
    stream_id: str
    expected_version: int | None  # None: append whatever the stream's version
    events: Sequence[NewEvent]


@dataclass(frozen=True)
class AppendContext:
    actor: str
    role: str
    site: str | None = None
    command_id: str | None = None
    correlation_id: str | None = None
    request_hash: str | None = None  # hash of the command's arguments, for idempotency


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


@dataclass
class EventStore:
    """Append and read events. `clock` overrides the database clock (tests, simulations)."""

    engine: Engine
    clock: Callable[[], datetime] | None = None
    _sqlite: bool = field(init=False)
    _mark: str = field(init=False)

    def __post_init__(self) -> None:
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._mark = "?" if self._sqlite else "%s"

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
        self, appends: Sequence[StreamAppend], context: AppendContext
    ) -> AppendResult:
        """Append to one or more streams atomically: all or nothing."""
        for item in appends:
            check_stream_id(item.stream_id)
        command_id = context.command_id or str(uuid.uuid4())
        request_hash = context.request_hash or _request_hash(appends, context)
        with (
            translated(),
            self.engine.connect().execution_options(**WRITE) as conn,
            conn.begin(),
        ):
            self._lock(conn)
            existing = self._find_command(conn, command_id)
            if existing is not None:
                return _repeat(existing, request_hash)
            result, rows = self._write(conn, appends, context, command_id, request_hash)
        for row in rows:
            log.info(
                "event appended",
                stream=row[1], version=row[2], type=row[3], actor=row[8], position=row[0],
            )
        return result

    def _lock(self, conn: Connection) -> None:
        if not self._sqlite:  # SQLite already holds the write lock (BEGIN IMMEDIATE)
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")

    def _write(
        self,
        conn: Connection,
        appends: Sequence[StreamAppend],
        context: AppendContext,
        command_id: str,
        request_hash: str,
    ) -> tuple[AppendResult, list[tuple[Any, ...]]]:
        last_position, last_recorded = self._tail(conn)
        recorded_at = max(self._now(conn), last_recorded)
        correlation_id = context.correlation_id or command_id
        rows: list[tuple[Any, ...]] = []
        versions: dict[str, int] = {}
        heads: dict[str, _Head] = {}
        position = last_position
        for item in appends:
            if item.stream_id not in heads:  # a stream named twice continues from its first part
                heads[item.stream_id] = self._head(conn, item.stream_id)
            head = heads[item.stream_id]
            if item.expected_version is not None and item.expected_version != head.version:
                raise ConcurrencyConflict(item.stream_id, item.expected_version, head.version)
            for new in item.events:
                position += 1
                head.version += 1
                fields = {
                    "position": position,
                    "stream_id": item.stream_id,
                    "version": head.version,
                    "type": new.type,
                    "schema_version": new.schema_version,
                    "payload": canonical_json(new.payload),
                    "occurred_at": new.occurred_at or recorded_at,
                    "recorded_at": recorded_at,
                    "actor": context.actor,
                    "role": context.role,
                    "site": context.site,
                    "reason": new.reason,
                    "command_id": command_id,
                    "correlation_id": correlation_id,
                    "causation_id": new.causation_id,
                    "prev_hash": head.hash,
                }
                head.hash = event_hash(fields)
                rows.append((*fields.values(), head.hash))
            versions[item.stream_id] = head.version
        marks = ", ".join([self._mark] * len(ENVELOPE_FIELDS))
        if rows:
            conn.exec_driver_sql(f"INSERT INTO events ({_COLUMNS}) VALUES ({marks})", rows)
        result = AppendResult(
            command_id=command_id,
            positions=tuple(row[0] for row in rows),
            versions=versions,
            recorded_at=recorded_at,
        )
        conn.exec_driver_sql(
            "INSERT INTO commands (command_id, request_hash, result, recorded_at) VALUES "
            f"({self._mark}, {self._mark}, {self._mark}, {self._mark})",
            (command_id, request_hash, canonical_json(result.to_json()), recorded_at),
        )
        return result, rows

    def _now(self, conn: Connection) -> str:
        if self.clock is not None:
            return format_utc(self.clock())
        if self._sqlite:  # an embedded database: its clock is this host's clock
            return format_utc(datetime.now(UTC))
        return format_utc(conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one())

    def _tail(self, conn: Connection) -> tuple[int, str]:
        row = conn.exec_driver_sql(
            "SELECT position, recorded_at FROM events ORDER BY position DESC LIMIT 1"
        ).first()
        return (0, "") if row is None else (int(row[0]), str(row[1]))

    def _head(self, conn: Connection, stream_id: str) -> _Head:
        row = conn.exec_driver_sql(
            f"SELECT version, hash FROM events WHERE stream_id = {self._mark} "
            "ORDER BY version DESC LIMIT 1",
            (stream_id,),
        ).first()
        return _Head(0, GENESIS_HASH) if row is None else _Head(int(row[0]), str(row[1]))

    def _find_command(self, conn: Connection, command_id: str) -> CommandRecord | None:
        row = conn.exec_driver_sql(
            f"SELECT request_hash, result FROM commands WHERE command_id = {self._mark}",
            (command_id,),
        ).first()
        if row is None:
            return None
        result = AppendResult.from_json(json.loads(row[1]), duplicate=True)
        return CommandRecord(command_id, str(row[0]), result)

    # ---------------------------------------------------------------- reading
    def find_command(self, command_id: str) -> CommandRecord | None:
        """The first result of a command id, if that command was already carried out."""
        with translated(), self.engine.connect() as conn:
            return self._find_command(conn, command_id)

    def stream_version(self, stream_id: str) -> int:
        with translated(), self.engine.connect() as conn:
            return self._head(conn, stream_id).version

    def read_stream(self, stream_id: str, *, up_to_version: int | None = None,
                    up_to_position: int | None = None) -> list[RecordedEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE stream_id = {self._mark}"
        params: list[Any] = [stream_id]
        if up_to_version is not None:
            sql += f" AND version <= {self._mark}"
            params.append(up_to_version)
        if up_to_position is not None:
            sql += f" AND position <= {self._mark}"
            params.append(up_to_position)
        with translated(), self.engine.connect() as conn:
            rows = conn.exec_driver_sql(sql + " ORDER BY version", tuple(params)).all()
        return [RecordedEvent(*row) for row in rows]

    def read_all(
        self, *, after: int = 0, up_to: int | None = None, batch_size: int = 1000
    ) -> Iterator[RecordedEvent]:
        """Every event with `after < position <= up_to`, in order, a batch at a time."""
        for batch in self.read_batches(after=after, up_to=up_to, batch_size=batch_size):
            yield from batch

    def read_batches(
        self, *, after: int = 0, up_to: int | None = None, batch_size: int = 1000
    ) -> Iterator[list[RecordedEvent]]:
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE position > {self._mark} "
            f"AND position <= {self._mark} ORDER BY position LIMIT {int(batch_size)}"
        )
        bound = up_to if up_to is not None else 2**62
        while True:
            with translated(), self.engine.connect() as conn:
                rows = conn.exec_driver_sql(sql, (after, bound)).all()
            if not rows:
                return
            batch = [RecordedEvent(*row) for row in rows]
            yield batch
            after = batch[-1].position
            if len(rows) < batch_size:
                return

    def position_at(self, recorded_at: datetime | str) -> int:
        """The last position recorded at or before a moment (0 when none was)."""
        moment = recorded_at if isinstance(recorded_at, str) else format_utc(recorded_at)
        with translated(), self.engine.connect() as conn:
            value = conn.exec_driver_sql(
                f"SELECT max(position) FROM events WHERE recorded_at <= {self._mark}", (moment,)
            ).scalar()
        return int(value or 0)

    def read_until(self, recorded_at: datetime | str) -> Iterator[RecordedEvent]:
        """Everything the system had recorded at a moment (recorded_at ≤ moment)."""
        return self.read_all(up_to=self.position_at(recorded_at))

    def last_position(self) -> int:
        with translated(), self.engine.connect() as conn:
            return self._tail(conn)[0]

    def stream_heads(self) -> dict[str, tuple[int, str]]:
        """Each stream's last version and hash."""
        with translated(), self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT e.stream_id, e.version, e.hash FROM events e JOIN ("
                " SELECT stream_id, max(version) AS version FROM events GROUP BY stream_id"
                ") m ON e.stream_id = m.stream_id AND e.version = m.version"
            ).all()
        return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}


def _request_hash(appends: Sequence[StreamAppend], context: AppendContext) -> str:
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


def _repeat(existing: CommandRecord, request_hash: str) -> AppendResult:
    if existing.request_hash != request_hash:
        raise IdempotencyMismatch(existing.command_id)
    log.info("command repeated, nothing appended", command_id=existing.command_id)
    return existing.result
