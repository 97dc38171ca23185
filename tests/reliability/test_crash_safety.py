"""Crash safety: a real worker process (tests/reliability/crash_worker.py) is killed with SIGKILL
again and again, at random moments aimed at the dangerous places — inside an append's
transaction, right after a commit, inside a projection catch-up's transaction, between the
issue of a reminder and its delivery — while it appends subjects' commands, catches the
projections up and runs scheduler passes. After every kill, before the next start:

- `trialflow audit verify` exits 0 (every stream's hash chain is whole);
- positions run 1..N without a gap, and every command's events are all there or none: the
  events carrying a command id are exactly the positions its `commands` row names, and no
  event lacks its command row;
- every append the killed process reported (`ok CMD POSITIONS`, written after the commit
  returned) is in the log at those positions; an append killed in flight is either whole
  or absent;
- every projection's tables (the study's facts too), at that projection's checkpoint, equal
  a rebuild up to that checkpoint: the fold of the log in memory, and on SQLite also a real
  `Runner.rebuild(up_to=checkpoint)` into a copy of the database;
- no reminder is issued twice (per id and per obligation), no delivery is recorded twice,
  and every recorded delivery was really sent (the worker says `send` before it records).

The restarted worker repeats the day it was killed in (every command has a fixed id, so what
was committed comes back as its first result). At the end a last worker runs its day and a
scheduler pass to completion: every issued reminder has been delivered on both channels, and
a `rebuild` in place leaves every table as it was.

Workers are forked by one `crash_worker --serve` process that imported everything once, so a
restart costs a fork and not half a second of imports; each worker is a process of its own,
killed by its pid.

The kill's moment: each kill aims at one kind of place in turn (the n-th `tx`, `ok`, `cutx`,
issued-reminder or `send` line, n random, plus a random sub-millisecond to few-millisecond
delay, or a random time), and is then classified by where the worker really was: its last
line, and whether the database holds a reminder issued and not yet delivered. Seeds are
fixed (TRIALFLOW_CRASH_SEED overrides) and printed with every failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from select import select as wait_readable
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text

from events.chain import verify
from events.engine import create_store_engine
from events.store import EventStore
from events.streams import STUDY_STREAM
from projections import registry
from projections import tables as t
from projections.runner import Runner
from projections.study_facts import facts_of
from projections.views import View
from tests.projections.support import memory_snapshot, snapshot
from tests.reliability.crash_worker import START
from tests.support.pg import fresh_database
from workflow.study import Study, fold_study

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("TRIALFLOW_CRASH_SEED", "20250611"))
TARGETS = ("append-tx", "after-commit", "catchup-tx", "issue-delivery", "random")
CHANNELS = ("log", "webhook")
DEADLINE = 6.0  # seconds a worker may run before it is killed whatever it is doing


# --- one worker, started and killed --------------------------------------------------------


@dataclass
class Life:
    """One run of the worker: what it said, and where it was killed."""

    lines: list[str]
    returncode: int | None
    target: str
    ran: float  # seconds from start to kill

    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    def day(self) -> date | None:
        for line in reversed(self.lines):
            if line.startswith("day "):
                return date.fromisoformat(line.split()[1])
        return None


def _wanted(target: str, rng: random.Random) -> tuple[Callable[[str], bool], int, float]:
    """(the line to wait for, which occurrence of it, the longest delay after it in seconds)."""
    if target == "append-tx":
        return (lambda line: line.startswith("tx ")), rng.randint(1, 30), 0.010
    if target == "after-commit":
        return (lambda line: line.startswith("ok ") and line.endswith(" new")), \
            rng.randint(1, 30), 0.0005
    if target == "catchup-tx":
        return (lambda line: line == "cutx rows"), rng.randint(1, 5), 0.005
    if target == "issue-delivery":
        return (lambda line: line.startswith(("ok reminder-issue-", "send "))), \
            rng.randint(1, 8), 0.005
    return (lambda line: False), 1, 0.0


class Server:
    """`crash_worker --serve`: one process that imports once and forks a worker for each
    line we send it. Its stdout is read here, in this thread, straight from the pipe (no
    reader thread between a line and the kill)."""

    def __init__(self, url: str, stderr: Path) -> None:
        argv = [sys.executable, "-m", "tests.reliability.crash_worker", "--db", url, "--serve"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALFLOW_")}
        self.stderr = stderr
        self.err = stderr.open("w")
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.err)
        assert self.process.stdout is not None and self.process.stdin is not None
        self.stdin = self.process.stdin
        self.fd = self.process.stdout.fileno()
        self.buffer = b""
        self.pending: list[str] = []
        self.eof = False
        ready = self.line(time.monotonic() + 60)
        assert ready == "ready", f"the worker server did not start: {ready!r}"

    def line(self, until: float) -> str | None:
        """The next line, or None at the end of output or at monotonic time `until`."""
        while not self.pending:
            if self.eof:
                return None
            left = until - time.monotonic()
            if left <= 0 or not wait_readable([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
                continue
            self.buffer += chunk
            *complete, self.buffer = self.buffer.split(b"\n")
            self.pending.extend(c.decode() for c in complete)
        return self.pending.pop(0)

    def life(self, day: date, seed: int, target: str, rng: random.Random | None) -> Life:
        """Fork a worker from `day`; kill it (SIGKILL) at the moment `target` aims at, or
        (rng None) let it finish; what it said and how it ended."""
        self.stdin.write(f"{day.isoformat()} {seed}{' finish' if rng is None else ''}\n"
                         .encode())
        self.stdin.flush()
        lines: list[str] = []
        began = time.monotonic()
        first = self.line(began + 60)
        assert first is not None and first.startswith("start "), f"no worker: {first!r}"
        lines.append(first)
        pid = int(first.split()[1])
        if rng is not None:
            try:
                self._wait_for_aim(lines, target, rng)
            finally:  # whatever happens here, the worker this test forked ends, by its id
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        ran = time.monotonic() - began
        status: int | None = None
        while (line := self.line(time.monotonic() + 300)) is not None:
            if line.startswith(f"exited {pid} "):
                status = int(line.split()[2])
                break
            lines.append(line)
        return Life(lines, status, target, ran)

    def _wait_for_aim(self, lines: list[str], target: str, rng: random.Random) -> None:
        aim, nth, longest = _wanted(target, rng)
        at = time.monotonic() + (rng.uniform(0, 0.8) if target == "random" else DEADLINE)
        seen = 0
        while True:
            line = self.line(at)
            if line is None:  # the moment, or the worker ended by itself (checked after)
                return
            lines.append(line)
            if line.startswith("exited "):  # it ended by itself: put it back for life()
                self.pending.insert(0, lines.pop())
                return
            if aim(line):
                seen += 1
                if seen == nth:
                    delay = rng.uniform(0, longest)
                    if delay:
                        time.sleep(delay)
                    return

    def close(self) -> None:
        """End the server this test started: its stdin closes, it exits; else SIGKILL."""
        self.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.err.close()


# --- what the database holds ----------------------------------------------------------------


def _rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql)).all())


def reminder_events(engine: Engine) -> list[tuple[str, dict[str, Any]]]:
    return [(r.type, json.loads(r.payload)) for r in _rows(
        engine, "SELECT type, payload FROM events WHERE stream_id LIKE 'reminders-%' "
        "ORDER BY position")]


def undelivered(engine: Engine) -> set[tuple[str, str]]:
    """(reminder id, channel) issued, not cancelled and not yet recorded as delivered."""
    issued: set[str] = set()
    cancelled: set[str] = set()
    delivered: set[tuple[str, str]] = set()
    for kind, payload in reminder_events(engine):
        if kind == "ReminderIssued":
            issued.add(payload["reminder_id"])
        elif kind == "ReminderCancelled":
            cancelled.add(payload["reminder_id"])
        elif kind == "ReminderDelivered":
            delivered.add((payload["reminder_id"], payload["channel"]))
    return {(r, c) for r in issued - cancelled for c in CHANNELS} - delivered


def copy_sqlite(url: str, target: Path) -> str:
    """A consistent copy of the database file (sqlite3's online backup)."""
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return f"sqlite:///{target}"


# --- the run --------------------------------------------------------------------------------


@dataclass
class Tally:
    kills: int = 0
    landed: Counter[str] = field(default_factory=Counter)
    aimed: Counter[str] = field(default_factory=Counter)
    in_flight_committed: int = 0
    in_flight_rolled_back: int = 0
    undelivered: int = 0  # kills with a reminder issued and not yet recorded as delivered
    reported: dict[str, tuple[int, ...]] = field(default_factory=dict)  # command -> positions
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reminder, channel)
    kill_seconds: float = 0.0
    check_seconds: float = 0.0
    days: int = 0


class CrashRun:
    def __init__(self, url: str, tmp: Path, seed: int, *, rebuild_copies: bool) -> None:
        self.url = url
        self.tmp = tmp
        self.seed = seed
        self.rebuild_copies = rebuild_copies
        self.engine = create_store_engine(url)
        self.store = EventStore(self.engine)
        self.tally = Tally()
        self.day = START
        self.life: Life | None = None
        self.stderr: Path | None = None
        self.kill = 0

    def context(self) -> str:
        tail = "\n".join(self.life.lines[-12:]) if self.life else ""
        err = self.stderr.read_text()[-3000:] if self.stderr and self.stderr.exists() else ""
        return (f"seed {self.seed} (TRIALFLOW_CRASH_SEED={self.seed}), kill {self.kill}, "
                f"day {self.day}\n--- worker's last lines ---\n{tail}\n--- stderr ---\n{err}")

    def kills(self, count: int) -> None:
        server = Server(self.url, self.tmp / "worker.err")
        self.stderr = server.stderr
        try:
            for n in range(count):
                self.kill = n + 1
                rng = random.Random(self.seed * 100_003 + n)
                target = TARGETS[n % len(TARGETS)]
                life = server.life(self.day, self.seed * 1000 + n, target, rng)
                self.life = life
                assert life.returncode == -signal.SIGKILL, (
                    f"the worker ended with {life.returncode}, not by SIGKILL\n"
                    f"{self.context()}")
                self.tally.kills += 1
                self.tally.aimed[target] += 1
                self.tally.kill_seconds += life.ran
                began = time.monotonic()
                self.tally.landed[self.landing(life)] += 1
                self.absorb(life)
                self.check()
                self.tally.check_seconds += time.monotonic() - began
                self.day = life.day() or self.day
            self.kill = 0
            life = server.life(self.day, self.seed * 1000 - 1, "none", None)
            self.life = life
        finally:
            server.close()
        assert life.returncode == 0 and life.last() == "finished", (
            f"the last worker ended with {life.returncode}\n{self.context()}")
        self.finish(life)

    def finish(self, life: Life) -> None:
        """After the last worker ran its day and a scheduler pass to the end."""
        self.absorb(life)
        self.check()
        assert undelivered(self.engine) == set(), (
            f"issued reminders never delivered\n{self.context()}")
        # at the head: the tables equal a real rebuild of them in place
        runner = Runner(self.engine, self.store)
        runner.catch_up()
        head = self.store.last_position()
        before = self.tables(head)
        runner.rebuild()
        assert self.tables(head) == before, self.context()
        self.check_projections()
        self.tally.days = (self.day - START).days + 1

    # ------------------------------------------------------------------ after a kill
    def landing(self, life: Life) -> str:
        """Where the worker was when it died: its last line says (and the database, for
        reminders issued and not yet delivered)."""
        if undelivered(self.engine):
            self.tally.undelivered += 1
        last = life.last()
        if last.startswith(("tx ", "txi ")):
            cid = last.split()[1]
            committed = bool(_rows(self.engine, "SELECT 1 FROM commands WHERE command_id = "
                                   f"'{cid}'"))
            if committed:
                self.tally.in_flight_committed += 1
                return "between an append's commit and its report"
            self.tally.in_flight_rolled_back += 1
            return "inside an append transaction"
        if last.startswith("cutx "):
            return "inside a catch-up transaction"
        if last.startswith("ok "):
            return "right after a commit"
        if last.startswith("send "):
            return "during a delivery (sent, not recorded)"
        return "elsewhere (reading, folding, starting)"

    def absorb(self, life: Life) -> None:
        for line in life.lines:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "ok":
                positions = tuple(int(p) for p in parts[2].split(",")) if parts[2] else ()
                self.tally.reported[parts[1]] = positions
            elif parts[0] == "send":
                self.tally.sent[(parts[1], parts[2])] += 1

    def check(self) -> None:
        context = self.context
        out, err = io.StringIO(), io.StringIO()
        from cli.app import run

        status = run(["--db", self.url, "audit", "verify"], stdout=out, stderr=err,
                     environ={})
        assert status == 0, f"audit verify: {out.getvalue()}{err.getvalue()}\n{context()}"
        verified = verify(self.store)
        events = _rows(self.engine, "SELECT position, command_id FROM events "
                       "ORDER BY position")
        assert [r.position for r in events] == list(range(1, len(events) + 1)), context()
        assert verified.events == len(events)
        by_command: dict[str, list[int]] = {}
        for row in events:
            by_command.setdefault(row.command_id, []).append(row.position)
        commands = {r.command_id: tuple(json.loads(r.result)["positions"]) for r in _rows(
            self.engine, "SELECT command_id, result FROM commands")}
        assert {c: tuple(p) for c, p in by_command.items()} == commands, (
            f"a command whose events are not all there, or events without their command\n"
            f"{context()}")
        for cid, positions in self.tally.reported.items():
            assert commands.get(cid) == positions, (
                f"reported committed but not in the log: {cid} at {positions}\n{context()}")
        self.check_projections()
        self.check_reminders()

    def check_projections(self) -> None:
        """Each projection's tables equal its rebuild up to its own checkpoint."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table(t.checkpoints.name):
                return  # no catch-up ever committed
            marks = {r.name: int(r.position) for r in conn.execute(select(t.checkpoints))}
        assert set(marks) == set(registry.NAMES), self.context()
        for position in sorted(set(marks.values())):
            names = [n for n, p in marks.items() if p == position]
            tables = self.tables(position)
            folded = memory_snapshot(self.store, position)
            folded[t.study_facts.name] = sorted(json.dumps([k, key, v]) for (k, key), v in (
                facts_of(fold_study(self.store.read_stream(STUDY_STREAM,
                                                           up_to_position=position)))
                .items()))
            rebuilt = self.rebuilt(position) if self.rebuild_copies else None
            for name in names:
                for table in registry.TABLES[name]:
                    assert tables[table.name] == folded[table.name], (
                        f"{table.name} at checkpoint {position} differs from the fold of the "
                        f"log up to there\n{self.context()}")
                    assert rebuilt is None or tables[table.name] == rebuilt[table.name], (
                        f"{table.name} at checkpoint {position} differs from a rebuild\n"
                        f"{self.context()}")

    def tables(self, position: int, engine: Engine | None = None) -> dict[str, list[str]]:
        """Every read-model table's rows, canonical and sorted (the study's facts too)."""
        engine = engine or self.engine
        rows = snapshot(View(position, Study(), "tables", engine=engine))
        with engine.connect() as conn:
            rows[t.study_facts.name] = sorted(json.dumps([r.kind, r.key, r.value]) for r in (
                conn.execute(select(t.study_facts))))
        return rows

    def rebuilt(self, position: int) -> dict[str, list[str]]:
        """The tables a real `rebuild(up_to=position)` writes, into a copy of the database."""
        copy = self.tmp / "rebuilt.db"
        copy.unlink(missing_ok=True)
        engine = create_store_engine(copy_sqlite(self.url, copy))
        try:
            Runner(engine, EventStore(engine)).rebuild(up_to=position)
            return self.tables(position, engine)
        finally:
            engine.dispose()

    def check_reminders(self) -> None:
        found = reminder_events(self.engine)
        ids = Counter(p["reminder_id"] for k, p in found if k == "ReminderIssued")
        keys = Counter((p["subject"], p["obligation"], p["kind"], p.get("generation", 0))
                       for k, p in found if k == "ReminderIssued")
        twice = [i for i, n in ids.items() if n > 1] + [k for k, n in keys.items() if n > 1]
        assert not twice, f"issued twice: {twice}\n{self.context()}"
        delivered = Counter((p["reminder_id"], p["channel"]) for k, p in found
                            if k == "ReminderDelivered")
        assert all(n == 1 for n in delivered.values()), self.context()
        assert set(delivered) <= {(i, c) for i in ids for c in CHANNELS}, self.context()
        never_sent = set(delivered) - set(self.tally.sent)
        assert not never_sent, f"recorded as delivered, never sent: {never_sent}\n{self.context()}"

    def report(self, label: str, seconds: float) -> str:
        tally = self.tally
        issued = sum(1 for k, _ in reminder_events(self.engine) if k == "ReminderIssued")
        repeats = sum(n - 1 for n in tally.sent.values())
        landed = ", ".join(f"{k}: {n}" for k, n in sorted(tally.landed.items()))
        return (f"[crash {label}] seed {self.seed}: {tally.kills} kills in {seconds:.1f} s "
                f"(workers {tally.kill_seconds:.1f} s, checks {tally.check_seconds:.1f} s); "
                f"landed: {landed}; {tally.undelivered} kills between the issue of a reminder "
                f"and its delivery; in-flight appends committed {tally.in_flight_committed}, "
                f"rolled back {tally.in_flight_rolled_back}; {len(tally.reported)} appends "
                f"reported; {self.store.last_position()} events; {issued} reminders issued "
                f"once each, all delivered, {repeats} sends repeated after a kill; "
                f"{tally.days} simulated days")

    def close(self) -> None:
        self.engine.dispose()


def crash_loop(url: str, tmp: Path, kills: int, label: str, *, rebuild_copies: bool
               ) -> CrashRun:
    began = time.monotonic()
    run = CrashRun(url, tmp, SEED, rebuild_copies=rebuild_copies)
    try:
        try:
            run.kills(kills)
        except BaseException:
            print(f"\ncrash safety failed; to repeat: TRIALFLOW_CRASH_SEED={run.seed}\n"
                  f"{run.context()}")
            raise
        print("\n" + run.report(label, time.monotonic() - began))
        landed, least = run.tally.landed, max(1, kills // 20)
        for place in ("inside an append transaction", "inside a catch-up transaction",
                      "right after a commit"):
            assert landed[place] >= least, run.report(label, 0)
        assert run.tally.undelivered >= least, run.report(label, 0)
    finally:
        run.close()
    return run


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crash.db'}"


def test_twenty_kills_on_sqlite(sqlite_file: str, tmp_path: Path) -> None:
    crash_loop(sqlite_file, tmp_path, 20, "sqlite", rebuild_copies=True)


@pytest.mark.soak
def test_two_hundred_kills_on_sqlite(sqlite_file: str, tmp_path: Path) -> None:
    crash_loop(sqlite_file, tmp_path, 200, "soak sqlite", rebuild_copies=True)


@pytest.mark.soak
@pytest.mark.postgres
def test_a_hundred_kills_on_postgres(tmp_path: Path) -> None:
    with fresh_database() as url:
        crash_loop(url, tmp_path, 100, "soak postgres", rebuild_copies=False)
