"""Options shared by commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def command_id_option(function: F) -> F:
    """Every write accepts --command-id: a repeat with the same id appends nothing."""
    return click.option(
        "--command-id",
        default=None,
        metavar="ID",
        help="Idempotency key (generated when absent); a repeat appends nothing.",
    )(function)
