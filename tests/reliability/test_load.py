"""Load: concurrent coordinators on PostgreSQL, with the scheduler and a projection follower
running, and proof that no acknowledged event was lost or duplicated (docs/reliability.md,
"Load").

Setup (a few seconds): a fresh database; the study through the real commands (admin, sites,
users, one coordinator user per process), initialised as a demo study (copies of subjects are
accepted only there) and amended to the protocol variant with an enrolment cap of 200
(`trialflow demo --subjects` uses it); in each dose cohort one subject goes from consent to
infusion through the commands and `CopySubjects` messages (as `trialflow demo --subjects` sends
them) copy its history to the cohort's other places, each shifted by a day.
All 200 subjects are in follow-up, where the forms recorded below belong. The read models are
caught up before the run.

Run: N coordinator processes (tests/reliability/load_worker.py) record follow-up forms for
random subjects for D seconds, each acknowledged command logged; two scheduler processes tick
on a shared simulated clock that runs a day per second (reminders come due during the run, and
both try to issue each one); one follower catches the projections up every 50 ms.

Proof, after every process has stopped:
- positions are 1..head without a gap, every stream's versions 1..n without a gap, and
  `trialflow audit verify` passes;
- every acknowledged command's events are in the log exactly once, at the positions and
  versions it was acknowledged with; no event carries a command id that was not acknowledged;
  the events of the run's commands add up to the acknowledged events; the `commands` table has
  each acknowledged command once with the same positions;
- the projections caught up incrementally equal a rebuild, and their checkpoints are the head;
- no reminder was issued twice (per reminder id, and per subject, obligation and kind), the
  schedulers' reports add up to the reminders in the log (each issue reported by exactly one
  scheduler), and every reminder not cancelled was delivered at least once.

`make test` runs 4 coordinators for 10 seconds; `make soak` 16 for 60 seconds and prints the
figures. Throughput is only checked loosely (every coordinator got commands through): the
figures depend on the machine.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from cli.logging_setup import configure
from events.envelope import RecordedEvent
from projections.amendment import preview_of
from projections.demo_story import protocol_variant, variant_version
from projections.runner import Runner
from projections.views import open_view
from tests.projections.support import snapshot
from tests.reliability.load_worker import Plan, coordinator, follower, log_path, read_log, scheduler
from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    SITE,
    new_study,
    through_infusion,
)
from workflow import event_types as T
from workflow.bootstrap import App, build_app
from workflow.commands import messages as M

SUBJECTS = 200
FIRST_CONSENT = date(2024, 1, 8)
SCHEDULERS = 2
COPIES_PER_MESSAGE = 40  # subjects per CopySubjects message (as `trialflow demo` sends them)
START_TIMEOUT = 120.0  # seconds for the processes to be ready
STOP_TIMEOUT = 120.0  # seconds past the run's end for a process to finish


# --- setup ------------------------------------------------------------------------------------

def build_study(url: str, coordinators: Sequence[str]) -> dict[str, date]:
    """The study with SUBJECTS subjects in follow-up; returns each subject's D0."""
    clock = FakeClock(f"{FIRST_CONSENT - timedelta(days=7)}T04:00:00+00:00")
    flow = new_study(url, clock, purpose="demo")  # the only kind that takes CopySubjects
    for name in coordinators:
        flow.add_user(name, "coordinator", SITE)
    flow.send(ADMIN, M.LoadProtocol(protocol_variant(SUBJECTS),
                                    f"load test: protocol version 2 with cap {SUBJECTS}"))
    reviewed = preview_of(flow.store, str(variant_version())).digest  # the cap changes
    flow.send(ADMIN, M.AmendProtocol(variant_version(), reviewed))
    protocol = flow.study().protocol
    ids = [f"S-{n:03d}" for n in range(1, SUBJECTS + 1)]
    d0s: dict[str, date] = {}
    first = 0
    while first < len(ids):  # one run of places per cohort: a real subject, then copies
        code = protocol.cohort_for(first + 1).code
        end = first
        while end < len(ids) and protocol.cohort_for(end + 1).code == code:
            end += 1
        template = ids[first]
        d0 = through_infusion(flow, template, FIRST_CONSENT + timedelta(days=first), clock)
        copies = ids[first + 1:end]
        for start in range(0, len(copies), COPIES_PER_MESSAGE):  # copy k shifted by k days
            flow.send(ADMIN, M.CopySubjects(
                template, tuple(copies[start:start + COPIES_PER_MESSAGE]), first + 2 + start,
                variant_version(), spread_days=365, offset=start))
        d0s[template] = d0
        d0s.update({s: d0 + timedelta(days=k) for k, s in enumerate(copies)})  # shifted k days
        first = end
    flow.store.engine.dispose()
    return d0s


# --- the run ----------------------------------------------------------------------------------

@dataclass
class LoadRun:
    plan: Plan
    setup_seconds: float
    head_before: int
    wall_seconds: float  # from the go signal until the last coordinator stopped
    cpu: CpuUse | None  # CPU seconds used while the coordinators ran (Linux only)
    acks: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    passes: list[dict[str, Any]]
    catch_ups: list[dict[str, Any]]


def run_load(url: str, out: Path, *, coordinators: int, seconds: float,
             schedulers: int = SCHEDULERS) -> LoadRun:
    users = [f"coord{i + 1:02d}" for i in range(coordinators)]
    began = time.perf_counter()
    d0s = build_study(url, users)
    app = build_app(url)
    Runner(app.engine, app.store).catch_up()
    head_before = app.store.last_position()
    app.engine.dispose()
    setup_seconds = time.perf_counter() - began
    sim_start = datetime.combine(min(d0s.values()) - timedelta(days=2), datetime.min.time(), UTC)
    plan = Plan(url=url, run=f"load{uuid.uuid4().hex[:8]}",
                subjects={s: d.isoformat() for s, d in d0s.items()}, coordinators=users,
                seconds=seconds, out=str(out), sim_start=sim_start.isoformat())
    ctx = multiprocessing.get_context("fork")  # the children inherit the imports: fast start
    go, stop = ctx.Event(), ctx.Event()
    go_at = ctx.Value("d", 0.0)
    workers: list[tuple[Any, Any]] = []  # (process, its ready event)
    background: list[tuple[Any, Any]] = []

    def start(into: list[tuple[Any, Any]], target: Callable[..., None], *args: Any) -> None:
        ready = ctx.Event()
        process = ctx.Process(target=target, args=(plan, args[0], ready, go, *args[1:]),
                              name=f"{target.__name__}-{args[0]}")
        process.start()
        into.append((process, ready))

    try:
        for index in range(coordinators):
            start(workers, coordinator, index)
        for index in range(schedulers):
            start(background, scheduler, index, stop, go_at)
        start(background, follower, 0, stop)
        deadline = time.monotonic() + START_TIMEOUT
        for process, ready in workers + background:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"{process.name} was not ready in {START_TIMEOUT} s "
                                     f"(exit code {process.exitcode}){_errors(out)}")
        ours = {os.getpid(), *(p.pid for p, _ in workers + background if p.pid is not None)}
        cpu_before = cpu_sample(ours)
        go_at.value = time.time()
        go.set()
        gone = time.perf_counter()
        time.sleep(seconds)  # a coordinator ends with its command in progress, then exits
        cpu_after = cpu_sample(ours)  # before the joins: a process's times go with it
        for process, _ in workers:
            process.join(seconds + STOP_TIMEOUT)
        wall = time.perf_counter() - gone
        stop.set()
        for process, _ in background:
            process.join(STOP_TIMEOUT)
    finally:
        stop.set()
        go.set()
        for process, _ in workers + background:
            if process.is_alive():
                process.kill()
                process.join(10)
    failed = [f"{p.name}: exit code {p.exitcode}" for p, _ in workers + background
              if p.exitcode != 0]
    assert not failed, f"{failed}{_errors(out)}"
    errors = _errors(out)
    assert not errors, f"a process logged an error:{errors}"
    coordinator_logs = [read_log(log_path(plan, "coordinator", i)) for i in range(coordinators)]
    return LoadRun(
        plan=plan, setup_seconds=setup_seconds, head_before=head_before, wall_seconds=wall,
        cpu=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
        acks=[r for log in coordinator_logs for r in log if "command_id" in r],
        summaries=[r for log in coordinator_logs for r in log if r.get("summary")],
        passes=[dict(r, scheduler=i) for i in range(schedulers)
                for r in read_log(log_path(plan, "scheduler", i))],
        catch_ups=read_log(log_path(plan, "follower", 0)))


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds: the whole machine's, this run's processes', and the PostgreSQL server's
    (which serves every client, this run's and others'); the rest is what other processes
    took, i.e. how disturbed the run was."""

    machine: float
    run: float
    postgres: float

    def __sub__(self, other: CpuUse) -> CpuUse:
        return CpuUse(self.machine - other.machine, self.run - other.run,
                      self.postgres - other.postgres)

    @property
    def others(self) -> float:
        return self.machine - self.run - self.postgres


def cpu_sample(ours: set[int]) -> CpuUse | None:
    """CPU seconds used so far (Linux /proc): the machine's busy time, that of the processes
    `ours`, and that of PostgreSQL's processes with their exited backends (reaped by the
    postmaster, so in its children's times)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        total = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    machine = (sum(total[:8]) - total[3] - total[4]) / tick  # all but idle and iowait
    run = postgres = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, times = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
        if int(stat.parent.name) in ours:
            run += (int(times[11]) + int(times[12])) / tick  # utime, stime
        elif name == "postgres":
            run_and_reaped = sum(int(v) for v in times[11:15])  # with cutime, cstime
            postgres += run_and_reaped / tick
    return CpuUse(machine, run, postgres)


def _errors(out: Path) -> str:
    found = []
    for path in sorted(out.glob("*.jsonl")):
        found += [f"\n{path.name}: {r['error']}\n{r.get('traceback', '')}"
                  for r in read_log(path) if "error" in r]
    return "".join(found)


# --- proof ------------------------------------------------------------------------------------

@dataclass
class Proof:
    events: int = 0
    streams: int = 0
    checks: list[str] = field(default_factory=list)
    reminders_issued: int = 0
    reminders_reported_already_issued: int = 0
    reminders_cancelled: int = 0
    deliveries: int = 0
    delivered_more_than_once: int = 0


def prove(url: str, run: LoadRun) -> Proof:
    app = build_app(url)
    try:
        proof = Proof()
        events = list(app.store.read_all(batch_size=5000))
        _gap_free(app, events, proof)
        _acknowledged_exactly_once(app, run, events, proof)
        _audit_verify(url, events, proof)
        _projections_equal_a_rebuild(app, proof)
        _reminders_issued_once(run, events, proof)
        return proof
    finally:
        app.engine.dispose()


def _gap_free(app: App, events: Sequence[RecordedEvent], proof: Proof) -> None:
    head = app.store.last_position()
    assert [e.position for e in events] == list(range(1, head + 1)), "a gap in positions"
    versions: dict[str, int] = {}
    for event in events:
        expected = versions.get(event.stream_id, 0) + 1
        assert event.version == expected, (
            f"{event.stream_id}: version {event.version} at position {event.position}, "
            f"expected {expected}")
        versions[event.stream_id] = event.version
    proof.events, proof.streams = head, len(versions)
    proof.checks.append(f"positions 1..{head} and every stream's versions (of {len(versions)} "
                        "streams) without a gap")


def _acknowledged_exactly_once(app: App, run: LoadRun, events: Sequence[RecordedEvent],
                               proof: Proof) -> None:
    prefix = f"{run.plan.run}-"
    acks = run.acks
    sent = sum(s["sent"] for s in run.summaries)
    assert len(run.summaries) == len(run.plan.coordinators) and sent == len(acks), (
        f"{sent} commands sent, {len(acks)} acknowledged")
    ids = Counter(a["command_id"] for a in acks)
    assert all(n == 1 for n in ids.values()), "a command id acknowledged twice"
    assert not [a for a in acks if a["duplicate"]], "a new command acknowledged as a repeat"
    written: dict[str, list[RecordedEvent]] = defaultdict(list)
    for event in events:
        if event.command_id.startswith(prefix):
            written[event.command_id].append(event)
    lost = [a["command_id"] for a in acks if a["command_id"] not in written]
    assert not lost, f"{len(lost)} acknowledged commands have no events: {lost[:5]}"
    unacknowledged = sorted(set(written) - set(ids))
    assert not unacknowledged, f"events of commands never acknowledged: {unacknowledged[:5]}"
    for ack in acks:
        found = written[ack["command_id"]]
        assert [e.position for e in found] == ack["positions"], ack
        assert {e.stream_id: e.version for e in found} == ack["versions"], ack
        assert all(e.stream_id == ack["subject"] and e.type == T.FORM_RECORDED
                   and e.payload["form"] == ack["form"] for e in found), ack
    acknowledged = sum(len(a["positions"]) for a in acks)
    in_log = sum(len(found) for found in written.values())
    assert in_log == acknowledged, f"{in_log} events in the log, {acknowledged} acknowledged"
    during = [e for e in events if e.position > run.head_before]
    others = [e for e in during if not e.command_id.startswith(prefix)]
    assert len(during) == acknowledged + len(others)
    assert all(e.stream_id.startswith("reminders-") and e.actor == "scheduler"
               for e in others), "an event written during the run by neither side"
    with app.engine.connect() as conn:
        rows = conn.execute(text("SELECT command_id, result FROM commands "
                                 "WHERE command_id LIKE :prefix"),
                            {"prefix": f"{prefix}%"}).all()
    recorded = {str(r[0]): json.loads(r[1])["positions"] for r in rows}
    assert len(rows) == len(recorded) == len(acks)
    assert recorded == {a["command_id"]: a["positions"] for a in acks}
    proof.checks.append(f"{sent} commands sent, {len(acks)} acknowledged, their "
                        f"{acknowledged} events in the log exactly once each, at the "
                        "acknowledged positions and versions, "
                        "none unacknowledged, each command once in `commands`; the other "
                        f"{len(others)} events of the run are the schedulers' reminder events")


def _audit_verify(url: str, events: Sequence[RecordedEvent], proof: Proof) -> None:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", url, "--json", "audit", "verify"], stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    result = json.loads(out.getvalue())
    assert result["ok"] is True and result["events"] == len(events)
    proof.checks.append(f"`trialflow audit verify`: OK, {result['events']} events in "
                        f"{result['streams']} streams")


def _projections_equal_a_rebuild(app: App, proof: Proof) -> None:
    runner = Runner(app.engine, app.store)
    runner.catch_up()
    incremental = snapshot(open_view(app.engine, app.store))
    head = app.store.last_position()
    runner.rebuild()
    assert snapshot(open_view(app.engine, app.store)) == incremental, "catch-up != rebuild"
    assert all(p["lag"] == 0 for p in runner.status())
    rows = sum(len(r) for r in incremental.values())
    proof.checks.append(f"read models caught up during the run equal a rebuild ({rows} rows), "
                        f"checkpoints at the head {head}")


def _reminders_issued_once(run: LoadRun, events: Sequence[RecordedEvent], proof: Proof) -> None:
    issued = [e.payload for e in events if e.type == T.REMINDER_ISSUED]
    cancelled = Counter(e.payload["reminder_id"] for e in events
                        if e.type == T.REMINDER_CANCELLED)
    per_id = Counter(p["reminder_id"] for p in issued)
    assert all(n == 1 for n in per_id.values()), "a reminder issued twice"
    per_key: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for payload in issued:
        per_key[(payload["subject"], payload["obligation"], payload["kind"])].append(
            payload["reminder_id"])
    for key, reminders in per_key.items():  # a second one only after a cancellation
        assert len(reminders) <= 1 + sum(cancelled[r] for r in reminders), key
    reported = Counter(r for p in run.passes for r in p["issued"])
    assert all(n == 1 for n in reported.values()), "two schedulers both issued a reminder"
    assert set(reported) == set(per_id), "the schedulers' reports differ from the log"
    delivered = Counter((e.payload["reminder_id"], e.payload["channel"]) for e in events
                        if e.type == T.REMINDER_DELIVERED)
    undelivered = [r for r in per_id if r not in cancelled and (r, "log") not in delivered]
    assert not undelivered, f"reminders never delivered: {undelivered[:5]}"
    assert not [p for p in run.passes if p.get("failed")], "a delivery failed"
    proof.reminders_issued = len(per_id)
    proof.reminders_reported_already_issued = sum(p["already_issued"] for p in run.passes)
    proof.reminders_cancelled = len(cancelled)
    proof.deliveries = sum(delivered.values())
    proof.delivered_more_than_once = sum(1 for n in delivered.values() if n > 1)
    proof.checks.append(
        f"{len(per_id)} reminders issued, each once (and reported issued by exactly one of "
        f"{SCHEDULERS} schedulers; {proof.reminders_reported_already_issued} attempts found it "
        f"issued already), {proof.reminders_cancelled} cancelled, every other one delivered "
        f"({proof.deliveries} deliveries, {proof.delivered_more_than_once} delivered more "
        "than once: at least once by design)")


# --- figures ----------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def figures(run: LoadRun, proof: Proof) -> dict[str, Any]:
    latencies = [a["latency_ms"] for a in run.acks]
    catch_up_ms = [c["seconds"] * 1000 for c in run.catch_ups if c["applied"]]
    seconds = run.plan.seconds
    events = sum(len(a["positions"]) for a in run.acks)
    passes = [p for p in run.passes if "now" in p]
    return {
        "coordinators": len(run.plan.coordinators),
        "seconds": seconds,
        "wall_seconds": round(run.wall_seconds, 1),
        "setup_seconds": round(run.setup_seconds, 1),
        "commands": len(run.acks),
        "commands_per_second": round(len(run.acks) / seconds, 1),
        "events": events,
        "events_per_second": round(events / seconds, 1),
        "all_events_in_run": proof.events - run.head_before,
        "latency_ms_p50": round(percentile(latencies, 50), 1),
        "latency_ms_p99": round(percentile(latencies, 99), 1),
        "latency_ms_max": round(max(latencies), 1),
        "conflicts_retried": sum(a["conflicts"] for a in run.acks),
        "commands_with_conflicts": sum(1 for a in run.acks if a["conflicts"]),
        "resubmitted_after_handler_gave_up": sum(a["resubmitted"] for a in run.acks),
        "per_coordinator": sorted(Counter(a["command_id"].rsplit("-", 1)[0]
                                          for a in run.acks).values()),
        "scheduler_passes": len(passes),
        "scheduler_pass_ms_p50": round(percentile([p["seconds"] * 1000 for p in passes], 50), 1)
        if passes else 0,
        "simulated_days": round(seconds * run.plan.sim_days_per_second, 1),
        "reminders_issued": proof.reminders_issued,
        "reminders_found_already_issued": proof.reminders_reported_already_issued,
        "deliveries": proof.deliveries,
        "follower_catch_ups": len(run.catch_ups),
        "follower_events_applied": sum(c["applied"] for c in run.catch_ups),
        "follower_largest_catch_up": max((c["applied"] for c in run.catch_ups), default=0),
        "follower_catch_up_ms_p50": round(percentile(catch_up_ms, 50), 1) if catch_up_ms else 0,
        "follower_catch_up_ms_p99": round(percentile(catch_up_ms, 99), 1) if catch_up_ms else 0,
        "cpus": os.cpu_count(),
        "cpu_seconds_machine": None if run.cpu is None else round(run.cpu.machine, 1),
        "cpu_seconds_run_processes": None if run.cpu is None else round(run.cpu.run, 1),
        "cpu_seconds_postgres": None if run.cpu is None else round(run.cpu.postgres, 1),
        "cpu_seconds_other_processes": None if run.cpu is None else round(run.cpu.others, 1),
        "events_total": proof.events,
        "streams": proof.streams,
    }


def report(figs: dict[str, Any], proof: Proof) -> str:
    lines = ["", "Load figures:"]
    lines += [f"  {name}: {value}" for name, value in figs.items()]
    lines += ["Proof:"] + [f"  - {check}" for check in proof.checks]
    return "\n".join(lines)


def load_test(url: str, out: Path, *, coordinators: int, seconds: float) -> dict[str, Any]:
    configure("warning", sys.stderr)  # the CLI's default: the store logs appends at info
    run = run_load(url, out, coordinators=coordinators, seconds=seconds)
    proof = prove(url, run)
    figs = figures(run, proof)
    print(report(figs, proof))
    # loose sanity only (the figures depend on the machine): every coordinator got through
    assert len(figs["per_coordinator"]) == coordinators and min(figs["per_coordinator"]) > 0
    assert figs["reminders_issued"] > 0 and figs["follower_catch_ups"] > 0
    return figs


@pytest.mark.postgres
def test_four_coordinators_for_ten_seconds(postgres_url: str, tmp_path: Path) -> None:
    load_test(postgres_url, tmp_path, coordinators=4, seconds=10)


@pytest.mark.soak
@pytest.mark.postgres
def test_sixteen_coordinators_for_a_minute(postgres_url: str, tmp_path: Path) -> None:
    load_test(postgres_url, tmp_path, coordinators=16, seconds=60)
