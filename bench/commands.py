"""`make bench`, third part: clinical commands per second through trialflow's one executor,
beside the `eventsourcing` library and the raw driver, on SQLite and PostgreSQL.

Three sides, each on a fresh database of its own, on the same machine in the same run:

- raw: the plain driver (`sqlite3` / `psycopg`) doing one INSERT of a JSON row (an `events`
  row of about 260 bytes, as `bench.run`'s raw side writes) per transaction;
- eventsourcing: a `Subject` aggregate of the `eventsourcing` library (bench/commands_es.py),
  each command `repository.get` + a method checking a rule and triggering an event + `save`;
- trialflow: the command mix through `flow.send` (bench/commands_flow.py): record vitals,
  correct it, record a visit, record an adverse event, confirm eligibility, round-robin over
  subjects prepared untimed; every command must write its events.

The rounds run in chunks that rotate which side goes first. Then, untimed, a few more rounds
of trialflow under cProfile and with every SQL statement counted (the profile summary is
printed; `--profile DIR` also writes it and the .prof file there).

    python -m bench.commands                       # what `make bench` runs
    python -m bench.commands --scale 0.05 --no-docs  # a quick smoke run
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, Protocol

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench import commands_es, commands_flow, report, workload
from bench.report import machine_facts
from bench.store import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    RawPostgres,
    RawSqlite,
    _conninfo,
    _fresh_databases,
    postgres_problem,
)
from bench.workload import RawRow, Sizes
from cli.logging_setup import configure
from events.schema import upgrade
from workflow.bootstrap import build_app

DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN, END = report.markers("commands")
COMMAND: Final = "make bench"
KINDS_PER_ROUND: Final = len(commands_flow.KINDS)
SUBJECTS: Final = 200
ROUNDS: Final = 400  # 2,000 commands
PROFILE_ROUNDS: Final = 40  # 200 more trialflow commands, profiled and counted, untimed
CHUNKS: Final = 6  # the timed rounds in this many chunks, each rotating which side goes first
TARGET_VS_ES: Final = 2.0
TARGET_VS_RAW: Final = 0.60
TOP: Final = 25


class Mix(Protocol):
    done: int

    def round(self, r: int) -> None: ...


@dataclass
class RawMix:
    """One INSERT of one row per transaction; a round is as many as a round of commands."""

    driver: RawSqlite | RawPostgres
    rows: list[RawRow]
    done: int = 0

    def round(self, r: int) -> None:
        base = r * KINDS_PER_ROUND
        for row in self.rows[base:base + KINDS_PER_ROUND]:
            self.driver.insert_transaction([row])
        self.done += KINDS_PER_ROUND


@dataclass
class Timed:
    side: str
    commands: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / self.commands if self.commands else 0.0


@dataclass
class Counts:
    """What the profiled trialflow rounds sent to the database, per command."""

    commands: int = 0
    driver_statements: int = 0  # every statement the driver ran (SQLite trace; PG messages)
    sqlalchemy_statements: int = 0  # those issued through SQLAlchemy (Connection.execute)
    round_trips: int = 0  # PostgreSQL: client→server turns of the wire protocol
    transactions: int = 0
    kinds: Counter[str] = field(default_factory=Counter)


@dataclass
class BackendRun:
    backend: str
    version: str
    sides: list[Timed] = field(default_factory=list)
    counts: Counts | None = None
    profile_text: str = ""
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    subjects: int = 0
    infused_events: int = 0
    screened_events: int = 0

    def side(self, name: str) -> Timed:
        return next(s for s in self.sides if s.side == name)

    @property
    def vs_es(self) -> float:
        return self.side("trialflow").rate / self.side("eventsourcing").rate

    @property
    def vs_raw(self) -> float:
        return self.side("trialflow").rate / self.side("raw").rate


def _progress(message: str) -> None:
    print(message, flush=True)


def run_rounds(mixes: dict[str, Mix], rounds: int) -> list[Timed]:
    """Every side over the same rounds, in CHUNKS chunks that rotate which goes first."""
    timed = {name: Timed(name) for name in mixes}
    names = list(mixes)
    chunks = min(CHUNKS, rounds)
    perf = time.perf_counter
    for c in range(chunks):
        part = range(rounds * c // chunks, rounds * (c + 1) // chunks)
        for name in names[c % len(names):] + names[:c % len(names)]:
            mix, before = mixes[name], mixes[name].done
            start = perf()
            for r in part:
                mix.round(r)
            timed[name].seconds += perf() - start
            timed[name].commands += mix.done - before
    return list(timed.values())


# ------------------------------------------------------------------ counting and profiling
@contextmanager
def counting(engine: Engine, counts: Counts, trace_dir: Path) -> Iterator[None]:
    """Count the statements the engine's connections run: SQLAlchemy's `before_cursor_execute`
    for those issued through it, and below it the driver's own view (the store speaks to the
    driver directly): SQLite's trace callback, or libpq's protocol trace on PostgreSQL (each
    F→B turn a round trip). The pool is emptied first so every connection is a traced one."""
    sqlite = engine.dialect.name == "sqlite"
    traces: list[tuple[Any, Any]] = []

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if sqlite:
            last = [""]

            def trace(statement: str) -> None:
                # Python's callback repeats the outer statement for each trigger program it
                # runs (sqlite3_expanded_sql), so a repeat of the same text is not counted.
                if statement != last[0] and not statement.startswith("--"):
                    last[0] = statement
                    counts.driver_statements += 1
                    word = statement.split(None, 1)[0].upper() if statement.strip() else ""
                    counts.kinds[word] += 1
            dbapi_connection.set_trace_callback(trace)
        else:
            handle = open(trace_dir / f"pq-{len(traces)}.trace", "wb")  # noqa: SIM115
            pgconn = dbapi_connection.pgconn
            pgconn.trace(handle.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            traces.append((pgconn, handle))

    def before(_conn: Any, _cursor: Any, _statement: str, *_args: Any) -> None:
        counts.sqlalchemy_statements += 1

    engine.dispose()
    event.listen(engine, "connect", on_connect)
    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "connect", on_connect)
        engine.dispose()
        for pgconn, handle in traces:
            if not pgconn.status:  # still open: stop tracing
                pgconn.untrace()
            handle.close()
        if not sqlite:
            for path in sorted(trace_dir.glob("pq-*.trace")):
                _read_pq_trace(path, counts)


def _read_pq_trace(path: Path, counts: Counts) -> None:
    last = ""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        direction, message = parts[0], parts[2].split(" ", 1)[0]
        if direction == "F":
            if last != "F":
                counts.round_trips += 1
            if message in ("Parse", "Query"):
                counts.driver_statements += 1
                counts.kinds[message] += 1
            elif message == "Bind":
                counts.kinds["Bind"] += 1
        last = direction


def profiled_rounds(mix: commands_flow.FlowMix, first: int, rounds: int, trace_dir: Path,
                    profile_dir: Path | None, label: str) -> tuple[Counts, str]:
    """`rounds` more rounds of trialflow under cProfile with every statement counted."""
    counts = Counts()
    engine = mix.desk.executor.engine
    profiler = cProfile.Profile()
    mix.fresh_sessions()
    with counting(engine, counts, trace_dir):
        before = mix.done
        profiler.enable()
        for r in range(first, first + rounds):
            mix.round(r)
        profiler.disable()
        counts.commands = mix.done - before
    if engine.dialect.name == "sqlite":
        counts.transactions = counts.kinds["COMMIT"]
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(TOP)
    text = out.getvalue()
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile_dir / f"commands-{label}.prof"))
        (profile_dir / f"commands-{label}.txt").write_text(text, encoding="utf-8")
    return counts, text


# ------------------------------------------------------------------ backends
def _raw_rows(rounds: int, subjects: int) -> list[RawRow]:
    commands = rounds * KINDS_PER_ROUND
    load = workload.single(Sizes(single_events=commands, single_streams=subjects), 1)
    return [rows[0] for rows in load.raw_transactions]


def _measure(run: BackendRun, raw: RawSqlite | RawPostgres, es_env: dict[str, str],
             flow_url: str, subjects: int, rounds: int, trace_dir: Path,
             profile_dir: Path | None, label: str) -> None:
    _progress(f"{label}: preparing {subjects} infused and {rounds + PROFILE_ROUNDS} screened "
              "subjects (untimed)")
    started = time.perf_counter()
    flow = commands_flow.prepare(flow_url, subjects, rounds + PROFILE_ROUNDS)
    es = commands_es.prepare(es_env, flow.subjects, flow.screened, flow.infused_events,
                             flow.screened_events)
    run.subjects, run.infused_events = subjects, flow.infused_events
    run.screened_events = flow.screened_events
    if label == "sqlite":
        sync = commands_es.sqlite_synchronous(es.app)
        if sync != 2:
            raise RuntimeError(f"eventsourcing's SQLite connection has synchronous={sync}, "
                               "not FULL (2): the sides would not be equally durable")
    raw_mix = RawMix(raw, _raw_rows(rounds, subjects))
    _progress(f"{label}: prepared in {time.perf_counter() - started:.1f} s; timing "
              f"{rounds * KINDS_PER_ROUND:,} commands per side")
    try:
        mixes: dict[str, Mix] = {"raw": raw_mix, "eventsourcing": es, "trialflow": flow}
        run.sides = run_rounds(mixes, rounds)
        for t in run.sides:
            _progress(f"{label}: {t.side:13s} {t.commands:,} commands in {t.seconds:6.2f} s "
                      f"({t.rate:,.0f}/s, {t.ms:.3f} ms each)")
        run.counts, run.profile_text = profiled_rounds(flow, rounds, PROFILE_ROUNDS, trace_dir,
                                                       profile_dir, label)
    finally:
        es.close()
        flow.desk.executor.engine.dispose()


def run_sqlite(directory: Path, subjects: int, rounds: int,
               profile_dir: Path | None) -> BackendRun:
    run = BackendRun("SQLite", sqlite3.sqlite_version)
    run.notes.append(f"fresh files in {directory.parent}; journal_mode=WAL and "
                     "synchronous=FULL on every side (eventsourcing's connection checked)")
    raw_path = directory / "raw.db"
    schema = build_app(f"sqlite:///{raw_path}")
    upgrade(schema.engine)
    schema.engine.dispose()
    raw = RawSqlite(raw_path)
    try:
        _measure(run, raw, commands_es.sqlite_env(str(directory / "es.db")),
                 f"sqlite:///{directory / 'flow.db'}", subjects, rounds, directory,
                 profile_dir, "sqlite")
    finally:
        raw.close()
    return run


def run_postgres(directory: Path, subjects: int, rounds: int,
                 profile_dir: Path | None) -> BackendRun:
    problem = postgres_problem()
    if problem is not None:
        return BackendRun("PostgreSQL", "-", skipped=problem)
    with psycopg.connect(_conninfo("postgres"), autocommit=True) as admin:
        row = admin.execute("SHOW server_version").fetchone()
        commit = admin.execute("SHOW synchronous_commit").fetchone()
    run = BackendRun("PostgreSQL", str(row[0]) if row else "?")
    run.notes.append(f"fresh databases on {PG_HOST}:{PG_PORT} (user {PG_USER}), dropped after; "
                     f"the server's settings on every side (synchronous_commit="
                     f"{commit[0] if commit else '?'})")
    with _fresh_databases("raw", "es", "flow") as (raw_db, es_db, flow_db):
        schema = build_app(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{raw_db}")
        upgrade(schema.engine)
        schema.engine.dispose()
        raw = RawPostgres(_conninfo(raw_db))
        try:
            _measure(run, raw, commands_es.postgres_env(es_db, PG_HOST, PG_PORT, PG_USER),
                     f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{flow_db}", subjects,
                     rounds, directory, profile_dir, "postgres")
        finally:
            raw.close()
    return run


# ------------------------------------------------------------------ output
HEADERS: Final = ("Backend", "Side", "Commands", "Commands/s", "ms per command")
RIGHT: Final = {2, 3, 4}


def rows(runs: Sequence[BackendRun]) -> list[tuple[str, ...]]:
    return [(run.backend, t.side, f"{t.commands:,}", f"{t.rate:,.0f}", f"{t.ms:.3f}")
            for run in runs if not run.skipped for t in run.sides]


RATIO_HEADERS: Final = ("Backend", "trialflow / eventsourcing", "Target", "Met",
                        "trialflow / raw", "Target", "Met")


def ratio_rows(runs: Sequence[BackendRun]) -> list[tuple[str, ...]]:
    return [(run.backend, f"{run.vs_es:.2f}x", f">= {TARGET_VS_ES:.0f}x",
             "yes" if run.vs_es >= TARGET_VS_ES else "NO", f"{run.vs_raw:.0%}",
             f">= {TARGET_VS_RAW:.0%}", "yes" if run.vs_raw >= TARGET_VS_RAW else "NO")
            for run in runs if not run.skipped]


def count_line(run: BackendRun) -> str:
    c = run.counts
    if c is None or not c.commands:
        return ""
    n = c.commands
    if run.backend == "SQLite":
        return (f"{run.backend}: per trialflow command (over {n} profiled commands) "
                f"{c.driver_statements / n:.1f} SQL statements run by sqlite3 "
                f"({c.sqlalchemy_statements / n:.1f} of them through SQLAlchemy, the rest on "
                f"the driver connection), {c.transactions / n:.2f} commits; statements by "
                f"kind: " + ", ".join(f"{k} {v / n:.1f}" for k, v in c.kinds.most_common(6)))
    return (f"{run.backend}: per trialflow command (over {n} profiled commands) "
            f"{c.round_trips / n:.1f} client-to-server round trips, "
            f"{c.driver_statements / n:.1f} statements sent (Parse/Query messages; "
            f"{c.sqlalchemy_statements / n:.1f} through SQLAlchemy), "
            f"{c.kinds['Bind'] / n:.1f} executions (Bind)")


def text_table(headers: Sequence[str], body: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(headers: Sequence[str], body: Sequence[Sequence[str]],
                   right: set[int]) -> list[str]:
    return ["| " + " | ".join(headers) + " |",
            "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|",
            *("| " + " | ".join(r) + " |" for r in body)]


def profile_head(text: str, lines: int = 12) -> list[str]:
    """The first `lines` functions of a pstats listing (its header lines left out)."""
    body = text.splitlines()
    start = next((i for i, line in enumerate(body) if line.lstrip().startswith("ncalls")), 0)
    return [line.rstrip() for line in body[start:start + lines + 1] if line.strip()]


def markdown_section(runs: Sequence[BackendRun], facts: Sequence[tuple[str, str]],
                     started: datetime, seconds: float, subjects: int, rounds: int) -> str:
    lines = [
        BEGIN,
        "## Commands: results",
        "",
        "Generated by the run itself; do not edit between the markers (the next run replaces it).",
        "",
        f"- Command: `{COMMAND}` (`python -m bench.commands`)",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC (whole run {seconds:.0f} s)",
        f"- Mix: {rounds * KINDS_PER_ROUND:,} commands per side ({rounds} rounds of "
        f"{', '.join(commands_flow.KINDS)}) over {subjects} infused subjects and {rounds} "
        "screened ones",
        *(f"- {name}: {value}" for name, value in facts),
        f"- eventsourcing: {metadata.version('eventsourcing')}",
        "",
        *markdown_table(HEADERS, rows(runs), RIGHT),
        "",
        *markdown_table(RATIO_HEADERS, ratio_rows(runs), {1, 4}),
        "",
    ]
    for run in runs:
        if run.skipped:
            lines.append(f"- {run.backend}: skipped, {run.skipped}.")
            continue
        lines.extend(f"- {run.backend}: {note}." for note in run.notes)
        lines.append(f"- {run.backend}: streams before the mix: {run.infused_events} events "
                     f"per infused subject, {run.screened_events} per screened one (the "
                     "eventsourcing subjects get as many).")
        counted = count_line(run)
        if counted:
            lines.append(f"- {counted}.")
    for run in runs:
        if run.skipped or not run.profile_text:
            continue
        lines += ["", f"Where trialflow's time goes on {run.backend} (cProfile of "
                  f"{PROFILE_ROUNDS * KINDS_PER_ROUND} more commands, top by cumulative time):",
                  "", "```", *profile_head(run.profile_text), "```"]
    lines.append(END)
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = report.bench_arguments("python -m bench.commands", __doc__, DOC.name,
                                    "write trialflow's cProfile statistics (.prof, top-25 .txt) "
                                    "here")
    return report.parse_bench_arguments(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure("warning", sys.stderr)  # the CLI's default
    subjects = max(2, round(SUBJECTS * args.scale))
    rounds = max(CHUNKS, round(ROUNDS * args.scale))
    started = datetime.now(UTC)
    clock = time.perf_counter()
    print(f"trialflow commands benchmark: {rounds * KINDS_PER_ROUND:,} commands per side "
          f"({rounds} rounds of {', '.join(commands_flow.KINDS)}) over {subjects} subjects",
          flush=True)
    runs: list[BackendRun] = []
    temp_root = Path(tempfile.gettempdir())
    runners: list[Callable[[Path, int, int, Path | None], BackendRun]] = []
    if args.backend in ("all", "sqlite"):
        runners.append(run_sqlite)
    if args.backend in ("all", "postgres"):
        runners.append(run_postgres)
    for runner in runners:
        with tempfile.TemporaryDirectory(prefix="trialflow-bench-commands-") as directory:
            run = runner(Path(directory), subjects, rounds, args.profile)
        if run.skipped:
            print(f"{run.backend} skipped: {run.skipped}", flush=True)
        runs.append(run)
    seconds = time.perf_counter() - clock

    print()
    print(text_table(HEADERS, rows(runs), RIGHT))
    print()
    print(text_table(RATIO_HEADERS, ratio_rows(runs), {1, 4}))
    for run in runs:
        counted = count_line(run)
        if counted:
            print(counted)
    for run in runs:
        if run.profile_text:
            print(f"\ntrialflow on {run.backend}: cProfile of {PROFILE_ROUNDS * KINDS_PER_ROUND} "
                  f"more commands, top {TOP} by cumulative time")
            print(run.profile_text.strip("\n"))
    pg_version = next((r.version for r in runs if r.backend == "PostgreSQL" and not r.skipped),
                      None)
    facts = machine_facts(temp_root, pg_version)
    print()
    for name, value in facts:
        print(f"{name}: {value}")
    print(f"eventsourcing: {metadata.version('eventsourcing')}")
    print(f"whole run: {seconds:.0f} s")

    full_size = args.scale == 1 and args.backend == "all" and not any(r.skipped for r in runs)
    if full_size and not args.no_docs:
        report.write_section(DOC, markdown_section(runs, facts, started, seconds, subjects,
                                                   rounds), "commands")
        print(f"wrote {DOC}")
    elif not args.no_docs:
        print(f"{DOC.name} not rewritten (only a full-size run of every backend writes it)")
    missed = [r for r in runs if not r.skipped and
              (r.vs_es < TARGET_VS_ES or r.vs_raw < TARGET_VS_RAW)]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
