"""The `trialflow` command line (a thin layer: parse, build a message or a query, render).

`main` is the console script. Ctrl-C during start-up (while the heavier modules import) ends
the process with exit 130 and one line, never a traceback: the console script takes SIGINT
over as soon as this package is imported, `main` does for `python -m cli`, and `run` then
takes interrupts over and reports what a write did before one arrived."""

from __future__ import annotations

import os as _os
import signal as _signal
import sys as _sys


def _interrupted_at_start(signum: int, frame: object) -> None:
    _os.write(2, b"Interrupted; nothing was done.\n")
    _os._exit(130)


if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "trialflow":
    _signal.signal(_signal.SIGINT, _interrupted_at_start)  # the console script, at once


def main() -> None:
    _signal.signal(_signal.SIGINT, _interrupted_at_start)
    from cli.app import run

    _sys.exit(run(interruptible=True))
