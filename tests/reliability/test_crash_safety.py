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

A credential change (`trialflow users passwd NAME`, by an admin for another user and by a user
for themselves) is killed at each step of its append, on SQLite and PostgreSQL: the user's
`credentials` row changed if and only if the matching `CredentialsChanged` event is in the log,
and their sessions ended only then; a refused change changes nothing (tests at the end).

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
from datetime import UTC, date, datetime
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
from tests.support.clock import FakeClock
from tests.support.pg import fresh_database
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    PASSWORD,
    TEST_KDF,
    Desk,
    new_study,
)
from workflow import identity
from workflow.commands import messages as M
from workflow.identity import Password, Secret, SessionToken
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


class Serving:
    """A worker server (`python -m MODULE --serve`): one process that imports once and forks a
    worker for each line we send it. Its stdout is read here, in this thread, straight from
    the pipe (no reader thread between a line and the kill)."""

    def __init__(self, argv: list[str], stderr: Path) -> None:
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

    def close(self) -> None:
        """End the server this test started: its stdin closes, it exits; else SIGKILL."""
        self.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.err.close()


class Server(Serving):
    """`crash_worker --serve`: a worker forked for each simulated run we ask for."""

    def __init__(self, url: str, stderr: Path) -> None:
        super().__init__([sys.executable, "-m", "tests.reliability.crash_worker", "--db", url,
                          "--serve"], stderr)

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
        if last.startswith(("tx ", "txi ", "txw ")):
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


# --- a credential change killed at each step --------------------------------------------------

# Where the `users passwd` worker stops to be killed (tests/reliability/passwd_worker.py), and
# whether the change has committed there; None: the command runs to its end.
HALTS: dict[str | None, bool] = {
    "try": False,  # decided, before the append
    "tx": False,  # inside the append's transaction: the lock held, the log's state read
    "txi": False,  # inside it: the event and the command row inserted
    "txw": False,  # inside it: the credential row replaced and the sessions deleted too
    "ok": True,  # right after the commit, before the command answers
    None: True,
}
WITNESS = INVESTIGATOR  # a user whose sessions no change of another user may touch


@dataclass(frozen=True)
class Credentials:
    """What a credential change may touch, read straight from the database."""

    row: tuple[str, ...] | None  # the user's (scheme, salt, hash, changed_at)
    sessions: dict[str, frozenset[str]]  # user -> hashes of their session tokens
    changes: tuple[tuple[int, str, str, bool, str], ...]  # CredentialsChanged of the user:
    # (position, name, by, temporary, command id)
    head: int
    commands: int


def credentials_of(engine: Engine, name: str) -> Credentials:
    from workflow.identity import table

    sqlite = engine.dialect.name == "sqlite"
    row = _rows(engine, f"SELECT scheme, salt, hash, changed_at FROM "
                f"{table('credentials', sqlite=sqlite)} WHERE name = '{name}'")
    sessions: dict[str, set[str]] = {}
    for who, token_hash in _rows(engine, f"SELECT name, token_hash FROM "
                                 f"{table('sessions', sqlite=sqlite)}"):
        sessions.setdefault(str(who), set()).add(str(token_hash))
    changes = []
    for position, payload, command_id in _rows(
            engine, "SELECT position, payload, command_id FROM events WHERE stream_id = "
            f"'{STUDY_STREAM}' AND type = 'CredentialsChanged' ORDER BY position"):
        data = json.loads(payload)
        if data["name"] == name:
            changes.append((int(position), data["name"], data["by"], bool(data["temporary"]),
                            str(command_id)))
    head = int(_rows(engine, "SELECT coalesce(max(position), 0) FROM events")[0][0])
    commands = int(_rows(engine, "SELECT count(*) FROM commands")[0][0])
    return Credentials(None if not row else tuple(str(v) for v in row[0]),
                       {k: frozenset(v) for k, v in sessions.items()}, tuple(changes), head,
                       commands)


@dataclass
class Command:
    """One `users passwd` run by the worker: what it said and how it ended."""

    lines: list[str]
    returncode: int | None
    halted: bool  # stopped where it was asked to, and killed there

    def answer(self) -> tuple[int, dict[str, str]] | None:
        """The command's exit status and output (None: it was killed before it answered)."""
        for line in self.lines:
            if line.startswith("done "):
                _, status, body = line.split(" ", 2)
                return int(status), json.loads(body)
        return None


class PasswdServer(Serving):
    """`passwd_worker --serve`: a `trialflow` command line forked for each request, stopped
    where asked and killed there by its pid."""

    def __init__(self, stderr: Path) -> None:
        super().__init__([sys.executable, "-m", "tests.reliability.passwd_worker", "--serve"],
                         stderr)

    def command(self, argv: list[str], passwords: list[str], halt: str | None) -> Command:
        request: dict[str, object] = {
            "halt": halt, "argv": argv, "stdin": "".join(p + "\n" for p in passwords),
            "env": {}}
        self.stdin.write((json.dumps(request) + "\n").encode())
        self.stdin.flush()
        first = self.line(time.monotonic() + 60)
        assert first is not None and first.startswith("start "), f"no worker: {first!r}"
        pid = int(first.split()[1])
        lines, halted = [first], False
        try:
            while halt is not None:  # wait for the worker to reach the place (or to end)
                line = self.line(time.monotonic() + 60)
                assert line is not None, f"the worker never reached {halt}: {lines}"
                if line.startswith(f"exited {pid} "):
                    self.pending.insert(0, line)
                    break
                lines.append(line)
                if line.split()[0] == halt:
                    halted = True
                    break
        finally:  # whatever happens here, the worker this test forked ends, by its id
            if halt is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        status: int | None = None
        while (line := self.line(time.monotonic() + 60)) is not None:
            if line.startswith(f"exited {pid} "):
                status = int(line.split()[2])
                break
            lines.append(line)
        return Command(lines, status, halted)


def passwd_argv(url: str, actor: str, victim: str, command_id: str) -> list[str]:
    return ["--db", url, "--user", actor, "--password-stdin", "--json", "users", "passwd",
            victim, "--command-id", command_id]


def ready_for_a_change(flow: Desk, victim: str, actor: str) -> dict[str, str]:
    """The victim with a password of their own (not a temporary one) and a live session, the
    actor and the witness with one too; their session tokens."""
    if victim in flow.study().temporary_passwords:  # an admin set it in the last round
        temporary = flow.actors.passwords[victim]
        flow.executor.execute(M.ChangePassword(victim, Secret(PASSWORD)),
                              Password(victim, temporary))
        flow.actors.know(victim, PASSWORD)
    return {name: flow.executor.login(flow.actors.password(name), 8)[0]
            for name in dict.fromkeys((victim, actor, WITNESS))}


def check_killed_change(flow: Desk, victim: str, actor: str, halt: str | None,
                        before: Credentials, after: Credentials, tokens: dict[str, str],
                        old: str, new: str, command_id: str, context: str) -> bool:
    """The credentials row changed if and only if the matching `CredentialsChanged` is in the
    log, with nothing else; the user's sessions ended only then. Returns whether it
    committed."""
    engine = flow.executor.engine
    added = after.changes[len(before.changes):]
    assert after.changes[:len(before.changes)] == before.changes, context
    committed = bool(added)
    assert committed == HALTS[halt], f"committed: {committed}\n{context}"
    assert (after.row != before.row) == committed, (
        f"the credentials row {'did not change' if committed else 'changed'} although the "
        f"log {'has' if committed else 'has no'} CredentialsChanged of {victim}\n{context}")
    stored = identity.stored_credential(engine, victim)
    assert identity.matches(stored, new, TEST_KDF) == committed, context
    assert identity.matches(stored, old, TEST_KDF) != committed, context
    found = _rows(engine, f"SELECT result FROM commands WHERE command_id = '{command_id}'")
    others = {k: v for k, v in before.sessions.items() if k != victim}
    assert {k: v for k, v in after.sessions.items() if k != victim} == others, context
    if committed:
        assert before.row is not None and after.row is not None
        assert after.row[1] != before.row[1] and after.row[2] != before.row[2], context  # salt
        assert [a[1:] for a in added] == [(victim, actor, actor != victim, command_id)], (
            context)
        # nothing but the change: one event, one command row naming it
        assert after.head == before.head + 1 and after.commands == before.commands + 1
        assert found and json.loads(found[0][0])["positions"] == [added[0][0]], context
        assert victim not in after.sessions, f"the sessions of {victim} survived\n{context}"
        assert identity.session_of(engine, tokens[victim]) is None, context
    else:
        assert after == before, f"a change that did not commit left a trace\n{context}"
        assert not found, context
        assert after.sessions.get(victim) == before.sessions.get(victim), context
        # the victim's live session still proves who they are
        user = flow.executor.authenticate(SessionToken(victim, Secret(tokens[victim])))
        assert user.name == victim, context
    for name, token in tokens.items():  # the others' sessions work whatever happened
        if name != victim:
            assert flow.executor.authenticate(SessionToken(name, Secret(token))).name == name
    assert verify(flow.store).events == flow.store.last_position(), context
    return committed


def credential_kills(url: str, tmp: Path) -> list[str]:
    clock = FakeClock(datetime.now(UTC))  # the CLI's clock is the real one
    flow = new_study(url, clock)
    server = PasswdServer(tmp / "passwd.err")
    report: list[str] = []
    try:
        for scenario, (actor, victim) in enumerate(((ADMIN, COORDINATOR),
                                                    (COORDINATOR, COORDINATOR))):
            for n, halt in enumerate(HALTS):
                tokens = ready_for_a_change(flow, victim, actor)
                old = flow.actors.passwords[victim].value
                acting = flow.actors.passwords[actor].value
                new = f"Changed-Secret-{scenario}-{n:02d}"
                command_id = f"passwd-{actor}-{victim}-{halt or 'end'}"
                before = credentials_of(flow.executor.engine, victim)
                began = time.monotonic()
                command = server.command(passwd_argv(url, actor, victim, command_id),
                                         [acting, new], halt)
                ran = time.monotonic() - began
                context = (f"{actor} sets the password of {victim}, stopped at {halt}: "
                           f"{command.lines}\n{server.stderr.read_text()[-3000:]}")
                if halt is None:
                    assert command.returncode == 0 and command.answer() is not None, context
                    assert command.answer()[0] == 0, context  # type: ignore[index]
                else:
                    assert command.halted and command.returncode == -signal.SIGKILL, context
                    assert command.answer() is None, context
                after = credentials_of(flow.executor.engine, victim)
                committed = check_killed_change(flow, victim, actor, halt, before, after,
                                                tokens, old, new, command_id, context)
                if committed:
                    flow.actors.know(victim, new)
                if halt == "ok":  # killed before it answered: the same command id tells
                    again = server.command(passwd_argv(url, actor, victim, command_id),
                                           [flow.actors.passwords[actor].value, new], None)
                    answer = again.answer()
                    assert answer is not None and answer[0] == 0, again.lines
                    document = json.loads(answer[1]["out"])
                    assert document["repeated"] is True, document
                    assert document["positions"] == [after.changes[-1][0]], document
                    assert credentials_of(flow.executor.engine, victim) == after
                report.append(f"{actor}->{victim} at {halt or 'end'}: "
                              f"{'committed' if committed else 'rolled back'} ({ran:.2f} s)")
    finally:
        server.close()
        flow.executor.engine.dispose()
    return report


def test_a_credential_change_killed_at_each_step(db_url: str, tmp_path: Path) -> None:
    """`trialflow users passwd NAME` (an admin setting another user's password, a user
    changing their own) killed with SIGKILL before its append, inside the append's transaction
    (after the state is read, after the event is inserted, after the credential row is
    replaced and the sessions deleted) and right after the commit: the `credentials` row
    changed if and only if the matching `CredentialsChanged` is in the log, the user's
    sessions ended only then, and a repeat of the command killed after its commit gets the
    first result."""
    began = time.monotonic()
    report = credential_kills(db_url, tmp_path)
    print(f"\n[credential kills {db_url.split(':', 1)[0]}] {time.monotonic() - began:.1f} s: "
          + "; ".join(report))


def test_a_refused_credential_change_changes_nothing(db_url: str) -> None:
    """A coordinator setting the admin's password, a wrong acting password, a session instead
    of the password, a new password that is too short: refused, and the credentials row, the
    sessions (a live session of the victim still works) and the log's credential changes are
    as they were; a failed authentication leaves its AuthenticationFailed record, nothing
    else."""
    from cli.app import run

    clock = FakeClock(datetime.now(UTC))
    flow = new_study(db_url, clock)
    engine = flow.executor.engine
    try:
        tokens = {name: flow.executor.login(flow.actors.password(name), 8)[0]
                  for name in (ADMIN, COORDINATOR, WITNESS)}
        cases = [  # (actor, victim, stdin lines, session, expected rule, exit status)
            (COORDINATOR, ADMIN, [PASSWORD, "Taken-Over-Admin-1"], None, "role", 1),
            (ADMIN, COORDINATOR, ["not-the-admin-password", "Taken-Over-Cora-1"], None,
             "authentication_failed", 1),
            (COORDINATOR, COORDINATOR, None, tokens[COORDINATOR], "authentication_required",
             1),
            (COORDINATOR, COORDINATOR, [PASSWORD, "short"], None, None, 2),
        ]
        for n, (actor, victim, lines, session, rule, status) in enumerate(cases):
            before = credentials_of(engine, victim)
            argv = ["--db", db_url, "--user", actor, "--json", "users", "passwd", victim,
                    "--command-id", f"refused-{n}"]
            if lines is not None:
                argv.append("--password-stdin")
            out, err = io.StringIO(), io.StringIO()
            got = run(argv, stdout=out, stderr=err,
                      stdin=io.StringIO("".join(f"{line}\n" for line in lines or ())),
                      environ={"TRIALFLOW_SESSION": session} if session else {})
            context = f"{actor} sets the password of {victim}: {out.getvalue()}{err.getvalue()}"
            assert got == status, context
            document = json.loads(out.getvalue())
            if rule is not None:
                assert document["rule"] == rule, context
            after = credentials_of(engine, victim)
            assert after.row == before.row and after.changes == before.changes, context
            assert after.sessions == before.sessions, context
            appended = _rows(engine, "SELECT stream_id, type, payload FROM events WHERE "
                             f"position > {before.head} ORDER BY position")
            if rule == "authentication_failed":  # the record of the failed attempt, only
                assert [(s, k, json.loads(p)["name"]) for s, k, p in appended] == [
                    (STUDY_STREAM, "AuthenticationFailed", actor)], context
            else:
                assert appended == [] and after.commands == before.commands, context
            assert not _rows(engine, "SELECT 1 FROM commands WHERE command_id = "
                             f"'refused-{n}'"), context
            assert identity.matches(identity.stored_credential(engine, victim), PASSWORD,
                                    TEST_KDF), context
            for name, token in tokens.items():  # every live session still works
                user = flow.executor.authenticate(SessionToken(name, Secret(token)))
                assert user.name == name, context
    finally:
        engine.dispose()
