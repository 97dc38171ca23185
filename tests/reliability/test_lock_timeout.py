"""PostgreSQL writers never hang (docs/reliability.md, "Lock timeout"): any login may hold the
append's advisory lock in an open transaction, and a write would wait for it forever. Every
session of trialflow waits for any lock at most `lock_timeout` (`?lock_timeout=SECONDS` in the
database URL, 5 s by default), then the command exits 3 with one sentence (`database_busy`)
and has written nothing.

Real components only: the shared server on 127.0.0.1:5432 (tests/support/pg.py), a second
connection that really holds the lock, real `trialflow` processes. No test sleeps: the lock
timeout itself is the wait.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from events.engine import create_store_engine
from events.errors import InvalidDatabaseUrl
from events.store import APPEND_LOCK_KEY
from tests.reliability.test_database_faults import (
    _in_parallel,
    dispose_engines,
    error_line,
    positions_of,
    session_env,
    today,
    trialflow,
)
from tests.support.clock import FakeClock
from tests.support.pg import admin_dsn, fresh_database
from tests.support.study import COORDINATOR, INVESTIGATOR, Desk, new_study, screen_eligible
from workflow.commands import messages as M

pytestmark = pytest.mark.postgres

BUSY = ("Another database session held a lock this command needs past the lock timeout; "
        "nothing was written, try again.")


@pytest.fixture
def desk() -> Iterator[tuple[str, Desk]]:
    """A study on a fresh database with S-001 screened eligible, consented 24 days ago: the
    screening window (28 days) closes soon, so a scheduler pass has a reminder to issue."""
    with fresh_database() as url:
        flow = new_study(url, FakeClock(datetime.now(UTC)))
        screen_eligible(flow, "S-001", today() - timedelta(days=24))
        dispose_engines()
        yield url, flow
        dispose_engines()


@pytest.fixture
def study(desk: tuple[str, Desk]) -> str:
    return desk[0]


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


@contextmanager
def holding(url: str, sql: str, *params: object) -> Iterator[None]:
    """A second session that runs `sql` in a transaction it keeps open (holding whatever lock
    the statement took) until the block ends."""
    import psycopg

    with psycopg.connect(admin_dsn(_dbname(url))) as conn:  # not autocommit: BEGIN is implicit
        conn.execute(sql, params)  # type: ignore[arg-type]
        try:
            yield
        finally:
            conn.rollback()


def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(admin_dsn(_dbname(url)), autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


def counts(url: str, command_id: str) -> tuple[int, int, int]:
    """(events in the log, events and command rows of `command_id`)."""
    [(total, mine, commands)] = rows(
        url, "SELECT (SELECT count(*) FROM events), "
        "(SELECT count(*) FROM events WHERE command_id = %s), "
        "(SELECT count(*) FROM commands WHERE command_id = %s)", command_id, command_id)
    return int(total), int(mine), int(commands)


@pytest.mark.parametrize("seconds", [
    pytest.param(0.5, id="lock_timeout-0.5s"),
    pytest.param(None, id="default-5s", marks=pytest.mark.soak)])
def test_a_write_behind_a_held_append_lock_is_busy_after_the_lock_timeout(
        study: str, seconds: float | None) -> None:
    """While another login holds the append lock: a write and a scheduler pass exit 3 with
    the sentence after the timeout and write nothing; reads go on. Once it is released the
    same command id writes its events once."""
    url = study if seconds is None else f"{study}?lock_timeout={seconds}"
    investigator, scheduler = session_env(study, INVESTIGATOR), session_env(study, "scheduler")
    before = counts(study, "lock-1")
    assert before[1:] == (0, 0)
    write = ["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
             "--command-id", "lock-1"]
    with holding(study, "SELECT pg_advisory_xact_lock(%s)", APPEND_LOCK_KEY):
        started = time.monotonic()
        wrote, ticked, read, verified = _in_parallel([
            (write, investigator),
            (["--db", url, "--user", "scheduler", "--json", "scheduler", "tick"], scheduler),
            (["--db", url, "eligibility", "S-001"], investigator),
            (["--db", url, "audit", "verify"], investigator)])
        waited = time.monotonic() - started
    assert wrote.returncode == 3 and error_line(wrote.stderr) == BUSY, wrote.stderr
    assert ticked.returncode == 3, ticked.stdout + ticked.stderr  # a reminder was due
    body = json.loads(ticked.stdout)
    assert (body["error"], body["rule"]) == (BUSY, "database_busy")
    assert body["detail"] == {"retryable": True}
    assert read.returncode == 0 and read.stdout.startswith("Subject S-001"), read.stderr
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"OK: {before[0]} events"), verified.stdout
    assert waited >= (seconds or 5.0)
    assert counts(study, "lock-1") == before  # nothing written

    again = trialflow(write, investigator)
    assert again.returncode == 0, again.stderr
    assert counts(study, "lock-1") == (before[0] + 3, 3, 1)
    assert positions_of(again.stdout) == [before[0] + 1, before[0] + 2, before[0] + 3]
    print(f"\nbusy after {waited:.2f} s (lock_timeout {seconds or 5.0} s, four processes)")


def test_a_query_behind_a_held_checkpoint_lock_folds_the_lag(desk: tuple[str, Desk]
                                                              ) -> None:
    """A login that holds the read models' checkpoint rows (FOR UPDATE) stops the catch-up a
    query starts: after the lock timeout the query answers from the tables with the lag
    folded in memory (projections/views.py), exactly what it shows once caught up."""
    study, flow = desk
    url = f"{study}?lock_timeout=0.5"
    env = session_env(study, INVESTIGATOR)
    first = trialflow(["--db", url, "status"], env)  # creates the read models' tables
    assert first.returncode == 0, first.stderr
    flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=59", "height_cm=162"),
                                        today() - timedelta(days=1)))  # not in the tables
    dispose_engines()
    now = datetime.now(UTC).isoformat()  # one clock for both answers (a day may turn between)
    with holding(study, "SELECT * FROM projection_checkpoints FOR UPDATE"):
        started = time.monotonic()
        held = trialflow(["--db", url, "--log-level", "info", "--json", "eligibility",
                          "S-001", "--now", now], env)
        waited = time.monotonic() - started
    assert held.returncode == 0, held.stderr
    assert waited >= 0.5
    folded = [json.loads(line) for line in held.stderr.splitlines()
              if "read models not caught up" in line]
    assert [line["reason"] for line in folded] == ["database_busy"], held.stderr
    caught_up = trialflow(["--db", url, "--json", "eligibility", "S-001", "--now", now], env)
    assert caught_up.returncode == 0, caught_up.stderr
    assert json.loads(held.stdout) == json.loads(caught_up.stdout)


def _lock_timeout(url: str) -> str:
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            shown = str(conn.execute(text("SHOW lock_timeout")).scalar())
            conn.rollback()  # the pool's reset on return: the session setting stays
            assert str(conn.execute(text("SHOW lock_timeout")).scalar()) == shown
        return shown
    finally:
        engine.dispose()


def test_the_lock_timeout_of_a_url() -> None:
    """5 s unless the URL sets another (`?lock_timeout=SECONDS`, 0: wait forever); the
    parameter is taken out of the URL (psycopg would refuse it); a bad value is a bad URL."""
    with fresh_database() as url:
        assert _lock_timeout(url) == "5s"
        assert _lock_timeout(f"{url}?lock_timeout=0.5") == "500ms"
        assert _lock_timeout(f"{url}?lock_timeout=12&connect_timeout=3") == "12s"
        assert _lock_timeout(f"{url}?lock_timeout=0") == "0"
        for bad in ("abc", "-1", "nan", "inf", "1e10", "0x10"):
            with pytest.raises(InvalidDatabaseUrl, match="lock_timeout"):
                create_store_engine(f"{url}?lock_timeout={bad}")
        with pytest.raises(InvalidDatabaseUrl, match="more than once"):
            create_store_engine(f"{url}?lock_timeout=1&lock_timeout=2")
        done = trialflow(["--db", f"{url}?lock_timeout=soon", "--json", "status"], {})
        assert done.returncode == 2
        assert json.loads(done.stdout)["rule"] == "invalid_database_url"
