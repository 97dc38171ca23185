"""Progress of long reads (exports, reports) for a caller's progress bar: the CLI passes a
callback `progress(done, total, what)` (cli/progress.py draws it on a terminal), the builders
count their units of work with a `ticker`; without a callback they count nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Progress = Callable[[int, int, "str | None"], None]  # (units done, units in all, stage)


class Tick(Protocol):
    def __call__(self, what: str, units: int = 1) -> None: ...


def _nothing(what: str, units: int = 1) -> None:
    pass


def ticker(progress: Progress | None, total: int) -> Tick:
    """`tick(what, units)`: `units` more of `total` done (0: only naming the stage), and the
    work now in the stage `what`."""
    if progress is None:
        return _nothing
    done = 0

    def tick(what: str, units: int = 1) -> None:
        nonlocal done
        done += units
        progress(min(done, total), total, what)

    progress(0, total, None)
    return tick
