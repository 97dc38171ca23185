"""The process tests/reliability/test_crash_safety.py kills with SIGKILL in the middle of a
credential change: a real `trialflow` command line (`users passwd NAME`, run by `cli.app.run`,
the console script's own entry) whose event store says where each append is, as the crash
worker's does (tests/reliability/crash_worker.py `MarkedStore`), and stops at one of those
places until it is killed:

    start PID               the command begins
    try CMD                 the change is decided; its append begins (nothing written yet)
    tx CMD                  CMD's transaction holds the append lock, its state is read
    txi CMD                 CMD's event and command row are inserted, not yet committed
    txw CMD                 the credential row is replaced and the user's sessions deleted
                            in that transaction, not yet committed
    ok CMD P new            CMD committed at position P; the command has not yet answered
    done STATUS JSON        the command returned STATUS (JSON: its stdout and stderr)

Run as `python -m tests.reliability.passwd_worker --serve` from the project's directory: the
process imports once, says `ready`, and for each JSON line `{"halt", "argv", "stdin", "env"}`
on stdin forks a worker (a process of its own, killed by the test by its pid) that runs `argv`
with the password lines `stdin` and the environment `env`, and stops for good at the first
line starting with `halt` (none: it runs to the end); the server says `exited PID STATUS` when
the worker ends (STATUS -9: killed by SIGKILL).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.reliability.crash_worker import MarkedStore, _end_with_parent, say


@dataclass
class HaltingStore(MarkedStore):
    """The real store, saying where each append is and stopping for good at `halt`."""

    halt: str | None = None

    def at(self, line: str, longest_ms: float) -> None:
        say(line)
        if self.halt is not None and line.split()[0] == self.halt:
            while True:  # stopped here until the test kills this process
                signal.pause()


def run_command(halt: str | None, argv: Sequence[str], stdin: str,
                env: dict[str, str]) -> int:
    """Run one command line with an event store that halts at `halt`."""
    import workflow.bootstrap
    from cli.app import run

    def store(*args: Any, **kwargs: Any) -> HaltingStore:
        kwargs["halt"] = halt
        return HaltingStore(*args, **kwargs)

    vars(workflow.bootstrap)["EventStore"] = store  # the store `build_app` makes
    say(f"start {os.getpid()}")
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin), environ=env)
    say(f"done {status} {json.dumps({'out': out.getvalue(), 'err': err.getvalue()})}")
    return status


def serve() -> None:
    """Import once, then fork one worker per JSON line on stdin; after each worker's end say
    `exited PID STATUS`."""
    from cli.logging_setup import configure

    configure("error", sys.stderr)
    say("ready")
    while line := sys.stdin.readline():
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the worker: a process of its own, killed by the test with SIGKILL
            _end_with_parent()
            code = 1
            try:
                code = run_command(request["halt"], request["argv"], request["stdin"],
                                   request["env"])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: python -m tests.reliability.passwd_worker --serve")
    serve()
