"""Event-store benchmark: our EventStore beside the raw driver on the same database engine.

Each backend gets two fresh databases created by `events.schema.upgrade` (identical tables,
indexes and triggers): one written and read through `EventStore`, the other through the plain
DB-API driver (`sqlite3` / `psycopg`) with the same durability settings. Three workloads:

1. batched append: `EventStore.append` of 1,000 events per call vs `executemany` of 1,000 equal
   rows per transaction;
2. single-command append: one event per `EventStore.append` vs one INSERT per transaction;
3. read: `EventStore.read_all` touching every `.payload` vs `SELECT` of every row plus
   `json.loads` of every payload (best of `read_repeats`, alternating which side goes first).

The append workloads run in APPEND_ROUNDS rounds that alternate which side goes first, and
every transaction is timed on its own so that stalls (>= STALL_SECONDS) can be reported.
PostgreSQL connections are warmed up first (see `warm_up`).
"""

from __future__ import annotations

import cProfile
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import psycopg

from bench import workload
from bench.workload import RawRow, Sizes, Workload
from events.engine import SQLITE_BUSY_TIMEOUT_MS
from events.schema import upgrade
from events.store import AppendContext, EventStore
from workflow.bootstrap import build_app

PG_HOST: Final = "127.0.0.1"
PG_PORT: Final = 5432
PG_USER: Final = "postgres"
SHOWN_SETTINGS: Final = ("synchronous_commit", "fsync", "autovacuum")

TARGETS: Final = {"batched append": 0.50, "single-command append": 0.50, "read": 0.40}

Progress = Callable[[str], None]


STALL_SECONDS: Final = 0.1


@dataclass
class Side:
    """One side's wall time; for appends also its transactions and the stalled ones among them
    (those that took >= STALL_SECONDS)."""

    seconds: float = 0.0
    transactions: int = 0
    stalls: int = 0
    stall_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.seconds += seconds
        self.transactions += 1
        if seconds >= STALL_SECONDS:
            self.stalls += 1
            self.stall_seconds += seconds


@dataclass(frozen=True)
class Measurement:
    workload: str
    events: int
    ours: Side
    raw: Side

    @property
    def ours_rate(self) -> float:
        return self.events / self.ours.seconds

    @property
    def raw_rate(self) -> float:
        return self.events / self.raw.seconds

    @property
    def ratio(self) -> float:
        return self.ours_rate / self.raw_rate

    @property
    def target(self) -> float:
        return TARGETS[self.workload]

    @property
    def met(self) -> bool:
        return self.ratio >= self.target

    @property
    def stalled(self) -> bool:
        return bool(self.ours.stalls or self.raw.stalls)

    def ratio_without_stalls(self) -> float | None:
        """The ratio over the transactions that did not stall (same events per transaction);
        None when every transaction of a side took that long (on a slow machine a batch of
        1,000 events may: then "stall" says nothing about the network)."""

        def rate(side: Side) -> float | None:
            kept = side.transactions - side.stalls
            if kept <= 0 or side.seconds <= side.stall_seconds:
                return None
            return self.events * kept / side.transactions / (side.seconds - side.stall_seconds)

        ours, raw = rate(self.ours), rate(self.raw)
        return None if ours is None or raw is None else ours / raw


@dataclass
class BackendResult:
    backend: str
    version: str
    measurements: list[Measurement] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


class RawDriver(Protocol):
    """The plain DB-API side: no SQLAlchemy, no trialflow code."""

    def insert_transaction(self, rows: list[RawRow]) -> None: ...
    def read_all(self) -> int: ...
    def close(self) -> None: ...


class RawSqlite:
    """`sqlite3` with the durability our engine uses: WAL and synchronous=FULL."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in (
            f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA foreign_keys = ON",
        ):
            self.conn.execute(pragma)
        self.sql = workload.insert_sql("?")

    def insert_transaction(self, rows: list[RawRow]) -> None:
        self.conn.execute("BEGIN")
        if len(rows) == 1:
            self.conn.execute(self.sql, rows[0])
        else:
            self.conn.executemany(self.sql, rows)
        self.conn.execute("COMMIT")

    def read_all(self) -> int:
        count = 0
        for row in self.conn.execute(workload.SELECT_ALL):
            json.loads(row[workload.PAYLOAD_COLUMN])
            count += 1
        return count

    def close(self) -> None:
        self.conn.close()


class RawPostgres:
    """`psycopg` with the server's defaults (synchronous_commit on), one transaction per call."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo)
        self.sql = workload.insert_sql("%s")

    def insert_transaction(self, rows: list[RawRow]) -> None:
        with self.conn.cursor() as cursor:
            if len(rows) == 1:
                cursor.execute(self.sql, rows[0])
            else:
                cursor.executemany(self.sql, rows)
        self.conn.commit()

    def read_all(self) -> int:
        count = 0
        with self.conn.cursor() as cursor:
            for row in cursor.execute(workload.SELECT_ALL):
                json.loads(row[workload.PAYLOAD_COLUMN])
                count += 1
        self.conn.commit()
        return count

    def close(self) -> None:
        self.conn.close()


WARM_UP_BATCHES: Final = 20


def warm_up(conn: psycopg.Connection[Any], transactions: list[list[RawRow]]) -> None:
    """Push WARM_UP_BATCHES pipelined batches through a fresh connection into a temporary copy
    of `events`, so that TCP has grown its windows before anything is timed. On a cold loopback
    connection a pipelined `executemany` of 1,000 rows now and then stalls for ~200 ms (the
    server's receive window fills, then a retransmission timer fires); after about 20 batches it
    no longer does. Both sides' connections get the same warm-up; nothing is left behind."""
    sql = workload.insert_sql("%s").replace("INTO events", "INTO bench_warm_up", 1)
    with conn.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE bench_warm_up (LIKE events INCLUDING ALL)")
        for rows in transactions[:WARM_UP_BATCHES]:
            cursor.executemany(sql, rows)
        cursor.execute("DROP TABLE bench_warm_up")
    conn.commit()


# ------------------------------------------------------------------------- timing
APPEND_ROUNDS: Final = 10  # the append workloads alternate raw and ours in this many rounds


class _Profile:
    """cProfile of our side only, summed over its rounds (`--profile DIR`)."""

    def __init__(self, directory: Path | None, name: str) -> None:
        self.directory, self.name = directory, name
        self.profiler = cProfile.Profile() if directory is not None else None

    @contextmanager
    def measuring(self) -> Iterator[None]:
        if self.profiler is None:
            yield
            return
        self.profiler.enable()
        try:
            yield
        finally:
            self.profiler.disable()

    def save(self) -> None:
        if self.profiler is not None and self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.profiler.dump_stats(str(self.directory / f"{self.name}.prof"))


def _ours_append(store: EventStore, appends: list[workload.Append], clock: Side) -> None:
    context = AppendContext(actor=workload.ACTOR, role=workload.ROLE, site=workload.SITE)
    perf = time.perf_counter
    for item in appends:
        start = perf()
        store.append(item.stream_id, item.expected_version, item.events, context)
        clock.add(perf() - start)


def _raw_append(raw: RawDriver, transactions: list[list[RawRow]], clock: Side) -> None:
    perf = time.perf_counter
    for rows in transactions:
        start = perf()
        raw.insert_transaction(rows)
        clock.add(perf() - start)


def _append_rounds(
    store: EventStore, raw: RawDriver, name: str, load: Workload, profile: _Profile
) -> Measurement:
    """APPEND_ROUNDS rounds that alternate which side goes first, so a checkpoint or a cache
    effect falls on both sides alike. Each transaction is timed on its own (the clock reads
    cost well under a microsecond), so stalls can be counted and reported."""
    count = len(load.appends)
    ours, raw_side = Side(), Side()
    for round_ in range(APPEND_ROUNDS):
        part = slice(count * round_ // APPEND_ROUNDS, count * (round_ + 1) // APPEND_ROUNDS)
        if round_ % 2:
            with profile.measuring():
                _ours_append(store, load.appends[part], ours)
        _raw_append(raw, load.raw_transactions[part], raw_side)
        if not round_ % 2:
            with profile.measuring():
                _ours_append(store, load.appends[part], ours)
    profile.save()
    return Measurement(name, load.events, ours, raw_side)


def _ours_read(store: EventStore) -> tuple[float, int]:
    count = 0
    start = time.perf_counter()
    for event in store.read_all():
        event.payload  # noqa: B018 - decode the JSON, as every reader does
        count += 1
    return time.perf_counter() - start, count


def _raw_read(raw: RawDriver) -> tuple[float, int]:
    start = time.perf_counter()
    count = raw.read_all()
    return time.perf_counter() - start, count


def run_workloads(
    store: EventStore,
    raw: RawDriver,
    sizes: Sizes,
    progress: Progress,
    profile_dir: Path | None = None,
    label: str = "",
) -> list[Measurement]:
    """The three workloads on one backend; ours and raw alternate within each."""
    results: list[Measurement] = []

    for name, load in (
        ("batched append", workload.batched(sizes)),
        ("single-command append", workload.single(sizes, sizes.batched_events + 1)),
    ):
        profile = _Profile(profile_dir, f"{label}-{name.split()[0]}")
        measured = _append_rounds(store, raw, name, load, profile)
        results.append(measured)
        progress(f"{label}: {name:22s} ours {measured.ours.seconds:7.2f} s   "
                 f"raw {measured.raw.seconds:7.2f} s   stalls (>= {STALL_SECONDS * 1000:.0f} ms) "
                 f"ours {measured.ours.stalls}, raw {measured.raw.stalls}")

    total = sizes.batched_events + sizes.single_events
    best = {"ours": float("inf"), "raw": float("inf")}
    sides: list[tuple[str, Callable[[], tuple[float, int]]]] = [
        ("raw", lambda: _raw_read(raw)),
        ("ours", lambda: _ours_read(store)),
    ]
    profile = _Profile(profile_dir, f"{label}-read")
    for attempt in range(sizes.read_repeats):
        for side, read in sides if attempt % 2 == 0 else sides[::-1]:
            with profile.measuring() if side == "ours" and attempt == 0 else nullcontext():
                seconds, count = read()
            if count != total:
                raise RuntimeError(f"{side} read {count} events, expected {total}")
            best[side] = min(best[side], seconds)
    profile.save()
    ours_best, raw_best = best["ours"], best["raw"]
    results.append(Measurement("read", total, Side(ours_best), Side(raw_best)))
    progress(f"{label}: {'read (best of ' + str(sizes.read_repeats) + ')':22s} "
             f"ours {ours_best:7.2f} s   raw {raw_best:7.2f} s")
    return results


# ------------------------------------------------------------------------- backends
def run_sqlite(
    directory: Path, sizes: Sizes, progress: Progress, profile_dir: Path | None = None
) -> BackendResult:
    result = BackendResult("SQLite", sqlite3.sqlite_version)
    result.notes.append(
        f"fresh files in {directory.parent}; journal_mode=WAL, synchronous=FULL on both sides"
    )
    ours_path, raw_path = directory / "ours.db", directory / "raw.db"
    ours = build_app(f"sqlite:///{ours_path}")
    raw_schema = build_app(f"sqlite:///{raw_path}")
    upgrade(ours.engine)
    upgrade(raw_schema.engine)
    raw_schema.engine.dispose()
    raw = RawSqlite(raw_path)
    try:
        result.measurements = run_workloads(
            ours.store, raw, sizes, progress, profile_dir, label="sqlite"
        )
    finally:
        raw.close()
        ours.engine.dispose()
    return result


def _conninfo(dbname: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname} connect_timeout=3"


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be benchmarked, or None when a server answers."""
    try:
        with psycopg.connect(_conninfo("postgres"), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return f"no PostgreSQL server answers at {PG_HOST}:{PG_PORT} as {PG_USER} ({error})"
    return None


@contextmanager
def _fresh_databases(*suffixes: str) -> Iterator[list[str]]:
    base = f"tf_bench_{uuid.uuid4().hex[:10]}"
    names = [f"{base}_{suffix}" for suffix in suffixes]
    with psycopg.connect(_conninfo("postgres"), autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with psycopg.connect(_conninfo("postgres"), autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_postgres(
    sizes: Sizes, progress: Progress, profile_dir: Path | None = None
) -> BackendResult:
    problem = postgres_problem()
    if problem is not None:
        return BackendResult("PostgreSQL", "-", skipped=problem)
    settings = {}
    with psycopg.connect(_conninfo("postgres"), autocommit=True) as admin:
        for name in ("server_version", *SHOWN_SETTINGS):
            row = admin.execute(f"SHOW {name}").fetchone()
            settings[name] = str(row[0]) if row else "?"
    result = BackendResult("PostgreSQL", settings.pop("server_version"))
    shown = ", ".join(f"{name}={value}" for name, value in settings.items())
    result.notes.append(
        f"fresh databases on {PG_HOST}:{PG_PORT}, dropped after; the server's settings on both "
        f"sides ({shown}); both connections warmed up with {WARM_UP_BATCHES} untimed batches "
        "into a temporary table first"
    )
    with _fresh_databases("ours", "raw") as (ours_db, raw_db):
        ours = build_app(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{ours_db}")
        raw_schema = build_app(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{raw_db}")
        upgrade(ours.engine)
        upgrade(raw_schema.engine)
        raw_schema.engine.dispose()
        raw = RawPostgres(_conninfo(raw_db))
        try:
            rows = workload.batched(Sizes(batched_events=WARM_UP_BATCHES * 1000))
            warm_up(raw.conn, rows.raw_transactions)
            with ours.engine.connect() as pooled:  # the pool hands this one to every append
                driver = pooled.connection.driver_connection
                assert isinstance(driver, psycopg.Connection)
                warm_up(driver, rows.raw_transactions)
            del rows
            result.measurements = run_workloads(
                ours.store, raw, sizes, progress, profile_dir, label="postgres"
            )
        finally:
            raw.close()
            ours.engine.dispose()
    return result
