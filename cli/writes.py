"""Shared plumbing of write commands: send a message through the one executor, show the
outcome."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import TYPE_CHECKING

import click

from cli.context import Env
from cli.render import emit
from projections.as_of import FIRST_YEAR, LAST_YEAR, in_range

if TYPE_CHECKING:
    from workflow.commands.executor import Outcome
    from workflow.commands.messages import Message
    from workflow.identity import Credential


def send(env: Env, message: Message, command_id: str | None, *,
         credential: Credential | None = None) -> Outcome:
    """Carry out `message` as the proven acting user. Everything the command asks for
    (passwords included) is read before this; the command id is fixed before the write, so
    an interrupted command can be repeated with it (a repeat appends nothing)."""
    from cli.auth import credential as credential_of
    from workflow.commands.roles import NEEDS_PASSWORD

    proof = credential or credential_of(env, password=isinstance(message, NEEDS_PASSWORD))
    env.command_id = command_id or str(uuid.uuid4())
    return env.executor.execute(message, proof, command_id=env.command_id)


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
