"""The processes of the load test (tests/reliability/test_load.py), each started as its own OS
process with its own engine and connections:

- `coordinator`: one site coordinator recording follow-up forms (vitals, labs, disease
  activity, CAR-T persistence) for random subjects: `RecordForm` messages through the one
  executor, as `trialflow record` sends them, proven by the coordinator's session, each with a
  unique command id, until its time is up. A `ConcurrencyConflict` is retried: the executor
  itself retries it (`CONFLICT_RETRIES`), and the coordinator submits the same command id
  again should the executor give up. Every
  acknowledged command is logged as one JSON line (command id, subject, positions, versions,
  latency, conflicts met), so the test can hold the log to exactly what was acknowledged.
- `scheduler`: `projections.scheduler.tick` in a loop, as `trialflow scheduler run` does, with
  the scheduler's secret, on a simulated clock that all schedulers share (`sim_start` at the
  go signal, advancing `sim_days_per_second`), so reminders come due during the run; every
  pass is logged.
- `follower`: the projection runner's catch-up in a loop; every catch-up is logged.

All wait on the `go` event after their setup (imports, connections), so that the measured
time is load only; the scheduler and the follower run until `stop` is set.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol

from cli.logging_setup import configure
from events.engine import create_store_engine
from events.errors import ConcurrencyConflict
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
from tests.support.study import PASSWORD, SCHEDULER_SECRET, TEST_KDF
from workflow.bootstrap import App, build_app, system_clock
from workflow.commands import messages as M
from workflow.commands.actors import Actors
from workflow.commands.executor import Executor
from workflow.identity import Password, Secret

FOLLOW_UP_VISITS = (("D1", 1), ("D4", 4), ("D7", 7), ("D10", 10), ("D14", 14), ("D21", 21),
                    ("D28", 28), ("D60", 60), ("D90", 90))
ACTIVITY_FLAGS = ("arthritis", "proteinuria", "rash", "alopecia", "mucosal_ulcers",
                  "low_complement", "increased_dna_binding")
SCHEDULER_USER = "scheduler"
RESUBMIT_LIMIT = 100  # the same command id submitted again after the executor gave up


class Flag(Protocol):
    """multiprocessing's Event, as far as the processes use it."""

    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Shared(Protocol):
    """multiprocessing's Value('d'), as far as the processes use it."""

    value: float


@dataclass(frozen=True)
class Plan:
    url: str
    run: str  # prefix of this run's command ids
    subjects: Mapping[str, str]  # subject -> D0 (ISO date)
    coordinators: Sequence[str]  # user names, one per coordinator process
    seconds: float
    out: str  # directory of the JSON-lines logs
    sim_start: str  # the schedulers' clock at the go signal (ISO time)
    sim_days_per_second: float = 1.0
    scheduler_pause: float = 0.25  # seconds between the end of a pass and the next
    follower_pause: float = 0.05


class CountingStore(EventStore):
    """The event store, counting the conflicts it raises (each one makes the executor retry)."""

    conflicts: int = 0

    def append_streams(self, appends: Sequence[StreamAppend], context: AppendContext, *,
                       also: Sequence[Statement] = (),
                       expected_last_position: int | None = None,
                       unchanged: Sequence[Unchanged] = ()) -> AppendResult:
        try:
            return super().append_streams(appends, context, also=also,
                                          expected_last_position=expected_last_position,
                                          unchanged=unchanged)
        except ConcurrencyConflict:
            self.conflicts += 1
            raise


def log_path(plan: Plan, kind: str, index: int) -> Path:
    return Path(plan.out) / f"{kind}-{index:02d}.jsonl"


def _as_deployed() -> None:
    """Log as the CLI does by default (warnings, on stderr): at `info` the store would log
    every appended event."""
    configure("warning", sys.stderr)


def _write(log: IO[str], record: Mapping[str, Any]) -> None:
    log.write(json.dumps(record, sort_keys=True) + "\n")


def _failure(log: IO[str], error: BaseException) -> None:
    _write(log, {"error": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc()})
    log.flush()


# --- forms ----------------------------------------------------------------------------------

def random_form(rng: random.Random, d0: date) -> tuple[str, list[str], date, str]:
    """(form, tokens, day, visit): a valid follow-up form for a subject infused on `d0`."""
    visit, offset = rng.choice(FOLLOW_UP_VISITS)
    day = d0 + timedelta(days=offset)
    form = rng.choice(("vitals", "labs", "disease_activity", "cart_persistence"))
    if form == "vitals":
        tokens = [f"weight_kg={rng.uniform(50, 66):.1f}",
                  f"temperature_c={rng.uniform(36.1, 37.6):.1f}",
                  f"heart_rate={rng.randint(55, 105)}", f"systolic_bp={rng.randint(100, 140)}",
                  f"diastolic_bp={rng.randint(60, 90)}"]
    elif form == "labs":
        tokens = [f"upcr_g_per_g={rng.uniform(0.1, 1.5):.2f}",
                  f"egfr_ml_min={rng.uniform(70, 110):.0f}",
                  f"c3_g_l={rng.uniform(0.5, 1.4):.2f}", f"c4_g_l={rng.uniform(0.08, 0.35):.2f}"]
    elif form == "disease_activity":
        tokens = [*rng.sample(ACTIVITY_FLAGS, rng.randint(0, 2)),
                  f"pga={rng.choice(('0', '0.5', '1', '1.5'))}", "new_activity=no",
                  "hemolytic_anemia=no", "gi_activity=no", "maintenance_tolerated=yes"]
    else:
        tokens = [f"copies_per_ug={rng.uniform(0, 20000):.1f}"]
    return form, tokens, day, visit


# --- processes --------------------------------------------------------------------------------

def coordinator(plan: Plan, index: int, ready: Flag, go: Flag) -> None:
    _as_deployed()
    user = plan.coordinators[index]
    engine = create_store_engine(plan.url)
    store = CountingStore(engine)
    flow = Actors(Executor(App(engine=engine, store=store, clock=system_clock, kdf=TEST_KDF)))
    flow.know(user, PASSWORD)
    subjects = sorted(plan.subjects)
    d0s = {s: date.fromisoformat(d) for s, d in plan.subjects.items()}
    rng = random.Random(f"{plan.run}/{index}")
    flow.credential(user)  # connect and start the session before the clock starts
    with log_path(plan, "coordinator", index).open("w") as log:
        ready.set()
        go.wait()
        start = time.perf_counter()
        deadline = start + plan.seconds
        sent = 0
        try:
            while time.perf_counter() < deadline:
                subject = rng.choice(subjects)
                form, tokens, day, visit = random_form(rng, d0s[subject])
                command_id = f"{plan.run}-c{index:02d}-{sent:06d}"
                sent += 1
                conflicts_before = store.conflicts
                resubmitted = 0
                began = time.perf_counter()
                while True:
                    try:
                        outcome = flow.send(user, M.RecordForm(subject, form, tuple(tokens),
                                                               day, visit), command_id)
                        break
                    except ConcurrencyConflict:
                        resubmitted += 1  # the executor's own retries were all conflicts too
                        if resubmitted > RESUBMIT_LIMIT:
                            raise
                done = time.perf_counter()
                result = outcome.result
                _write(log, {"command_id": command_id, "subject": subject, "form": form,
                             "positions": list(result.positions), "versions": result.versions,
                             "duplicate": result.duplicate,
                             "latency_ms": round((done - began) * 1000, 3),
                             "at": round(done - start, 4),
                             "conflicts": store.conflicts - conflicts_before,
                             "resubmitted": resubmitted})
        except BaseException as error:
            _failure(log, error)
            raise
        _write(log, {"summary": True, "sent": sent, "seconds": time.perf_counter() - start,
                     "conflicts": store.conflicts})
    engine.dispose()


class _QuietChannel:
    """A channel that accepts every reminder (delivery recorded, nothing printed)."""

    channel = "log"

    def send(self, message: Mapping[str, Any]) -> None:
        return None


def simulated_now(plan: Plan, go_at: Shared) -> datetime:
    elapsed = time.time() - go_at.value
    return (datetime.fromisoformat(plan.sim_start)
            + timedelta(days=elapsed * plan.sim_days_per_second))


def scheduler(plan: Plan, index: int, ready: Flag, go: Flag, stop: Flag, go_at: Shared
              ) -> None:
    _as_deployed()
    app = build_app(plan.url)
    credential = Password(SCHEDULER_USER, Secret(SCHEDULER_SECRET))
    channels = [_QuietChannel()]
    with log_path(plan, "scheduler", index).open("w") as log:
        ready.set()
        go.wait()
        while not stop.is_set():
            now = simulated_now(plan, go_at).astimezone(UTC)
            began = time.perf_counter()
            try:
                report = tick(app, credential, now, channels)
            except Exception as error:  # as `scheduler run` does: log it, the next pass retries
                _failure(log, error)
            else:
                _write(log, {"now": now.isoformat(), "issued": report.issued,
                             "already_issued": report.already_issued,
                             "cancelled": report.cancelled,
                             "delivered": len(report.delivered), "failed": len(report.failed),
                             "seconds": round(time.perf_counter() - began, 4)})
            log.flush()
            stop.wait(plan.scheduler_pause)
    app.engine.dispose()


def follower(plan: Plan, index: int, ready: Flag, go: Flag, stop: Flag) -> None:
    _as_deployed()
    app = build_app(plan.url)
    runner = Runner(app.engine, app.store)
    runner.status()  # connect before the clock starts
    with log_path(plan, "follower", index).open("w") as log:
        ready.set()
        go.wait()
        while not stop.is_set():
            began = time.perf_counter()
            try:
                done = runner.catch_up()
            except Exception as error:
                _failure(log, error)
            else:
                _write(log, {"head": done.head, "applied": max(done.applied.values(), default=0),
                             "subjects": done.subjects,
                             "seconds": round(time.perf_counter() - began, 4)})
            stop.wait(plan.follower_pause)
    app.engine.dispose()


def read_log(path: Path) -> list[dict[str, Any]]:
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]
