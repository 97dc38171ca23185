"""The PostgreSQL append function against plain inserts, per transaction and per call
(docs/performance.md, "what the in-database guards cost").

    python -m bench.append_function [--calls N]

Creates a fresh database on 127.0.0.1:5432 (user postgres), migrates it, then appends N
one-event commands three ways: `SELECT trialflow_append(…)` each in its own transaction,
the same N calls in one transaction, and the plain `WITH e AS (INSERT INTO events …) INSERT
INTO commands …` each in its own transaction (as the superuser, who may). Prints µs per call.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence

import psycopg

from events.engine import create_store_engine
from events.envelope import GENESIS_HASH
from events.schema import upgrade

SERVER = "postgresql://postgres@127.0.0.1:5432"
CALL = ("SELECT trialflow_append(%s::bigint[], %s::text[], %s::integer[], %s::text[], "
        "%s::integer[], %s::text[], %s::text[], %s, %s, %s, %s, %s::text[], %s, %s, "
        "%s::text[], %s::text[], %s::text[], %s, %s)")
PLAIN = ("WITH e AS (INSERT INTO events VALUES (%s, 'S-1', %s, 'X', 1, '{\"a\":1}', 't', "
         "'2026-01-01T00:00:00.000000Z', 'alice', 'coordinator', 'PKU3', NULL, %s, %s, NULL, %s, "
         "%s, %s)) "
         "INSERT INTO commands VALUES (%s, 'rh', '{}', '2026-01-01T00:00:00.000000Z')")
MOMENT = "2026-01-01T00:00:00.000000Z"


def _calls(cursor: psycopg.Cursor[object], first: int, count: int) -> None:
    prev = GENESIS_HASH if first == 1 else f"{first - 1:064x}"
    for position in range(first, first + count):
        digest = f"{position:064x}"
        cursor.execute(CALL, ([position], ["S-1"], [position], ["X"], [1], ['{"a":1}'], ["t"],
                              MOMENT, "alice", "coordinator", "PKU3", [None], f"c{position}",
                              f"c{position}", [None], [prev], [digest], "rh",
                              f'{{"positions":[{position}]}}'))
        prev = digest


def _plain(cursor: psycopg.Cursor[object], first: int, count: int) -> None:
    prev = f"{first - 1:064x}"
    for position in range(first, first + count):
        digest = f"{position:064x}"
        cursor.execute(PLAIN, (position, position, f"c{position}", f"c{position}", prev, digest,
                               digest, f"c{position}"))
        prev = digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.append_function")
    parser.add_argument("--calls", type=int, default=2000)
    count = parser.parse_args(argv).calls
    name = f"bench_fn_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    try:
        engine = create_store_engine(f"{SERVER}/{name}")
        upgrade(engine)
        engine.dispose()
        with psycopg.connect(f"{SERVER}/{name}", autocommit=True) as conn:
            cursor = conn.cursor()
            started = time.perf_counter()
            _calls(cursor, 1, count)
            own = (time.perf_counter() - started) / count
            started = time.perf_counter()
            _plain(cursor, count + 1, count)
            plain = (time.perf_counter() - started) / count
        with psycopg.connect(f"{SERVER}/{name}") as conn:  # one transaction, rolled back
            started = time.perf_counter()
            _calls(conn.cursor(), 2 * count + 1, count)
            shared = (time.perf_counter() - started) / count
            conn.rollback()
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}".encode())
    print(f"trialflow_append, a transaction each: {own * 1e6:.0f} µs per call")
    print(f"trialflow_append, one transaction:    {shared * 1e6:.0f} µs per call")
    print(f"plain inserts, a transaction each:    {plain * 1e6:.0f} µs per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
