"""`make bench`, fifth part: concurrent writers on PostgreSQL. The command mix of
`bench.commands` (record vitals, correct, visit, adverse event, eligibility confirmation)
sent by 1, 2, 4 and 8 processes at once, each with its own executor and its own subjects, on
one study; throughput (commands per second, all processes together) against one writer.
Target: 8 writers at least 3× one writer.

The store serialises appends (an advisory lock taken by each append's transaction, for one
global order and one hash chain), so each process also reports where its time went: waiting
for and holding the append (the store's `append_streams`, lock wait included), the rest of the
command (authentication, reading, deciding), and the conflicts it retried.

    python -m bench.commands_concurrent              # what `make bench` runs
    python -m bench.commands_concurrent --scale 0.2  # a quick smoke run
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import psycopg

from bench import report
from bench.commands_flow import TODAY, FlowMix, prepare
from bench.store import PG_HOST, PG_PORT, PG_USER, _conninfo, _fresh_databases, postgres_problem
from cli.logging_setup import configure
from events.errors import ConcurrencyConflict
from tests.support.clock import FakeClock
from tests.support.study import on_day, open_desk

DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
SECTION: Final = "commands-concurrent"
WRITERS: Final = (1, 2, 4, 8)
ROUNDS: Final = 80  # per writer: 400 commands
SUBJECTS_PER_WRITER: Final = 20
TARGET: Final = 3.0  # 8 writers / 1 writer


@dataclass(frozen=True)
class Share:
    commands: int
    seconds: float
    append_s: float  # inside the store's append_streams (lock wait and hold included)
    conflicts: int


@dataclass(frozen=True)
class Result:
    writers: int
    commands: int
    seconds: float
    shares: tuple[Share, ...]
    enrol: bool = True  # the mix with its eligibility confirmations

    @property
    def rate(self) -> float:
        return self.commands / self.seconds


def _writer(url: str, subjects: list[str], screened: list[str], rounds: int,
            start: Any, out: Any, enrol: bool) -> None:
    """One process: its own executor (a fresh engine), its own subjects; waits for the start,
    sends its rounds, reports its share (or what went wrong)."""
    try:
        _write(url, subjects, screened, rounds, start, out, enrol)
    except BaseException as error:
        out.put(f"{type(error).__name__}: {error}")
        raise


def _write(url: str, subjects: list[str], screened: list[str], rounds: int,
           start: Any, out: Any, enrol: bool) -> None:
    configure("warning", sys.stderr)
    clock = FakeClock()
    on_day(clock, TODAY)
    desk = open_desk(url, clock)
    mix = FlowMix(desk, subjects, screened, 0, 0)
    mix.fresh_sessions()
    store = desk.store
    append = store.append_streams
    spent = {"append": 0.0, "conflicts": 0}

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return append(*args, **kwargs)
        except ConcurrencyConflict:
            spent["conflicts"] += 1
            raise
        finally:
            spent["append"] += time.perf_counter() - began

    store.append_streams = timed  # type: ignore[method-assign]
    start.wait()
    began = time.perf_counter()
    for r in range(rounds):
        mix.round(r, enrol)
    out.put(Share(mix.done, time.perf_counter() - began, float(spent["append"]),
                  int(spent["conflicts"])))
    desk.executor.engine.dispose()


def measure(url: str, mix: FlowMix, writers: int, rounds: int, offset: int,
            enrol: bool = True) -> Result:
    """`writers` processes at once, each on subjects of its own: from `offset` on, of the
    prepared infused subjects (SUBJECTS_PER_WRITER each) and of the screened ones (one per
    round: each confirmation needs a subject of its own)."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = []
    for w in range(writers):
        first = (offset + w) * SUBJECTS_PER_WRITER
        subjects = mix.subjects[first:first + SUBJECTS_PER_WRITER]
        screened = mix.screened[(offset + w) * rounds:(offset + w + 1) * rounds]
        process = context.Process(target=_writer,
                                  args=(url, subjects, screened, rounds, start, out, enrol))
        process.start()
        processes.append(process)
    time.sleep(3)  # each writer opens its engine and its sessions before the start
    began = time.perf_counter()
    start.set()
    shares = []
    for _ in processes:
        share = out.get(timeout=600)
        if isinstance(share, str):
            raise RuntimeError(f"a writer failed: {share}")
        shares.append(share)
    seconds = time.perf_counter() - began
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a writer failed (exit {process.exitcode})")
    return Result(writers, sum(s.commands for s in shares), seconds, tuple(shares), enrol)


def run(rounds: int) -> tuple[list[Result], list[Result], str]:
    """The mix, then the mix without its enrolments (each on subjects of its own)."""
    with psycopg.connect(_conninfo("postgres"), autocommit=True) as admin:
        row = admin.execute("SHOW server_version").fetchone()
    version = str(row[0]) if row else "?"
    results: list[Result] = []
    with _fresh_databases("concurrent") as (name,):
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
        mix = prepare(url, 2 * sum(WRITERS) * SUBJECTS_PER_WRITER, rounds * sum(WRITERS))
        mix.desk.executor.engine.dispose()
        offset = 0
        without: list[Result] = []
        for enrol, found in ((True, results), (False, without)):
            for writers in WRITERS:
                # each writer sends `rounds` rounds, whatever their number
                result = measure(url, mix, writers, rounds, offset, enrol)
                offset += writers
                found.append(result)
                print(f"{'mix' if enrol else 'mix without enrolments'}: {writers} writer(s): "
                      f"{result.commands:,} commands in {result.seconds:.2f} s "
                      f"({result.rate:,.0f}/s)", flush=True)
    return results, without, version


HEADERS: Final = ("Writers", "Commands", "Seconds", "Commands/s", "× one writer",
                  "Append share", "Conflicts retried")


def rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    one = results[0].rate
    out: list[tuple[str, ...]] = []
    for r in results:
        busy = sum(s.seconds for s in r.shares)
        share = sum(s.append_s for s in r.shares) / busy if busy else 0.0
        out.append((str(r.writers), f"{r.commands:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}",
                    f"{r.rate / one:.2f}", f"{100 * share:.0f}%",
                    str(sum(s.conflicts for s in r.shares))))
    return out


def markdown(results: Sequence[Result], without: Sequence[Result], version: str,
             started: datetime, facts: Sequence[tuple[str, str]]) -> str:
    begin, end = report.markers(SECTION)
    speedup = results[-1].rate / results[0].rate
    plain = without[-1].rate / without[0].rate
    lines = [begin, "",
             f"Generated by `make bench` (`python -m bench.commands_concurrent`) on "
             f"{started:%Y-%m-%d %H:%M} UTC, PostgreSQL {version} on this machine: each "
             f"writer a process of its own sending {ROUNDS} rounds on its own "
             f"{SUBJECTS_PER_WRITER} subjects.", "", "The mix (5 commands a round, one of them "
             "an eligibility confirmation, which takes an enrolment place in the study "
             "stream):", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---:|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    lines += ["", "The mix without its enrolments (4 commands a round, each on its subject's "
              "stream only):", "",
              "| " + " | ".join(HEADERS) + " |", "|" + "---:|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(without)]
    lines += ["", f"{results[-1].writers} writers / one writer: **{speedup:.2f}×** with the "
              f"enrolments, **{plain:.2f}×** without (target ≥ {TARGET}×: "
              f"{'met' if speedup >= TARGET else 'missed'}). \"Append share\": of the "
              "writers' busy time, the part inside the store's append (waiting for the append "
              "lock, holding it, the commit, and for a writer that lost the race three times "
              "its decision made again under the lock); the rest is each process's own work "
              "(authentication, reading, deciding), which runs in parallel.", ""]
    lines += [f"- {name}: {value}" for name, value in facts]
    lines += ["", end]
    return "\n".join(lines)


def _print(label: str, results: Sequence[Result]) -> None:
    table = rows(results)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(HEADERS)]
    print(label)
    print("  ".join(h.rjust(w) for h, w in zip(HEADERS, widths, strict=True)))
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(f"{results[-1].writers} writers / 1: {results[-1].rate / results[0].rate:.2f}x "
          f"(target >= {TARGET}x)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.bench_arguments("python -m bench.commands_concurrent", __doc__, DOC.name,
                                    "(not used here)")
    args = report.parse_bench_arguments(parser, argv)
    configure("warning", sys.stderr)
    problem = postgres_problem()
    if problem is not None:
        print(f"skipped: {problem}")
        return 0
    started = datetime.now(UTC)
    rounds = max(5, round(ROUNDS * args.scale))
    results, without, version = run(rounds)
    facts = report.machine_facts(Path("/tmp"), version)
    _print("the mix", results)
    _print("the mix without enrolments", without)
    speedup = results[-1].rate / results[0].rate
    if args.scale == 1 and not args.no_docs:
        report.write_section(DOC, markdown(results, without, version, started, facts), SECTION)
        print(f"wrote {DOC}")
    return 0 if speedup >= TARGET or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
