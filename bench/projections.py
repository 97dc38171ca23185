"""Projection benchmark: rebuild every read model of a synthetic study, beside the raw
read-and-decode rate of the same events table, and the latency of one incremental catch-up.

    python -m bench.projections            # 400 and 2,000 subjects (what make bench runs)
    python -m bench.projections --subjects 10000 --no-docs # 2,000 and 10,000, not written
    python -m bench.projections --subjects 500 --no-docs   # a quick run, figures not written

The study is made by the generator of `trialflow demo --subjects N`
(projections/demo_story.py): the story through the real commands, then copies of its
completed subjects under a protocol variant whose cap is N. A generated study is kept under
/tmp/trialflow-bench/ (named by its size and a digest of the code that writes and folds it)
and every run measures a copy of it, so a second run skips the generation. At 2,000 subjects
(or the largest size below) the CLI itself, `trialflow projections rebuild` in a fresh process
with its start-up, is timed against the raw read-and-decode (target: at most 4x). Memory: the
peak resident set size during the in-process rebuild is sampled and reported for two study
sizes; it must not grow with the events.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from cli.logging_setup import configure

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = report.markers("projections")
TARGET = 0.25  # in-process rebuild rate / raw read-and-decode rate
CLI_TARGET = 4.0  # `trialflow projections rebuild` wall time / raw read-and-decode time
INCREMENTAL_TARGET_MS = 5.0
WORKING_SET = 20  # subjects a site works on in turn (the catch-up's second figure)
CACHE = Path(tempfile.gettempdir()) / "trialflow-bench"
DEFAULT_SUBJECTS = 2_000  # and a fifth of it: resident memory must not grow with the events
CLI_SUBJECTS = 2_000  # the CLI is timed at this size (or the largest measured below it)
CLI_ROUNDS = 3


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Samples the resident set size every 20 ms while the block runs."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def growth(self) -> float:
        return self.peak - self.start


def code_digest() -> str:
    """A digest of the code that writes a demo study (a cached study is reused only while
    it is the same)."""
    digest = hashlib.sha256()
    for package in ("events", "workflow", "projections"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix in (".py", ".yaml", ".yml", ".json", ".sql") and path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def demo_study(subjects: int, progress: Callable[[str], None]) -> Path:
    """The file of `trialflow demo --subjects N` (generated once, then reused from CACHE)."""
    from projections.demo_story import run_demo

    path = CACHE / f"study-{subjects}-{code_digest()}.db"
    if path.exists():
        progress(f"reusing {path}")
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"study-{subjects}-*.db*"):
        stale.unlink()
    progress(f"generating {subjects} subjects in {path}")
    making = path.with_suffix(".making")
    for leftover in CACHE.glob(making.name + "*"):
        leftover.unlink()
    run_demo(f"sqlite:///{making}", subjects=max(subjects, 8))
    conn = sqlite3.connect(making)  # everything in the main file, then one rename
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    making.rename(path)
    for leftover in CACHE.glob(making.name + "-*"):
        leftover.unlink()
    return path


def open_study(url: str) -> Any:
    """The actors of the story (its coordinator signed in) on the study at `url`."""
    from projections.demo_story import COORDINATOR, DEMO_PASSWORD
    from workflow.bootstrap import build_app
    from workflow.commands.actors import Actors
    from workflow.commands.executor import Executor

    actors = Actors(Executor(build_app(url)))
    actors.know(COORDINATOR, DEMO_PASSWORD)  # the story's documented password
    return actors


def cli_rebuild(path: Path) -> tuple[float, float]:
    """Wall seconds of `trialflow projections rebuild` in a fresh process, start-up included,
    and the CPU seconds of that process and its workers."""
    script = Path(sys.executable).with_name("trialflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([*command, "--db", f"sqlite:///{path}", "projections", "rebuild"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def raw_cpu(path: Path) -> tuple[int, float, float]:
    """`raw_read` with its CPU seconds."""
    cpu = time.process_time()
    count, elapsed = raw_read(path)
    return count, elapsed, time.process_time() - cpu


def raw_read(path: Path) -> tuple[int, float]:
    """The raw rate: every row in position order and `json.loads` of every payload."""
    conn = sqlite3.connect(path)
    start = time.perf_counter()
    count = 0
    cursor = conn.execute("SELECT * FROM events ORDER BY position")
    while rows := cursor.fetchmany(10_000):
        for row in rows:
            json.loads(row[5])
        count += len(rows)
    elapsed = time.perf_counter() - start
    conn.close()
    return count, elapsed


def rebuild(flow: Any) -> tuple[int, float, float]:
    from projections.runner import Runner

    runner = Runner(flow.executor.engine, flow.executor.store)
    with PeakRss() as rss:
        start = time.perf_counter()
        result = runner.rebuild()
        elapsed = time.perf_counter() - start
    return result.head, elapsed, rss.growth


def incremental(flow: Any, rounds: int = 200, among: int | None = None
                ) -> tuple[list[float], list[float]]:
    """One new event (a vitals form) to a subject with a complete history, then one catch-up
    with its commit: milliseconds of wall time and of CPU (one process: what the wall time
    would be on a machine without other work). Round-robin over `rounds` subjects, or over
    the first `among` of them (then this process has caught each up before, after the first
    turn: its stream is kept, projections/kept_streams.py)."""
    from projections.demo_story import COORDINATOR
    from projections.runner import Runner
    from workflow.commands.messages import RecordForm
    from workflow.subject import load_subject

    store = flow.executor.store
    runner = Runner(store.engine, store)
    runner.catch_up()
    subjects = sorted(s for s in store.stream_heads() if s.startswith("X-"))[:among or rounds]
    times, cpu = [], []
    for i in range(rounds):
        subject = subjects[i % len(subjects)]  # a copy's complete history
        state = load_subject(store, subject)
        assert state.consent is not None
        day = state.infused_on or state.consent.consent_date
        flow.send(COORDINATOR, RecordForm(subject, "vitals", (f"heart_rate={60 + i % 40}",),
                                          day))
        start, used = time.perf_counter(), time.process_time()
        runner.catch_up()
        times.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - used) * 1000)
    return times, cpu


def measure(subjects: int, directory: Path, progress: Callable[[str], None], *,
            cli: bool) -> dict[str, Any]:
    path = directory / f"study-{subjects}.db"
    shutil.copyfile(demo_study(subjects, progress), path)  # measured on a copy: catch-up writes
    flow = open_study(f"sqlite:///{path}")
    raws = []
    ours = []
    for _ in range(2):  # alternate, best of two each
        raws.append(raw_cpu(path))
        ours.append(rebuild(flow))
    clis = []
    for _ in range(CLI_ROUNDS if cli else 0):  # alternate with the raw read, best of each
        raws.append(raw_cpu(path))
        clis.append(cli_rebuild(path))
    events, raw_seconds, _ = min(raws, key=lambda r: r[1])
    head, our_seconds, _ = min(ours, key=lambda r: r[1])
    cli_seconds = min(w for w, _ in clis) if clis else None
    progress(f"  {events} events: raw read {raw_seconds:.2f} s ({events / raw_seconds:,.0f}/s), "
             f"rebuild {our_seconds:.2f} s ({head / our_seconds:,.0f}/s)"
             + ("" if cli_seconds is None else
                f", CLI rebuild {cli_seconds:.2f} s = {cli_seconds / raw_seconds:.1f}x raw"))
    times, cpu = incremental(flow)
    again, _ = incremental(flow, among=WORKING_SET)  # a few subjects in turn: kept streams
    flow.executor.engine.dispose()
    return {"subjects": subjects, "events": events, "raw_rate": events / raw_seconds,
            "raw_seconds": raw_seconds, "raw_cpu": min(c for _, _, c in raws),
            "rebuild_rate": head / our_seconds, "rebuild_seconds": our_seconds,
            "cli_seconds": cli_seconds, "cli_cpu": min(c for _, c in clis) if clis else None,
            "incremental_cpu_ms": statistics.median(cpu),
            "rss_growth_mib": max(g for _, _, g in ours),
            "incremental_median_ms": statistics.median(times),
            "incremental_again_ms": statistics.median(again),
            "incremental_p90_ms": sorted(times)[int(len(times) * 0.9)]}


def parallel_workers() -> int:
    from projections.parallel import workers

    return workers()


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def section(results: Sequence[dict[str, Any]], command: str) -> str:
    lines = [BEGIN, "## Projections: results", "",
             "Generated by the run itself; do not edit between the markers.", "",
             f"- Command: `{command}`",
             f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
             f"- Machine: {_cpus()} CPUs, load average {os.getloadavg()[0]:.1f} at the end "
             "(figures are best of several runs; a busy machine slows them)", "",
             "| Subjects | Events | Raw read+decode: wall (CPU) "
             "| `trialflow projections rebuild` (CLI): wall (CPU, all processes) "
             "| CLI / raw | Target | Met | CPU bound: CLI CPU / CPUs / raw CPU |",
             "|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in results:
        if r["cli_seconds"] is None:
            continue
        ratio = r["cli_seconds"] / r["raw_seconds"]
        bound = r["cli_cpu"] / min(_cpus(), 1 + parallel_workers()) / r["raw_cpu"]
        lines.append(
            f"| {r['subjects']:,} | {r['events']:,} | {r['raw_seconds']:.2f} s "
            f"({r['raw_cpu']:.2f} s) | {r['cli_seconds']:.2f} s ({r['cli_cpu']:.2f} s) | "
            f"{ratio:.1f}x | <= {CLI_TARGET:.0f}x | {'yes' if ratio <= CLI_TARGET else 'NO'} | "
            f"{bound:.1f}x |")
    lines += ["",
              "| Subjects | Events | Raw read+decode (events/s) | Rebuild in process (events/s) "
              "| Ours / raw | Target | Met | RSS growth (MiB) "
              "| Catch-up of 1 event: median (p90) | its CPU, median "
              f"| {WORKING_SET} subjects in turn: median |",
              "|---:|---:|---:|---:|---:|---|---|---:|---|---:|---:|"]
    for r in results:
        ratio = r["rebuild_rate"] / r["raw_rate"]
        lines.append(
            f"| {r['subjects']:,} | {r['events']:,} | {r['raw_rate']:,.0f} | "
            f"{r['rebuild_rate']:,.0f} | {ratio:.0%} | >= {TARGET:.0%} | "
            f"{'yes' if ratio >= TARGET else 'NO'} | {r['rss_growth_mib']:.0f} | "
            f"{r['incremental_median_ms']:.2f} ms ({r['incremental_p90_ms']:.2f} ms) "
            f"{'yes' if r['incremental_median_ms'] < INCREMENTAL_TARGET_MS else 'NO'} | "
            f"{r['incremental_cpu_ms']:.2f} ms | {r['incremental_again_ms']:.2f} ms |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projections", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    configure("warning", sys.stderr)
    sizes = sorted({max(2, args.subjects // 5), args.subjects})
    cli_size = max([n for n in sizes if n <= CLI_SUBJECTS], default=sizes[0])
    with tempfile.TemporaryDirectory() as directory:
        results = [measure(n, Path(directory), lambda m: print(m, flush=True),
                           cli=n == cli_size) for n in sizes]
    default = args.subjects == DEFAULT_SUBJECTS
    text = section(results, "make bench" if default else
                   f"python -m bench.projections --subjects {args.subjects}")
    print(text)
    if not args.no_docs and default:
        report.write_section(DOC, text, "projections")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
