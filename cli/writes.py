"""Shared plumbing of write commands: the workflow, and how an outcome is shown."""

from __future__ import annotations

from datetime import date, datetime

import click

from cli.context import Env
from cli.render import emit
from projections.as_of import FIRST_YEAR, LAST_YEAR, in_range
from workflow.commands import Outcome, Workflow


def workflow(env: Env) -> Workflow:
    """The workflow for reads (no authentication)."""
    return Workflow(env.app)


def writer(env: Env) -> Workflow:
    """The workflow for a write, once the acting user is authenticated (cli/auth.py)."""
    from cli.auth import authenticate

    authenticate(env)
    return Workflow(env.app)


def show(env: Env, what: str, outcome: Outcome) -> None:
    data = {**outcome.summary, **outcome.result.to_json(),
            "repeated": outcome.result.duplicate}
    positions = ", ".join(str(p) for p in outcome.result.positions) or "none"
    note = " (repeated command: nothing appended)" if outcome.result.duplicate else ""
    emit(env, data, f"{what}{note}. Positions: {positions}.")


class DateParam(click.ParamType[date]):
    name = "DATE"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            day = date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date (YYYY-MM-DD).", param, ctx)
        if not in_range(day):
            self.fail(f"{value!r} is not a date from {FIRST_YEAR} to {LAST_YEAR}.", param, ctx)
        return day


class DateTimeParam(click.ParamType[datetime]):
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2025-03-01T09:30+08:00).",
                      param, ctx)
        if not in_range(moment):
            self.fail(f"{value!r} is not a time from {FIRST_YEAR} to {LAST_YEAR}.", param, ctx)
        return moment


DATE = DateParam()
DATETIME = DateTimeParam()
