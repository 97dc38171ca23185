"""The process tests/reliability/test_crash_safety.py kills with SIGKILL, again and again.

It runs a small trial day after simulated day against one database: the study's setup, then
subjects that consent, are screened, enrol, receive their cells and come to their follow-up
visits (or fail screening), a daily vitals form, a projection catch-up and a scheduler pass
whose two channels are slow enough to be killed in. Clinical time comes from a simulated
clock (one step per day); the only real sleeps are a few milliseconds here and there, so that
a kill can land inside a transaction or between the issue of a reminder and its delivery.

Every write is a message sent through the one executor (a `Desk` of tests/support/study.py)
by a user proven by a session (the scheduler by its secret). Every write has a fixed command
id, so a restarted worker repeats its day and gets the first result of what the killed one
committed; only the users' first password changes are not repeated but skipped once done (a
temporary password proves nothing once changed). The simulated days lie before the real
clock: the store refuses a write decided in the future. Lines on stdout, each written with one
`write(2)` and only *after* what it reports has happened:

    start PID DAY           the worker runs from DAY (the last `day` of the one before)
    day DATE                a simulated day begins
    try CMD                 an append of command CMD begins
    tx CMD                  CMD's transaction holds the append lock, its state is read
    txi CMD                 CMD's events and command row are inserted, not yet committed
    txw CMD                 CMD's statements beside its events (a credential row) are run
                            too, not yet committed
    ok CMD P1,P2,… new|dup  CMD's append returned: committed at these positions (dup: a
                            repeat that got the first result)
    rep CMD                 a command repeated before the store (the executor found its id)
    cutx rows|mark          inside a catch-up transaction: writing rows / moving checkpoints
    caught HEAD             the catch-up committed up to HEAD
    send ID CHANNEL         a reminder is being sent (before its delivery is recorded)
    ticked ISSUED DELIVERED a scheduler pass returned
    finished                (--finish) the day and a last pass are done; exit 0

Run as `python -m tests.reliability.crash_worker --db URL --seed N --day DATE [--finish]`
from the project's directory. The test runs it with `--serve`: the process imports once, says
`ready`, and for each line `DATE SEED [finish]` on stdin forks a worker (a process of its own,
which the test kills by its pid), waits for it and says `exited PID STATUS`; so a restart
costs a fork, not the imports.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from events.engine import create_store_engine
from events.schema import upgrade
from events.store import (
    AppendContext,
    AppendResult,
    EventStore,
    Statement,
    StreamAppend,
    Unchanged,
)
from projections.runner import Runner
from projections.scheduler import tick
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    PASSWORD,
    SCHEDULER,
    SCHEDULER_SECRET,
    SITE,
    TEST_KDF,
    TZ,
    Desk,
    on_day,
    screening_forms,
)
from workflow.bootstrap import App
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor, Outcome
from workflow.identity import Password, Secret

# The first subject consents on the first simulated day (a Monday after the screening forms'
# treatment dates). A soak run covers some 750 simulated days: they must all lie in the past,
# since the store refuses a write decided ahead of the database's clock.
START = date(2024, 3, 4)
EVERY = 9  # a new candidate consents every EVERY days
ENROLLED = 6  # the protocol's cap: candidates 1..6 enrol, the later ones fail screening
FOLLOW_UP = (("D1", 1), ("D4", 4), ("D7", 7), ("D10", 10), ("D14", 14), ("D21", 21),
             ("D28", 28), ("D60", 60), ("D90", 90), ("D180", 180), ("D270", 270),
             ("D360", 360))
BSA = 1.62  # sqrt(162 cm * 58 kg / 3600)
SCREENING = screening_forms()

Action = tuple[str, Callable[[Desk], Outcome]]  # (command id, the command)


def say(line: str) -> None:
    """One line on stdout in one write(2): the parent sees it whole or not at all."""
    os.write(1, (line + "\n").encode())


class Pauses:
    """Short real pauses (milliseconds) at the points a kill should be able to land in."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def __call__(self, longest_ms: float) -> None:
        time.sleep(self.random.uniform(0, longest_ms) / 1000)


@dataclass
class MarkedStore(EventStore):
    """The real store, saying where each append is. `_insert` runs under the append lock with
    the log's state read (SQLite: after BEGIN IMMEDIATE; PostgreSQL: the advisory lock held);
    `_write` then runs the statements that change with the events (a credential row, the
    sessions it ends), and COMMIT follows."""

    pause: Callable[[float], None] = lambda ms: None

    def at(self, line: str, longest_ms: float) -> None:
        """Say where the append is, then pause up to `longest_ms` there."""
        say(line)
        if longest_ms:
            self.pause(longest_ms)

    def append_streams(self, appends: Sequence[StreamAppend], context: AppendContext, *,
                       also: Sequence[Statement] = (),
                       expected_last_position: int | None = None,
                       unchanged: Sequence[Unchanged] = ()) -> AppendResult:
        self.at(f"try {context.command_id or '-'}", 0)
        result = super().append_streams(appends, context, also=also,
                                        expected_last_position=expected_last_position,
                                        unchanged=unchanged)
        self.pause(2)  # committed, not yet reported
        self.at(f"ok {result.command_id} {','.join(map(str, result.positions))} "
                f"{'dup' if result.duplicate else 'new'}", 3)  # right after a commit
        return result

    def _write(self, cursor: Any, appends: Sequence[StreamAppend], context: AppendContext,
               command_id: str, *rest: Any) -> tuple[AppendResult, list[tuple[Any, ...]]]:
        written = super()._write(cursor, appends, context, command_id, *rest)
        self.at(f"txw {command_id}", 2)
        return written

    def _insert(self, cursor: Any, rows: list[tuple[Any, ...]], command: tuple[Any, ...]) -> None:
        self.at(f"tx {command[0]}", 4)
        super()._insert(cursor, rows, command)
        self.at(f"txi {command[0]}", 3)


class MarkedRunner(Runner):
    """The real runner, saying when it is inside its catch-up transaction."""

    def __init__(self, engine: Engine, store: EventStore, pause: Callable[[float], None]
                 ) -> None:
        super().__init__(engine, store)
        self.pause = pause

    def _write_rows(self, conn: Connection, subjects: Sequence[str],
                    wanted: dict[str, list[str]], rows: dict[str, list[Any]]) -> None:
        say("cutx rows")
        self.pause(4)
        super()._write_rows(conn, subjects, wanted, rows)

    def _set_checkpoint(self, conn: Connection, names: Sequence[str], position: int) -> None:
        say("cutx mark")
        self.pause(4)
        super()._set_checkpoint(conn, names, position)


@dataclass
class SlowChannel:
    """A notifier whose delivery takes a few milliseconds (a slow mail or webhook server)."""

    channel: str
    pause: Callable[[float], None]

    def send(self, message: Mapping[str, Any]) -> None:
        say(f"send {message['id']} {self.channel}")
        self.pause(6)


# --- the plan: what happens on each simulated day ------------------------------------------


def subject_id(number: int) -> str:
    return f"S-{number:03d}"


USERS = ((COORDINATOR, "coordinator", SITE), (INVESTIGATOR, "investigator", SITE),
         (MONITOR, "monitor", None))


def temporary_password(name: str) -> str:
    """The first password the admin gives `name` (fixed: a restarted worker gives the same)."""
    return f"temporary-password-{sum(map(ord, name)):05d}"


def setup_actions() -> list[Action]:
    actions: list[Action] = [
        ("setup-init", lambda f: f.executor.execute(
            M.InitialiseStudy(ADMIN, Secret(PASSWORD), Secret(SCHEDULER_SECRET), 2),
            Password(ADMIN, Secret(PASSWORD)), command_id="setup-init")),
        ("setup-site", lambda f: f.send(ADMIN, M.AddSite(SITE, TZ), "setup-site")),
    ]
    for name, role, site in USERS:
        actions.append((f"setup-user-{name}", _add_user(name, role, site)))
    return actions


def _add_user(name: str, role: str, site: str | None) -> Callable[[Desk], Outcome]:
    return lambda f: f.send(ADMIN, M.AddUser(name, role, site,
                                             Secret(temporary_password(name))),
                            f"setup-user-{name}")


def first_passwords(flow: Desk) -> None:
    """Each user replaces the admin's temporary password by their own, as at a first login:
    while the study says it is temporary (once changed, the temporary one proves nothing, so
    this step is not repeated after a kill but skipped)."""
    temporary = flow.study().temporary_passwords
    for name, _, _ in USERS:
        if name in temporary:
            flow.executor.execute(M.ChangePassword(name, Secret(PASSWORD)),
                                  Password(name, Secret(temporary_password(name))),
                                  command_id=f"setup-passwd-{name}")
        flow.actors.know(name, PASSWORD)


def actions_on(day: date) -> list[Action]:
    """Every command of `day`, in order, each with its command id."""
    offset = (day - START).days
    actions: list[Action] = []
    for number in range(1, offset // EVERY + 2):
        actions += _subject_actions(number, offset - (number - 1) * EVERY, day)
    return actions


def _subject_actions(number: int, n: int, day: date) -> list[Action]:
    """Subject `number`'s commands on its day `n` (0: consent)."""
    s = subject_id(number)
    c = COORDINATOR
    out: list[Action] = []

    def add(cid: str, command: Callable[[Desk, str], Outcome]) -> None:
        full = f"{s}-{cid}"
        out.append((full, lambda f: command(f, full)))

    if n < 0:
        return out
    if n == 0:
        add("consent", lambda f, cid: f.send(c, M.ConsentSubject(s, day, "2.0"), cid))
        for k, (form, tokens) in enumerate(SCREENING):
            add(f"screen-{k}", _record(s, form, tokens, day))
        return out
    enrolled = number <= ENROLLED
    d0 = 30
    if not enrolled:
        if n == 24:  # after the scheduler's screening_expiring reminder (from day 22)
            add("screen-fail", lambda f, cid: f.send(c, M.RecordScreenFailure(
                s, "other", note="Not eligible after review of the screening results."), cid))
        elif n < 24:
            add(f"vitals-{n}", _record(s, "vitals", ["weight_kg=58", "height_cm=162"], day))
        return out
    coi = f"COI-{s}"
    if n == 3:
        add("confirm", lambda f, cid: f.send(INVESTIGATOR, M.ConfirmEligibility(s), cid))
    elif n == 7:
        add("collect", lambda f, cid: f.send(c, M.RecordLeukapheresis(s, day, coi), cid))
    elif n == 20:
        add("release", lambda f, cid: f.send(c, M.ReleaseProduct(
            s, f"LOT-{s}", coi, False, None, 2e8), cid))
    elif n in (d0 - 5, d0 - 4, d0 - 3):
        cyclo = round(1000 * BSA, 1) if n == d0 - 3 else 0.0
        add(f"ld-{n}", lambda f, cid: f.send(c, M.GiveLymphodepletion(
            s, day, round(25 * BSA, 1), cyclo, False, None), cid))
    elif n == d0:
        add("infuse", lambda f, cid: _infuse(f, s, day, coi, cid))
    elif n == d0 + 2 and number % 2 == 1:  # a serious, unexpected AE: SAE and SUSAR clocks
        add("ae", _record(s, "adverse_event", [
            "term=cytokine release syndrome", "category=crs", f"onset_date={day}", "grade=2",
            "temperature_c=39.2", "hypotension=no_vasopressors",
            "serious_criteria=hospitalisation", "expected=no",
            f"awareness_at={day}T09:00:00+08:00", f"sponsor_aware_at={day}T15:00:00+08:00"],
            day))
    for code, target in FOLLOW_UP:
        if n != d0 + target + (1 if code == "D10" and number % 3 == 0 else 0):
            continue
        if code == "D7" and number % 2 == 0:
            continue  # never recorded: overdue reminders, then missed
        add(f"{code}-form", _record(s, "disease_activity", [
            "arthritis", "pga=1", "new_activity=no"], day, code))
        add(f"{code}-visit", _visit(s, code, day))
        if code == "D360":
            add("complete", lambda f, cid: f.send(c, M.CompleteStudy(s), cid))
    if d0 < n < d0 + 360 and n % 5 == 0:
        add(f"vitals-{n}", _record(s, "vitals", ["weight_kg=58", "height_cm=162"], day))
    return out


def _record(s: str, form: str, tokens: list[str], day: date, visit: str | None = None
            ) -> Callable[[Desk, str], Outcome]:
    return lambda f, cid: f.send(COORDINATOR, M.RecordForm(s, form, tuple(tokens), day, visit),
                                 cid)


def _visit(s: str, code: str, day: date) -> Callable[[Desk, str], Outcome]:
    return lambda f, cid: f.send(COORDINATOR, M.RecordVisit(s, code, "done", day), cid)


def _infuse(flow: Desk, s: str, day: date, coi: str, cid: str) -> Outcome:
    order = flow.subject(s).enrolment_order
    assert order is not None, s
    cells = flow.study().protocol.cohort_for(order).target_cells(58)
    return flow.send(COORDINATOR, M.Infuse(s, datetime.fromisoformat(f"{day}T10:00:00+08:00"),
                                           cells, coi, False, None), cid)


def noon(day: date) -> datetime:
    return datetime.fromisoformat(f"{day}T12:00:00+08:00")


# --- running -------------------------------------------------------------------------------


def run(url: str, seed: int, first: date, *, finish: bool) -> None:
    from cli.logging_setup import configure

    configure("error", sys.stderr)
    pause = Pauses(seed)
    engine = create_store_engine(url)
    upgrade(engine)
    clock = FakeClock()
    store = MarkedStore(engine, pause=pause)
    app = App(engine=engine, store=store, clock=clock, kdf=TEST_KDF)
    flow = Desk(Actors(Executor(app)), clock)
    flow.actors.know(ADMIN, PASSWORD)
    flow.actors.know(SCHEDULER, SCHEDULER_SECRET, service=True)
    scheduler = Password(SCHEDULER, Secret(SCHEDULER_SECRET))
    runner = MarkedRunner(engine, store, pause)
    channels = [SlowChannel("log", pause), SlowChannel("webhook", pause)]
    say(f"start {os.getpid()} {first}")
    on_day(clock, first)
    _carry_out(flow, setup_actions())
    first_passwords(flow)
    day = first
    while True:
        say(f"day {day}")
        on_day(clock, day)
        _carry_out(flow, actions_on(day))
        pause(2)
        caught = runner.catch_up()
        say(f"caught {caught.head}")
        report = tick(app, scheduler, noon(day), channels)
        say(f"ticked {len(report.issued)} {len(report.delivered)}")
        if finish:
            tick(app, scheduler, noon(day), channels)  # anything left over
            engine.dispose()
            say("finished")
            return
        day += timedelta(days=1)


def _carry_out(flow: Desk, actions: list[Action]) -> None:
    for cid, command in actions:
        outcome = command(flow)
        if outcome.summary.get("repeated"):
            say(f"rep {cid}")


def serve(url: str) -> None:
    """Import once, then fork one worker per line `DAY SEED [finish]` on stdin; after each
    worker's end say `exited PID STATUS` (STATUS -9: killed by SIGKILL)."""
    say("ready")
    while line := sys.stdin.readline():
        words = line.split()
        if not words:
            continue
        day, seed, finish = date.fromisoformat(words[0]), int(words[1]), "finish" in words[2:]
        pid = os.fork()
        if pid == 0:  # the worker: a process of its own, killed by the test with SIGKILL
            _end_with_parent()
            code = 1
            try:
                run(url, seed, day, finish=finish)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def _end_with_parent() -> None:
    """Linux: SIGKILL this worker if the serving process ends first (never an orphan)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--day", type=date.fromisoformat, default=START)
    parser.add_argument("--finish", action="store_true")
    parser.add_argument("--serve", action="store_true",
                        help="fork a worker for each `DAY SEED [finish]` line on stdin")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.db)
    else:
        run(args.db, args.seed, args.day, finish=args.finish)


if __name__ == "__main__":
    main()
