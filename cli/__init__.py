"""The `trialflow` command line (a thin layer: parse, build a message or a query, render).

`main` is the console script. Its first act is to make Ctrl-C during start-up (while the
heavier modules import) end the process with exit 130 and one line, never a traceback; `run`
then takes interrupts over and reports what a write did before one arrived."""

from __future__ import annotations


def main() -> None:
    import os
    import signal
    import sys

    def interrupted(signum: int, frame: object) -> None:
        os.write(2, b"Interrupted; nothing was done.\n")
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    from cli.app import run

    sys.exit(run(interruptible=True))
