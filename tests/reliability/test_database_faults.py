"""Database faults (docs/reliability.md, "Database faults"): the database goes away, stays
locked, fills up or is read-only. Real components only: a private PostgreSQL server the test
crashes and restarts (tests/reliability/pg_server.py), a real process holding a SQLite file's
write lock, a SQLite page limit and a real full filesystem (no byte or no inode left, with
the database closed, open, or not created yet), a read-only SQLite URI. Read-only mounts and
files: test_read_only.py; PostgreSQL's lock timeout: test_lock_timeout.py; passwords:
test_pg_credentials.py.

Every command either does all it was asked or nothing: it exits 0, or with one clear sentence
(exit 3: retryable, exit 1: refused), and a retry with the same --command-id appends nothing
twice. The writer and scheduler loops run in their own processes
(`python -m tests.reliability.test_database_faults writer|ticker …`, see `main`): the writers
as the coordinator with a live session, the scheduler with its secret file.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString

import pytest
from sqlalchemy import Engine, event

from events.envelope import NewEvent
from events.errors import StoreUnavailable
from events.store import AppendContext, StreamAppend
from projections.runner import Runner
from projections.views import open_view
from tests.projections.support import memory_snapshot, snapshot
from tests.reliability.pg_server import PrivateServer, private_server
from tests.support.auth import login_environ
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    PASSWORD,
    TEST_KDF,
    Desk,
    new_study,
    screen_eligible,
)
from tests.support.study import through_infusion as infused
from workflow.bootstrap import build_app
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor

ROOT = Path(__file__).resolve().parents[2]
TRIALFLOW = str(Path(sys.executable).with_name("trialflow"))  # the installed command

# What a user reads when the database is away, busy, full or read-only (events/translate.py)
SERVER_AWAY = ("Cannot connect to the database server (it is down or restarting); nothing was "
               "written, try again once it is back.")
CONNECTION_LOST = ("Lost the connection to the database; nothing was confirmed written, retry "
                   "the command with the same --command-id.")
BUSY = ("The database file is locked by another process and stayed locked past the busy "
        "timeout; nothing was written, try again.")
FULL = "The database or its disk is full; nothing was written."
READ_ONLY = "The database is open read-only; nothing was written."
RETRYABLE = {SERVER_AWAY, CONNECTION_LOST}

WRITERS = ("S-011", "S-012", "S-013")  # one subject each; the last writes in-process
DOWN_SECONDS = 0.8  # how long the server stays away in the default run


# ---------------------------------------------------------------------------- helpers
def trialflow(argv: Sequence[str], env: dict[str, str], *, timeout: float = 60
              ) -> subprocess.CompletedProcess[str]:
    """The installed `trialflow` command, as a user runs it."""
    return subprocess.run([TRIALFLOW, *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


def error_line(stderr: str) -> str:
    """The one sentence a failed command printed (no traceback, nothing else)."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert lines[0].endswith("."), stderr
    return lines[0].removeprefix("Error: ")


def session_env(url: str, user: str) -> dict[str, str]:
    """The environment of `user`'s CLI runs: a live session, or the scheduler's secret file
    (tests/support/auth.py)."""
    env = login_environ(["--user", user], dict(os.environ), url=url)
    env["TRIALFLOW_DB"] = url
    return env


def positions_of(stdout: str) -> list[int]:
    found = re.search(r"Positions: ([0-9, ]+)\.", stdout)
    assert found is not None, stdout
    return [int(p) for p in found.group(1).split(", ")]


def dispose_engines() -> None:
    """Close every pooled connection of this process (a SQLite WAL is then checkpointed and
    removed, as when the last user of a file leaves)."""
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, Engine):
            obj.dispose()


def today() -> date:
    return datetime.now(UTC).date()


# ---------------------------------------------------------------------------- worker processes
def _write_loop(url: str, mode: str, subject: str, stop: Path) -> None:
    """Record vitals for `subject` until `stop` exists; print one JSON line per command with
    every attempt. A command that exits 3 is retried with the same command id until it is
    done (a user following the message). `mode` cli: each command is a fresh `trialflow` run
    (cli.app.run, its own engine); flow: one long-lived executor (the coordinator acting
    through `Actors` with a session) whose pooled connections die with the server."""
    from cli.app import run

    env = dict(os.environ)
    flow = None
    if mode == "flow":
        flow = Actors(Executor(build_app(url, kdf=TEST_KDF)))
        flow.know(COORDINATOR, PASSWORD)
    deadline = time.monotonic() + 90
    number = 0
    while not stop.exists() and time.monotonic() < deadline:
        command_id = f"{subject}-{number}"
        tokens = [f"weight_kg={40 + number % 60}", "height_cm=162"]
        attempts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            out, err = io.StringIO(), io.StringIO()
            try:
                if flow is None:
                    status = run(["--db", url, "--user", COORDINATOR, "record", subject,
                                  "vitals", *tokens, "--command-id", command_id],
                                 stdout=out, stderr=err, environ=env)
                else:
                    outcome = flow.send(COORDINATOR, M.RecordForm(subject, "vitals",
                                                                  tuple(tokens)), command_id)
                    status = 0
                    note = " (repeated command: nothing appended)" * outcome.result.duplicate
                    out.write(f"Recorded{note}. Positions: "
                              f"{', '.join(map(str, outcome.result.positions))}.\n")
            except StoreUnavailable as error:
                status = 3 if error.retryable else 1
                err.write(f"Error: {error}\n")
            except Exception as error:  # a bug: reported, never retried
                import traceback

                status = -1
                err.write("".join(traceback.format_exception(error)))
            attempts.append({"status": status, "out": out.getvalue(), "err": err.getvalue()})
            if flow is None:
                gc.collect()  # each run's engine and its connections go now, not later
            if status != 3:
                break
            time.sleep(0.05)
        print(json.dumps({"id": command_id, "attempts": attempts}), flush=True)
        number += 1
        time.sleep(0.03)  # a pace that leaves the scheduler a share of the two cores


def _tick_loop(url: str, first: str, days: int, stop: Path) -> None:
    """`scheduler tick` one simulated day after the other (from `first`, at most `days` days,
    then the last day again) until `stop` exists; each tick retried as `_write_loop` does."""
    from cli.app import run

    env = dict(os.environ)
    start = datetime.fromisoformat(first)
    deadline = time.monotonic() + 90
    day = 0
    while not stop.exists() and time.monotonic() < deadline:
        now = (start + timedelta(days=min(day, days))).isoformat()
        attempts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            out, err = io.StringIO(), io.StringIO()
            try:
                status = run(["--db", url, "--user", "scheduler", "--json", "scheduler",
                              "tick", "--now", now], stdout=out, stderr=err, environ=env)
            except Exception as error:
                import traceback

                status = -1
                err.write("".join(traceback.format_exception(error)))
            attempts.append({"status": status, "out": out.getvalue(), "err": err.getvalue()})
            gc.collect()
            if status != 3:
                break
            time.sleep(0.05)
        print(json.dumps({"id": now, "attempts": attempts}), flush=True)
        day += 1


def main(argv: Sequence[str]) -> None:
    from cli.logging_setup import configure

    configure("warning", sys.stderr)  # stdout carries the JSON lines only
    kind, url, *rest = argv
    if kind == "writer":
        _write_loop(url, rest[0], rest[1], Path(rest[2]))
    elif kind == "ticker":
        _tick_loop(url, rest[0], int(rest[1]), Path(rest[2]))
    else:
        raise SystemExit(f"unknown worker {kind}")


@dataclass
class Worker:
    """A worker process and the JSON lines it printed so far (read by a thread)."""

    process: subprocess.Popen[str]
    stderr: Any  # a temporary file
    lines: list[dict[str, Any]] = field(default_factory=list)
    thread: threading.Thread | None = None

    @classmethod
    def start(cls, argv: Sequence[str], env: dict[str, str]) -> Worker:
        stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by finish() or kill()
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.test_database_faults", *argv], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        worker = cls(process, stderr)
        worker.thread = threading.Thread(target=worker._read, daemon=True)
        worker.thread.start()
        return worker

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def done(self) -> int:
        return len(self.lines)

    def finish(self, timeout: float = 60) -> list[dict[str, Any]]:
        assert self.thread is not None
        self.thread.join(timeout)  # every line read (the thread alone reads stdout)
        self.process.wait(timeout)
        self.stderr.seek(0)
        assert self.process.returncode == 0, self.stderr.read()
        self.stderr.close()
        return self.lines

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def wait_until(condition: Any, what: str, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    """A private PostgreSQL server for this module (its own initdb directory and port)."""
    yield from private_server()


@pytest.fixture
def running(server: PrivateServer) -> PrivateServer:
    if not server.running():  # an earlier test failed while it was stopped
        server.start()
    return server


def pg_rows(server: PrivateServer, url: str, sql: LiteralString) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(server.dsn(url.rsplit("/", 1)[1]), autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


def _without_reminders(stderr: str) -> str:
    """stderr without the log channel's reminder lines: a pass may deliver a reminder to the
    log (at least once) before the server goes away and its record of the delivery fails."""
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if '"event": "reminder"' not in line)


def check_attempts(lines: list[dict[str, Any]]) -> tuple[int, int]:
    """Every attempt exited 0 or 3 (one clear retryable sentence), every command ended with
    0. Returns (failed attempts, commands whose success was a repeat of a lost answer)."""
    failed = repeats = 0
    for line in lines:
        *retries, last = line["attempts"]
        assert last["status"] == 0, line
        for attempt in retries:
            assert attempt["status"] == 3, line
            err = _without_reminders(attempt["err"])
            if err:  # plain text: one line on stderr
                assert error_line(err) in RETRYABLE, line
            else:  # --json: one document on stdout
                body = json.loads(attempt["out"])
                assert body["error"] in RETRYABLE and body["rule"] == "connection_lost", line
            failed += 1
        repeats += "(repeated command: nothing appended)" in last["out"] and bool(retries)
    return failed, repeats


def run_crash(server: PrivateServer, url: str, d0: date, down: float, crashes: int,
              tmp: Path) -> dict[str, Any]:
    """Writers and a scheduler run while the server is crashed `crashes` times for `down`
    seconds; returns what they printed."""
    stop = tmp / "stop"
    env = session_env(url, COORDINATOR)
    first = datetime.fromisoformat(f"{d0.isoformat()}T12:00:00+08:00").isoformat()
    workers = [Worker.start(["writer", url, "cli", subject, str(stop)], env)
               for subject in WRITERS[:-1]]
    workers.append(Worker.start(["writer", url, "flow", WRITERS[-1], str(stop)], env))
    ticker = Worker.start(["ticker", url, first, "120", str(stop)],
                          session_env(url, "scheduler"))
    everyone = [*workers, ticker]
    try:
        downtimes = []
        for _ in range(crashes):  # the writers have done 3 commands, the scheduler a tick
            marks = [w.done() + 3 for w in workers] + [ticker.done() + 1]
            wait_until(lambda m=marks: all(w.done() >= n for w, n in zip(everyone, m,
                                                                          strict=True)),
                       "the workers to make progress")
            began = time.monotonic()
            server.stop("immediate")  # a crash: every connection cut, no checkpoint
            time.sleep(down)
            server.start()  # crash recovery replays the WAL
            downtimes.append(time.monotonic() - began)
        marks = [w.done() + 3 for w in workers] + [ticker.done() + 2]
        wait_until(lambda: all(w.done() >= n for w, n in zip(everyone, marks, strict=True)),
                   "the workers to make progress after the restart")
        stop.touch()
        return {"writers": [w.finish() for w in workers], "ticks": ticker.finish(),
                "downtimes": downtimes}
    finally:
        for worker in everyone:
            worker.kill()


def crash_scenario(server: PrivateServer, tmp: Path, *, down: float, crashes: int) -> None:
    url = server.create_database()
    clock = FakeClock("2024-09-02T04:00:00+00:00")
    flow = new_study(url, clock)
    d0 = infused(flow, "S-001", date(2024, 9, 2), clock)  # visits: reminders to issue
    for subject in WRITERS:
        flow.send(COORDINATOR, M.ConsentSubject(subject, date(2024, 9, 2), "2.0"))
    dispose_engines()

    found = run_crash(server, url, d0, down, crashes, tmp)

    # Writers: every command done once, whatever the number of attempts
    failed = repeats = 0
    commands: dict[str, list[int]] = {}
    for lines in found["writers"]:
        more_failed, more_repeats = check_attempts(lines)
        failed, repeats = failed + more_failed, repeats + more_repeats
        commands.update({line["id"]: positions_of(line["attempts"][-1]["out"])
                         for line in lines})
    assert failed >= crashes, "the writers never met the server away"
    logged = pg_rows(server, url, "SELECT command_id, array_agg(position) FROM events WHERE "
                     "stream_id LIKE 'S-01_' AND type = 'FormRecorded' GROUP BY command_id")
    assert {cid: sorted(p) for cid, p in logged} == commands  # none lost, none twice
    count, last = pg_rows(server, url, "SELECT count(*), max(position) FROM events")[0]
    assert count == last  # positions are gap-free

    # A retry long after, by a real `trialflow` process: the first result, nothing appended
    some = sorted(commands)[0]
    subject, number = some.rsplit("-", 1)
    again = trialflow(["--user", COORDINATOR, "record", subject, "vitals",
                       f"weight_kg={40 + int(number) % 60}", "height_cm=162",
                       "--command-id", some], session_env(url, COORDINATOR))
    assert again.returncode == 0, again.stderr
    assert "(repeated command: nothing appended)" in again.stdout
    assert positions_of(again.stdout) == commands[some]

    # The scheduler: every tick ended done, no reminder issued twice, none missing now
    check_attempts(found["ticks"])
    issued = pg_rows(server, url, "SELECT payload::json->>'reminder_id', count(*) FROM events "
                     "WHERE type = 'ReminderIssued' GROUP BY 1")
    assert issued and all(n == 1 for _, n in issued), issued
    again_tick = trialflow(["--user", "scheduler", "--json", "scheduler", "tick", "--now",
                            found["ticks"][-1]["id"]], session_env(url, "scheduler"))
    assert again_tick.returncode == 0, again_tick.stderr
    assert json.loads(again_tick.stdout)["issued"] == []

    # The log verifies; the read models catch up to what a rebuild gives
    verify = trialflow(["audit", "verify"], session_env(url, COORDINATOR))
    assert verify.returncode == 0 and verify.stdout.startswith(f"OK: {last} events"), (
        verify.stdout + verify.stderr)
    app = build_app(url)
    caught_up = snapshot(open_view(app.engine, app.store))
    assert caught_up == memory_snapshot(app.store)
    Runner(app.engine, app.store).rebuild()
    assert snapshot(open_view(app.engine, app.store)) == caught_up
    app.engine.dispose()
    print(f"\n{len(commands)} writes, {failed} failed attempts (exit 3), {repeats} answers lost "
          f"after the commit, {len(found['ticks'])} ticks, {len(issued)} reminders; server "
          f"away {', '.join(f'{d:.2f}' for d in found['downtimes'])} s")


@pytest.mark.postgres
def test_writers_and_the_scheduler_survive_a_server_crash(running: PrivateServer,
                                                          tmp_path: Path) -> None:
    crash_scenario(running, tmp_path, down=DOWN_SECONDS, crashes=1)


@pytest.mark.soak
@pytest.mark.postgres
def test_writers_survive_repeated_server_crashes(running: PrivateServer,
                                                 tmp_path: Path) -> None:
    crash_scenario(running, tmp_path, down=3.0, crashes=10)


@pytest.mark.postgres
def test_a_server_that_is_down_from_the_start(running: PrivateServer) -> None:
    url = running.create_database()
    clock = FakeClock("2024-09-02T04:00:00+00:00")
    new_study(url, clock).send(COORDINATOR, M.ConsentSubject("S-001", date(2024, 9, 2), "2.0"))
    dispose_engines()
    cora, scheduler = session_env(url, COORDINATOR), session_env(url, "scheduler")
    write = ["--user", COORDINATOR, "record", "S-001", "vitals", "weight_kg=58",
             "height_cm=162", "--command-id", "down-1"]
    running.stop("fast")
    try:
        commands: list[tuple[list[str], dict[str, str]]] = [
            (write, cora), (["audit", "verify"], cora), (["status"], cora),
            (["--user", "scheduler", "scheduler", "tick"], scheduler)]
        results = _in_parallel(commands)
    finally:
        running.start()
    for (argv, _), done in zip(commands, results, strict=True):
        assert done.returncode == 3, (argv, done.stdout, done.stderr)
        assert error_line(done.stderr) == SERVER_AWAY, argv
    back = trialflow(write, cora)  # the same command once the server is back: done once
    assert back.returncode == 0 and "repeated" not in back.stdout, back.stderr
    assert pg_rows(running, url, "SELECT count(*) FROM events WHERE command_id = 'down-1'") == [
        (1,)]


def _in_parallel(commands: list[tuple[list[str], dict[str, str]]]
                 ) -> list[subprocess.CompletedProcess[str]]:
    processes = [subprocess.Popen([TRIALFLOW, *argv], env=env, cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for argv, env in commands]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


# ---------------------------------------------------------------------------- SQLite
def sqlite_study(path: Path, subject: str = "S-001", *, consented_days_ago: int = 3) -> Desk:
    """A study on the SQLite file `path` with `subject` consented `consented_days_ago` days
    ago and screened (the CLI's clock is the real one)."""
    clock = FakeClock(datetime.now(UTC))
    flow = new_study(f"sqlite:///{path}", clock)
    screen_eligible(flow, subject, today() - timedelta(days=consented_days_ago))
    return flow


def last_position(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def command_rows(path: Path, command_id: str) -> tuple[int, int]:
    """(events, commands rows) the command id has in the file."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        events = conn.execute("SELECT count(*) FROM events WHERE command_id = ?",
                              (command_id,)).fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM commands WHERE command_id = ?",
                            (command_id,)).fetchone()[0]
    return int(events), int(rows)


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@pytest.mark.parametrize("timeout", [
    pytest.param(0.5, id="timeout-0.5s"),
    pytest.param(None, id="default-5s", marks=pytest.mark.soak)])
def test_a_locked_sqlite_file_is_busy_after_the_timeout(tmp_path: Path,
                                                        timeout: float | None) -> None:
    path = tmp_path / "trialflow.db"
    sqlite_study(path)
    dispose_engines()
    url = f"sqlite:///{path}" + ("" if timeout is None else f"?timeout={timeout}")
    env = session_env(f"sqlite:///{path}", INVESTIGATOR)
    before = last_position(path)
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        started = time.monotonic()
        write, read, query = _in_parallel([
            (["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
              "--command-id", "locked-1"], env),
            (["--db", url, "audit", "verify"], env),
            (["--db", url, "--json", "eligibility", "S-001"], env)])
        waited = time.monotonic() - started
    finally:
        locker.communicate("release\n", timeout=30)
    assert write.returncode == 3 and error_line(write.stderr) == BUSY
    assert waited >= (timeout or 5.0)
    assert read.returncode == 0 and read.stdout.startswith(f"OK: {before} events")  # reads go on
    # a read-model query cannot move the tables: it folds the lag in memory and answers
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout)["subject"] == "S-001"
    assert last_position(path) == before and command_rows(path, "locked-1") == (0, 0)
    again = trialflow(["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
                       "--command-id", "locked-1"], env)
    assert again.returncode == 0, again.stderr
    assert command_rows(path, "locked-1") == (len(positions_of(again.stdout)), 1)
    print(f"\nbusy after {waited:.2f} s (timeout {timeout or 5.0} s, two process start-ups)")


@contextlib.contextmanager
def page_limit(path: Path, pages: int) -> Iterator[None]:
    """Every SQLite connection this process opens to `path` may grow it to `pages` pages."""
    def limit(dbapi_connection: Any, _record: Any) -> None:
        name = dbapi_connection.execute("PRAGMA database_list").fetchone()[2]
        if os.path.realpath(name) == os.path.realpath(path):
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", limit)
    try:
        yield
    finally:
        event.remove(Engine, "connect", limit)
        dispose_engines()


def test_a_full_database_refuses_the_whole_command(tmp_path: Path) -> None:
    """PRAGMA max_page_count from the current size upward: each limit the command's append
    (three events in two streams, and the command row) does not fit in fails it at another
    point; every failure writes nothing, and the first limit it fits in writes it once."""
    from tests.support.auth import run_cli

    path = tmp_path / "trialflow.db"
    sqlite_study(path)
    url = f"sqlite:///{path}"
    env = session_env(url, INVESTIGATOR)  # the session exists before the limit
    dispose_engines()
    # Pages of 512 bytes: an event's row (its three hashes alone are 192 bytes) overflows a
    # leaf, so the command's append must grow the file whatever room the last leaves of the
    # b-trees have left (with 4 KB pages and the few indexes of migration 4 it may fit in them).
    pages = _packed(path, page_size=512)  # no free pages: the append must grow the file
    before = last_position(path)
    argv = ["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
            "--command-id", "full-1"]
    refused = 0
    for extra in range(0, 20):
        out, err = io.StringIO(), io.StringIO()
        with page_limit(path, pages + extra):
            status = run_cli(argv, stdout=out, stderr=err, environ=env)
        if status == 0:
            break
        assert status == 1 and error_line(err.getvalue()) == FULL, (extra, err.getvalue())
        assert last_position(path) == before and command_rows(path, "full-1") == (0, 0)
        refused += 1
    assert refused >= 1 and status == 0, f"never fitted ({refused} refusals)"
    events, rows = command_rows(path, "full-1")
    assert events == len(positions_of(out.getvalue())) == 3 and rows == 1

    # The store itself, with an append of 40 events of 1 KB in two streams (some 12 pages):
    # each limit stops it at another event, and none of it stays.
    big = [StreamAppend(stream, None, [NewEvent("Filler", {"text": "x" * 1000, "n": n})
                                       for n in range(20)]) for stream in ("S-091", "S-092")]
    pages = _packed(path, page_size=4096)
    before, stopped = last_position(path), 0
    for extra in range(0, 40, 3):
        with page_limit(path, pages + extra):
            try:
                build_app(url).store.append_streams(big, AppendContext("ivan", "investigator"))
            except StoreUnavailable as error:
                assert error.rule == "database_full" and str(error) == FULL
                assert last_position(path) == before
                stopped += 1
                continue
        break
    assert stopped >= 3 and last_position(path) == before + 40
    verify = trialflow(["--db", url, "audit", "verify"], dict(os.environ))
    assert verify.returncode == 0, verify.stderr
    print(f"\nthe command refused at {refused} page limit(s); the 40-event append at {stopped}")


def _packed(path: Path, *, page_size: int) -> int:
    """The database rewritten with pages of `page_size` bytes and no free page (a page size
    changes only outside WAL mode, by VACUUM); its pages."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode = WAL")
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


@contextlib.contextmanager
def small_filesystem(megabytes: int, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of `megabytes` (and at most `inodes` files), mounted for the test (skips where
    mounting is not allowed)."""
    root = Path(tempfile.mkdtemp(prefix="trialflow-full-"))
    size = f"size={megabytes}m" + ("" if inodes is None else f",nr_inodes={inodes}")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs",
                           str(root)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        root.rmdir()
        if shutil.which("mount") is None or os.geteuid() != 0 or done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})"
                        "; the page-limit test covers a full database")
    try:
        yield root
    finally:
        dispose_engines()
        subprocess.run(["umount", str(root)], check=False)
        root.rmdir()


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    return filler


def test_a_full_filesystem_refuses_the_whole_command() -> None:
    from tests.support.auth import run_cli

    with small_filesystem(4) as root:
        path = root / "trialflow.db"
        sqlite_study(path)
        url = f"sqlite:///{path}"
        env = session_env(url, INVESTIGATOR)
        dispose_engines()  # the WAL is checkpointed and removed: a write must create it
        before = last_position(path)
        filler = fill(root)
        argv = ["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
                "--command-id", "full-2"]
        out, err = io.StringIO(), io.StringIO()
        status = run_cli(argv, stdout=out, stderr=err, environ=env)
        dispose_engines()
        assert status == 1 and error_line(err.getvalue()) == FULL, err.getvalue()
        filler.unlink()
        assert last_position(path) == before and command_rows(path, "full-2") == (0, 0)
        status = run_cli(argv, stdout=out, stderr=err, environ=env)
        assert status == 0, err.getvalue()
        assert command_rows(path, "full-2") == (3, 1)


def settle(path: Path) -> tuple[str, int]:
    """Close every connection of this process to `path`, last a writable one, which
    checkpoints and removes the -wal and the -shm (a read-only connection, as
    `last_position` opens, leaves them); the file's SHA-256 and its number of events."""
    dispose_engines()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        events = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    return file_digest(path), events


def fill_inodes(directory: Path) -> int:
    """Create empty files in `directory` until its filesystem has no free inode left."""
    created = 0
    with contextlib.suppress(OSError):
        while True:
            (directory / f"inode-{created}").touch()
            created += 1
    return created


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def full_disk_run(url: str, env: dict[str, str], scheduler: dict[str, str], command_id: str,
                  names: Sequence[str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Real processes at once: a write (`confirm-eligibility` with `command_id`), a scheduler
    pass and reads, those of `names`."""
    commands = {
        "write": (["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
                   "--command-id", command_id], env),
        "tick": (["--db", url, "--user", "scheduler", "scheduler", "tick"], scheduler),
        "eligibility": (["--db", url, "eligibility", "S-001"], env),
        "verify": (["--db", url, "audit", "verify"], env),
        "status": (["--db", url, "--json", "status"], env),
    }
    chosen = {name: commands[name] for name in names}
    return dict(zip(chosen, _in_parallel(list(chosen.values())), strict=True))


def assert_full(found: dict[str, subprocess.CompletedProcess[str]], *names: str) -> None:
    """Each of `names` exited 1 with the one `database_full` sentence (never "disk I/O
    error")."""
    for name in names:
        done = found[name]
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        if "--json" in done.args:
            body = json.loads(done.stdout)
            assert (body["error"], body["rule"]) == (FULL, "database_full"), name
        else:
            assert error_line(done.stderr) == FULL, (name, done.stderr)


def test_a_database_opened_on_a_full_filesystem_is_full() -> None:
    """Every connection closed (no -wal, no -shm), then the filesystem fills: SQLite cannot
    create its WAL index and says "disk I/O error" (SQLITE_IOERR_SHMSIZE); every command,
    reads included, is refused as full, nothing is written, and once there is room the same
    command id writes its events once."""
    with small_filesystem(4) as root:
        path = root / "trialflow.db"
        sqlite_study(path, consented_days_ago=24)
        url = f"sqlite:///{path}"
        env, scheduler = session_env(url, INVESTIGATOR), session_env(url, "scheduler")
        digest, before = settle(path)
        filler = fill(root)
        found = full_disk_run(url, env, scheduler, "full-3",
                              ["write", "tick", "eligibility", "verify", "status"])
        assert_full(found, "write", "tick", "eligibility", "verify", "status")
        filler.unlink()
        assert file_digest(path) == digest and last_position(path) == before
        assert command_rows(path, "full-3") == (0, 0)
        again = trialflow(["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
                           "--command-id", "full-3"], env)
        assert again.returncode == 0, again.stderr
        assert command_rows(path, "full-3") == (3, 1)


def test_a_filesystem_without_free_inodes_is_full() -> None:
    """Room for bytes, none for another file: SQLite cannot create its -wal ("unable to open
    database file"), which is reported as full too."""
    with small_filesystem(8, inodes=40) as root:
        path = root / "trialflow.db"
        sqlite_study(path)
        url = f"sqlite:///{path}"
        env = session_env(url, INVESTIGATOR)
        _, before = settle(path)
        assert fill_inodes(root) > 0
        found = full_disk_run(url, env, env, "full-4", ["write", "eligibility", "verify"])
        assert_full(found, "write", "eligibility", "verify")
        for inode in root.glob("inode-*"):
            inode.unlink()
        assert last_position(path) == before and command_rows(path, "full-4") == (0, 0)


def test_a_full_filesystem_while_the_database_is_open() -> None:
    """Another process keeps the database open (its -wal and WAL index stay) and the log has
    grown past the file (a reader's snapshot held the checkpoint back) when the filesystem
    fills. The write is refused as full (its WAL cannot grow); reads answer, the read models'
    lag folded in memory. When the last connection leaves, its checkpoint cannot grow the
    file: the log stays in the -wal, and it is all still read there. With room again the
    same command id writes once, and nothing was lost."""
    with small_filesystem(8) as root:
        path = root / "trialflow.db"
        flow = sqlite_study(path)
        url = f"sqlite:///{path}"
        env = session_env(url, INVESTIGATOR)
        dispose_engines()
        holder = sqlite3.connect(path)  # the other process's connection, WAL index mapped
        holder.execute("SELECT count(*) FROM events").fetchone()
        pin = sqlite3.connect(path, isolation_level=None)  # a reader's snapshot
        pin.execute("BEGIN")
        pin.execute("SELECT count(*) FROM events").fetchone()
        for weight in range(40, 60):  # 20 forms the checkpoint cannot pass
            flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", (f"weight_kg={weight}",
                                                                    "height_cm=162")))
        pin.execute("COMMIT")
        pin.close()
        dispose_engines()
        before = last_position(path)
        filler = fill(root)
        try:
            found = full_disk_run(url, env, env, "full-5", ["write", "eligibility", "verify"])
            assert_full(found, "write")
            during = found["eligibility"]
            assert during.returncode == 0 and not during.stderr, during.stderr
            assert found["verify"].stdout.startswith(f"OK: {before} events")
            holder.close()  # the last connection: its checkpoint finds no room
            assert (root / "trialflow.db-wal").stat().st_size > 0
            found = full_disk_run(url, env, env, "full-5", ["write", "verify"])
            assert_full(found, "write")
            assert found["verify"].stdout.startswith(f"OK: {before} events")
        finally:
            holder.close()
            filler.unlink()
        assert last_position(path) == before and command_rows(path, "full-5") == (0, 0)
        caught_up = trialflow(["--db", url, "eligibility", "S-001"], env)  # moves the tables
        assert caught_up.returncode == 0 and caught_up.stdout == during.stdout
        again = trialflow(["--db", url, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
                           "--command-id", "full-5"], env)
        assert again.returncode == 0, again.stderr
        verify = trialflow(["--db", url, "audit", "verify"], env)
        assert verify.stdout.startswith(f"OK: {before + 3} events"), verify.stdout


def test_a_fresh_database_on_a_full_filesystem_is_not_created() -> None:
    """`trialflow init` of a new file on a full filesystem: refused as full, and no file is
    left behind (neither the database, nor its -wal or -shm, nor the scheduler's secret)."""
    with small_filesystem(1) as root:
        from cli.app import run

        filler = fill(root)
        url = f"sqlite:///{root}/new.db"
        argv = ["--db", url, "init", "--admin", "ada", "--password-stdin"]
        out, err = io.StringIO(), io.StringIO()
        status = run(argv, stdout=out, stderr=err, stdin=io.StringIO(f"{PASSWORD}\n"),
                     environ={})
        dispose_engines()
        assert status == 1 and error_line(err.getvalue()) == FULL, err.getvalue()
        assert sorted(p.name for p in root.iterdir()) == ["filler"]
        filler.unlink()
        out, err = io.StringIO(), io.StringIO()
        status = run(argv, stdout=out, stderr=err, stdin=io.StringIO(f"{PASSWORD}\n"),
                     environ={})
        assert status == 0, err.getvalue()
        dispose_engines()
        assert sorted(p.name for p in root.iterdir()) == ["new.db", "new.scheduler-secret"]


def test_a_disk_io_error_is_full_only_when_the_disk_is(tmp_path: Path) -> None:
    """SQLite's "disk I/O error" is `database_full` when the database's filesystem has no
    room, else its own refusal (`database_io_error`): a failing disk is not a full one."""
    import sqlalchemy.exc as sa_exc

    from events.engine import create_store_engine
    from events.translate import translate

    def io_error() -> sa_exc.DBAPIError:
        orig = sqlite3.OperationalError("disk I/O error")
        orig.sqlite_errorname = "SQLITE_IOERR_WRITE"  # type: ignore[attr-defined]
        return sa_exc.OperationalError("INSERT …", None, orig)

    roomy = create_store_engine(f"sqlite:///{tmp_path}/roomy.db")
    failing = translate(io_error(), roomy)
    assert failing.rule == "database_io_error" and "disk I/O error" in str(failing)
    with small_filesystem(1) as root:
        full = create_store_engine(f"sqlite:///{root}/full.db")
        assert translate(io_error(), roomy).rule == "database_io_error"
        filler = fill(root)
        assert translate(io_error(), full).rule == "database_full"
        assert translate(io_error(), roomy).rule == "database_io_error"  # another disk
        assert translate(io_error()).rule == "database_full"  # any of this process's files
        filler.unlink()
        assert translate(io_error(), full).rule == "database_io_error"
        full.dispose()
    roomy.dispose()


def test_a_read_only_database_refuses_writes_and_still_reads(tmp_path: Path) -> None:
    """`?mode=ro`: writes (a coordinator's, the scheduler's) exit 1 with one sentence; the reads
    fold what the read models lack in memory; the file does not change by a byte."""
    path = tmp_path / "trialflow.db"
    # consented 24 days ago: the screening window (28 days) closes in a few days, so the
    # scheduler has a reminder to issue now (a pass may not be run at a later --now)
    sqlite_study(path, consented_days_ago=24)
    dispose_engines()
    url = f"sqlite:///{path}"
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    env = session_env(url, INVESTIGATOR)
    scheduler = session_env(url, "scheduler")
    dispose_engines()
    digest, before = file_digest(path), last_position(path)
    results = _in_parallel([
        (["--db", read_only, "--user", INVESTIGATOR, "confirm-eligibility", "S-001",
          "--command-id", "ro-1"], env),
        (["--db", read_only, "--user", "scheduler", "scheduler", "tick"], scheduler),
        (["--db", read_only, "eligibility", "S-001"], env),
        (["--db", read_only, "audit", "verify"], env)])
    write, tick, eligibility, verify = results
    assert write.returncode == 1 and error_line(write.stderr) == READ_ONLY
    assert tick.returncode == 1 and error_line(tick.stderr) == READ_ONLY  # a reminder was due
    assert verify.returncode == 0 and verify.stdout.startswith(f"OK: {before} events")
    assert eligibility.returncode == 0, eligibility.stderr
    assert file_digest(path) == digest and command_rows(path, "ro-1") == (0, 0)
    writable = trialflow(["--db", url, "eligibility", "S-001"], env)  # catches up, then reads
    assert writable.stdout == eligibility.stdout


if __name__ == "__main__":
    main(sys.argv[1:])
