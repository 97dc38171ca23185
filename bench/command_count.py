"""The command mix of `bench.commands`, one side alone, for counting the machine
instructions of a command: on a shared virtual machine a command's time moves by 15% from run
to run, its count of instructions by well under 1%, so a before/after of the command path is
measured as instructions (docs/performance.md, "Commands: what each change bought").

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        .venv/bin/python -m bench.command_count --rounds 100
    # the same with --rounds 0 (the study prepared, the warm-up rounds sent); the difference,
    # divided by 5 × 100, is one command's instructions in this process (the fsync of each
    # commit is the kernel's and not counted)

The study is prepared as `bench.commands` prepares it (`bench.commands_flow.prepare`, a
SQLite file in a temporary directory); `--warm` rounds are sent first, so every subject's
stream is kept folded by the executor before the counted rounds (as in the timed benchmark,
where each subject comes round again every `--subjects` rounds). `--side eventsourcing`
counts the `eventsourcing` library's side of `bench.commands` instead, prepared the same way
(its subjects' streams as long as ours, in a SQLite file of its own).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import commands_es, commands_flow
from cli.logging_setup import configure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.command_count",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--warm", type=int, default=40, help="rounds sent before the count")
    parser.add_argument("--rounds", type=int, default=100, help="rounds counted (5 commands)")
    parser.add_argument("--capacity", type=int, default=100,
                        help="rounds the study is prepared for, whatever --rounds is (so the "
                             "difference of two counts is the rounds' alone)")
    parser.add_argument("--side", choices=("trialflow", "eventsourcing"), default="trialflow",
                        help="whose commands: ours, or the eventsourcing library's equivalent "
                             "(bench.commands_es, on a SQLite file of its own)")
    parser.add_argument("--profile", metavar="FILE",
                        help="write a cProfile of the counted rounds to FILE")
    args = parser.parse_args(argv)
    if args.rounds > args.capacity:
        parser.error("--rounds may not exceed --capacity")
    configure("warning", sys.stderr)  # the CLI's default, as bench.commands runs
    with tempfile.TemporaryDirectory(prefix="trialflow-count-") as directory:
        url = f"sqlite:///{Path(directory) / 'flow.db'}"
        flow = commands_flow.prepare(url, args.subjects, args.warm + args.capacity)
        mix: commands_flow.FlowMix | commands_es.EsMix = flow
        if args.side == "eventsourcing":  # its subjects get as many events as ours
            mix = commands_es.prepare(
                commands_es.sqlite_env(str(Path(directory) / "es.db")), flow.subjects,
                flow.screened, flow.infused_events, flow.screened_events)
        for r in range(args.warm):
            mix.round(r)
        profile = cProfile.Profile() if args.profile else None
        start = os.times()
        if profile is not None:
            profile.enable()
        for r in range(args.warm, args.warm + args.rounds):
            mix.round(r)
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        end = os.times()
        user, system = end.user - start.user, end.system - start.system
        done = 5 * args.rounds
        if done:
            print(f"{done} commands: CPU {(user + system) / done * 1000:.3f} ms each (user "
                  f"{user / done * 1000:.3f}, system {system / done * 1000:.3f})")
        flow.desk.executor.engine.dispose()


if __name__ == "__main__":
    main()
