"""Progress on stderr for work that can take a while (`demo`, `projections rebuild`, `audit
verify`, `audit log --all` into a file or pipe, exports and reports): a rich progress bar when
stderr is a terminal, erased when the work ends; nothing when stderr is piped or redirected,
nothing with --json. stdout is never touched.

`TRIALFLOW_PROGRESS=1` shows it on any stderr (as on a terminal: for tests and for a terminal
that does not say it is one), `TRIALFLOW_PROGRESS=0` never shows it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from cli.context import Env

VARIABLE = "TRIALFLOW_PROGRESS"


class Advance(Protocol):
    def __call__(self, done: int, total: int, what: str | None = None) -> None: ...


def forced(env: Env) -> bool:
    return env.environ.get(VARIABLE, "").strip() == "1"


def shows_progress(env: Env) -> bool:
    """Whether long work shows its progress: not with --json, not when turned off, else on a
    terminal's stderr (or when forced)."""
    setting = env.environ.get(VARIABLE, "").strip()
    if env.json or setting == "0":
        return False
    return setting == "1" or bool(getattr(env.stderr, "isatty", lambda: False)())


@contextmanager
def progress_bar(env: Env, description: str, *, enabled: bool = True
                 ) -> Iterator[Advance | None]:
    """A callback `advance(done, total, what=None)` that moves the bar (and renames its task
    when `what` is given), or None when no progress is shown (or not `enabled`)."""
    if not enabled or not shows_progress(env):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(file=env.stderr, force_terminal=True if forced(env) else None)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int, what: str | None = None) -> None:
            if what is None:
                bar.update(task, completed=done, total=total)
            else:
                bar.update(task, completed=done, total=total, description=what)

        yield advance
