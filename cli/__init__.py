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


def _import_structlog_without_rich() -> None:
    """Import structlog with its optional renderers hidden. structlog imports rich (when
    installed; the progress bars use it) at import time only to offer pretty tracebacks, and
    that is some 60-80 ms of every command's start-up (issue 17). trialflow's console
    renderer names the plain traceback formatter (cli/logging_setup.py), so nothing changes
    but the time; rich stays importable for whoever asks for it later."""
    if "structlog" in _sys.modules or "rich" in _sys.modules:
        return
    hidden = ("rich", "better_exceptions", "colorama")
    blocked = [name for name in hidden if name not in _sys.modules]
    for name in blocked:
        _sys.modules[name] = None  # type: ignore[assignment]  # `import name` fails at once
    try:
        import structlog  # noqa: F401
    finally:
        for name in blocked:
            if _sys.modules.get(name, False) is None:
                del _sys.modules[name]


def main() -> None:
    _signal.signal(_signal.SIGINT, _interrupted_at_start)
    _import_structlog_without_rich()
    from cli.app import run

    _sys.exit(run(interruptible=True))
