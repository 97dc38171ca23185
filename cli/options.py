"""Options shared by commands."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from projections.as_of import MAX_POSITION  # the largest INTEGER SQLite and BIGINT store

F = TypeVar("F", bound=Callable[..., Any])


def command_id_option(function: F) -> F:
    """Every write accepts --command-id: a repeat with the same id appends nothing."""
    return click.option(
        "--command-id",
        default=None,
        metavar="ID",
        help="Idempotency key (generated when absent); a repeat appends nothing.",
    )(function)


class PositionParam(click.ParamType[int]):
    """A global position of the log: a whole number from 1 to 2**63 - 1."""

    name = "POSITION"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not a position (a whole number).", param, ctx)
        if not 1 <= number <= MAX_POSITION:
            self.fail(f"{number} is not a position (1 to {MAX_POSITION}).", param, ctx)
        return number


class FiniteFloatParam(click.ParamType[float]):
    """A number that JSON and the clinical rules can take: not NaN nor infinite."""

    name = "NUMBER"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITION = PositionParam()
FINITE_FLOAT = FiniteFloatParam()
