"""`make bench`: the event-store benchmark on SQLite and PostgreSQL, beside the raw drivers.

Prints a table of events/s (ours, raw, ours / raw, target) and, for a full-size run, rewrites
the marked event-store section of docs/performance.md with the same figures.

    python -m bench.run                      # what `make bench` runs
    python -m bench.run --scale 0.05 --no-docs   # a quick smoke run, figures not written
    python -m bench.run --profile /tmp/prof   # also dump cProfile stats of our side
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.store import BackendResult, run_postgres, run_sqlite
from bench.workload import Sizes
from cli.logging_setup import configure

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
COMMAND = "make bench"


def _progress(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = report.bench_arguments("python -m bench.run", __doc__, DOC.name,
                                    "dump cProfile stats of our side per workload (slows it; "
                                    "no docs)")
    return report.parse_bench_arguments(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure("warning", sys.stderr)  # the CLI's default: appends log at info, filtered out
    sizes = Sizes().scaled(args.scale)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    print(
        f"trialflow event-store benchmark: {sizes.batched_events:,} events in batches of "
        f"{sizes.batch_size:,}, {sizes.single_events:,} single-event commands, then read all",
        flush=True,
    )
    results: list[BackendResult] = []
    temp_root = Path(tempfile.gettempdir())
    if args.backend in ("all", "sqlite"):
        with tempfile.TemporaryDirectory(prefix="trialflow-bench-") as directory:
            results.append(run_sqlite(Path(directory), sizes, _progress, args.profile))
    if args.backend in ("all", "postgres"):
        pg = run_postgres(sizes, _progress, args.profile)
        if pg.skipped:
            print(f"PostgreSQL skipped: {pg.skipped}", flush=True)
        results.append(pg)
    seconds = time.perf_counter() - clock

    print()
    print(report.text_table(results))
    pg_version = next((r.version for r in results if r.backend == "PostgreSQL" and
                       not r.skipped), None)
    facts = report.machine_facts(temp_root, pg_version)
    print()
    for name, value in facts:
        print(f"{name}: {value}")
    print(f"whole run: {seconds:.0f} s")

    full_size = args.scale == 1 and args.backend == "all" and args.profile is None
    if full_size and not args.no_docs:
        section = report.markdown_section(results, facts, started, seconds, COMMAND)
        report.write_section(DOC, section)
        print(f"wrote {DOC}")
    elif not args.no_docs:
        print(f"{DOC.name} not rewritten (only a full-size run of every backend writes it)")

    missed = [m for r in results for m in r.measurements if not m.met]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
