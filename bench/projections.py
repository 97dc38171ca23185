"""Projection benchmark: rebuild every read model of a synthetic study, beside the raw
read-and-decode rate of the same events table, and the latency of one incremental catch-up.

    python -m bench.projections                    # 10,000 subjects (about 830,000 events)
    python -m bench.projections --subjects 500 --no-docs   # a quick run, figures not written

The study is made by the generator of `trialflow demo --subjects N`
(projections/demo_story.py): the story through the real commands, then copies of its
completed subjects under a protocol variant whose cap is N. Memory: the peak resident set
size during the rebuild is sampled and reported for two study sizes; it must not grow with
the events.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cli.logging_setup import configure

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN, END = "<!-- bench:projections:begin -->", "<!-- bench:projections:end -->"
TARGET = 0.25  # ours / raw read-and-decode
INCREMENTAL_TARGET_MS = 5.0


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


def build_study(url: str, subjects: int) -> Any:
    """The study of `trialflow demo --subjects N`: the IM19-SLE story through the real
    commands, then the study amended to a protocol variant whose cap is N and N - 8 copies of
    completed story subjects (projections/demo_story.py)."""
    from projections.demo_story import COORDINATOR, DEMO_PASSWORD, run_demo
    from workflow.bootstrap import build_app
    from workflow.commands.actors import Actors
    from workflow.commands.executor import Executor

    run_demo(url, subjects=max(subjects, 8))
    actors = Actors(Executor(build_app(url)))
    actors.know(COORDINATOR, DEMO_PASSWORD)  # the story's documented password
    return actors


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


def incremental(flow: Any, rounds: int = 200) -> list[float]:
    """One new event (a vitals form) to a subject with a complete history, then one catch-up
    with its commit: milliseconds."""
    from projections.demo_story import COORDINATOR
    from projections.runner import Runner
    from workflow.commands.messages import RecordForm
    from workflow.subject import load_subject

    store = flow.executor.store
    runner = Runner(store.engine, store)
    runner.catch_up()
    subjects = sorted(s for s in store.stream_heads() if s.startswith("X-"))[:rounds]
    times = []
    for i in range(rounds):
        subject = subjects[i % len(subjects)]  # a copy's complete history
        state = load_subject(store, subject)
        assert state.consent is not None
        day = state.infused_on or state.consent.consent_date
        flow.send(COORDINATOR, RecordForm(subject, "vitals", (f"heart_rate={60 + i % 40}",),
                                          day))
        start = time.perf_counter()
        runner.catch_up()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(subjects: int, directory: Path, progress: Callable[[str], None]
            ) -> dict[str, Any]:
    path = directory / f"study-{subjects}.db"
    progress(f"generating {subjects} subjects in {path}")
    flow = build_study(f"sqlite:///{path}", subjects)
    raws = []
    ours = []
    for _ in range(2):  # alternate, best of two each
        raws.append(raw_read(path))
        ours.append(rebuild(flow))
    events, raw_seconds = min(raws, key=lambda r: r[1])
    head, our_seconds, _ = min(ours, key=lambda r: r[1])
    progress(f"  {events} events: raw read {events / raw_seconds:,.0f}/s, rebuild "
             f"{head / our_seconds:,.0f}/s")
    times = incremental(flow)
    flow.executor.engine.dispose()
    return {"subjects": subjects, "events": events, "raw_rate": events / raw_seconds,
            "rebuild_rate": head / our_seconds, "rebuild_seconds": our_seconds,
            "rss_growth_mib": max(g for _, _, g in ours),
            "incremental_median_ms": statistics.median(times),
            "incremental_p90_ms": sorted(times)[int(len(times) * 0.9)]}


def section(results: Sequence[dict[str, Any]], command: str) -> str:
    lines = [BEGIN, "## Projections: results", "",
             "Generated by the run itself; do not edit between the markers.", "",
             f"- Command: `{command}`",
             f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             "| Subjects | Events | Raw read+decode (events/s) | Rebuild (events/s) | Ours / raw "
             "| Target | Met | RSS growth (MiB) | Catch-up of 1 event, median (p90) |",
             "|---:|---:|---:|---:|---:|---|---|---:|---|"]
    for r in results:
        ratio = r["rebuild_rate"] / r["raw_rate"]
        lines.append(
            f"| {r['subjects']:,} | {r['events']:,} | {r['raw_rate']:,.0f} | "
            f"{r['rebuild_rate']:,.0f} | {ratio:.0%} | >= {TARGET:.0%} | "
            f"{'yes' if ratio >= TARGET else 'NO'} | {r['rss_growth_mib']:.0f} | "
            f"{r['incremental_median_ms']:.2f} ms ({r['incremental_p90_ms']:.2f} ms) "
            f"{'yes' if r['incremental_median_ms'] < INCREMENTAL_TARGET_MS else 'NO'} |")
    lines.append(END)
    return "\n".join(lines)


def write_section(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    DOC.write_text(doc, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projections", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    configure("warning", sys.stderr)
    sizes = sorted({max(2, args.subjects // 5), args.subjects})
    with tempfile.TemporaryDirectory() as directory:
        results = [measure(n, Path(directory), lambda m: print(m, flush=True)) for n in sizes]
    text = section(results, "make bench" if args.subjects == 10_000 else
                   f"python -m bench.projections --subjects {args.subjects}")
    print(text)
    if not args.no_docs and args.subjects == 10_000:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
