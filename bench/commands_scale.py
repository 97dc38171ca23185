"""`make bench`, fourth part: does a command's cost grow with the study? The command mix of
`bench.commands` (record vitals, correct, visit, adverse event, eligibility confirmation)
through the one executor on three SQLite studies of 10, 1,000 and 10,000 infused subjects
(prepared untimed by copies, as `trialflow demo --subjects N` makes them), each command timed
alone. Chunks of rounds rotate over the three studies, so a busy moment of the machine falls
on all of them alike. Target: the median command time of the largest study within 20% of the
smallest's.

A fresh process pays what the executor keeps between commands once: it folds the study
stream (one event per enrolment place) before its first command. That start is measured too:
`trialflow record … vitals` as a new process on each study (best of five), beside
`trialflow --version`.

    python -m bench.commands_scale              # what `make bench` runs
    python -m bench.commands_scale --scale 0.1  # a quick smoke run (10, 100, 1,000 subjects)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench import report
from bench.commands_flow import TODAY, FlowMix, prepare
from cli.logging_setup import configure
from tests.support.study import COORDINATOR, PASSWORD

DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
SECTION: Final = "commands-scale"
SIZES: Final = (10, 1_000, 10_000)
ROUNDS: Final = 60  # per study: 300 commands
CHUNK: Final = 10  # rounds per turn of one study
TARGET: Final = 1.2  # largest median / smallest median
STARTS: Final = 5  # fresh processes per study (best of)


@dataclass
class Study:
    subjects: int
    mix: FlowMix
    url: str
    prepared_s: float
    times: list[float] = field(default_factory=list)
    start_s: float = 0.0

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.times)


def _timed(study: Study) -> None:
    """Time each command the mix sends (the send itself, nothing around it)."""
    actors = study.mix.desk.actors
    send = actors.send

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        outcome = send(*args, **kwargs)
        study.times.append(time.perf_counter() - began)
        return outcome

    actors.send = timed  # type: ignore[method-assign]


def _fresh_process(study: Study) -> float:
    """Best of STARTS: `trialflow record SUBJECT vitals` as a new process (password on stdin),
    on the study's last day."""
    subject = study.mix.subjects[0]
    command = [sys.executable, "-m", "cli", "--db", study.url, "--user", COORDINATOR,
               "--password-stdin", "record", subject, "vitals", "--on", TODAY.isoformat(),
               "heart_rate=66"]
    best = float("inf")
    environ = {**os.environ, "TRIALFLOW_PROGRESS": "0"}
    for _ in range(STARTS):
        began = time.perf_counter()
        done = subprocess.run(command, input=PASSWORD + "\n", capture_output=True, text=True,
                              env=environ, check=False)
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
        best = min(best, elapsed)
    return best


def _version_start() -> float:
    best = float("inf")
    for _ in range(STARTS):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "--version"], capture_output=True,
                       check=True)
        best = min(best, time.perf_counter() - began)
    return best


def run(directory: Path, sizes: Sequence[int], rounds: int) -> list[Study]:
    studies = []
    for count in sizes:
        url = f"sqlite:///{directory / f'scale-{count}.db'}"
        began = time.perf_counter()
        mix = prepare(url, count, rounds)
        study = Study(count, mix, url, time.perf_counter() - began)
        _timed(study)
        studies.append(study)
        print(f"prepared {count:,} subjects in {study.prepared_s:.1f} s", flush=True)
    for first in range(0, rounds, CHUNK):
        for study in studies:
            for r in range(first, min(first + CHUNK, rounds)):
                study.mix.round(r)
    for study in studies:
        study.mix.desk.executor.engine.dispose()
        study.start_s = _fresh_process(study)
    return studies


def table(studies: Sequence[Study], version_s: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for study in studies:
        q = statistics.quantiles(study.times, n=10)
        rows.append((f"{study.subjects:,}", f"{len(study.times):,}",
                     f"{study.median_ms:.3f}", f"{1000 * q[0]:.3f}", f"{1000 * q[-1]:.3f}",
                     f"{study.start_s:.3f}"))
    rows.append(("`trialflow --version`", "", "", "", "", f"{version_s:.3f}"))
    return rows


HEADERS: Final = ("Subjects", "Commands", "Median ms", "P10 ms", "P90 ms",
                  "Fresh process s (best of 5)")


def verdict(studies: Sequence[Study]) -> tuple[float, bool]:
    ratio = studies[-1].median_ms / studies[0].median_ms
    return ratio, ratio <= TARGET


def markdown(studies: Sequence[Study], version_s: float, started: datetime,
             facts: Sequence[tuple[str, str]]) -> str:
    begin, end = report.markers(SECTION)
    ratio, met = verdict(studies)
    lines = [begin, "",
             f"Generated by `make bench` (`python -m bench.commands_scale`) on "
             f"{started:%Y-%m-%d %H:%M} UTC: {ROUNDS * 5} commands per study, the mix of "
             "`bench.commands`, chunks of 10 rounds rotating over the studies (SQLite files, "
             "WAL, synchronous=FULL).", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---:|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table(studies, version_s)]
    lines += ["", f"Median at {studies[-1].subjects:,} subjects / median at "
              f"{studies[0].subjects:,}: **{ratio:.2f}** (target ≤ {TARGET}: "
              f"{'met' if met else 'missed'}). The fresh-process column is a whole "
              "`trialflow record … vitals` (start-up, password check, the study stream folded "
              "once, the command, the commit).", ""]
    lines += [f"- {name}: {value}" for name, value in facts]
    lines += ["", end]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.bench_arguments("python -m bench.commands_scale", __doc__, DOC.name,
                                    "(not used here)")
    args = report.parse_bench_arguments(parser, argv)
    configure("warning", sys.stderr)
    sizes = [max(10, round(n * args.scale)) if n > 10 else n for n in SIZES]
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="trialflow-scale-") as folder:
        studies = run(Path(folder), sizes, ROUNDS)
        version_s = _version_start()
        facts = report.machine_facts(Path(folder), None)
    rows = table(studies, version_s)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    print("  ".join(h.rjust(w) for h, w in zip(HEADERS, widths, strict=True)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    ratio, met = verdict(studies)
    print(f"median at {sizes[-1]:,} / median at {sizes[0]:,}: {ratio:.2f} (target <= {TARGET}: "
          f"{'met' if met else 'MISSED'})")
    if args.scale == 1 and not args.no_docs:
        report.write_section(DOC, markdown(studies, version_s, started, facts), SECTION)
        print(f"wrote {DOC}")
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
