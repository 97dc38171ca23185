"""Shared plumbing of write commands: send a message through the one executor, show the
outcome."""

from __future__ import annotations

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
    env.command_id = command_id or env.executor.store.new_id()
    return env.executor.execute(message, proof, command_id=env.command_id)


def show(env: Env, what: str, outcome: Outcome) -> None:
    """The outcome on stdout (text, or one JSON document with --json). A decision's
    `warnings` (what was accepted but deserves attention, e.g. a visit done outside its
    window) are in the JSON document as `warnings`, a list present only when there is at
    least one, and for human output each goes to stderr as `warning: ...`."""
    data = {**outcome.summary, **outcome.result.to_json(),
            "repeated": outcome.result.duplicate}
    warnings = [str(w) for w in outcome.summary.get("warnings") or ()]
    if warnings:
        data["warnings"] = warnings
    else:
        data.pop("warnings", None)
    positions = ", ".join(str(p) for p in outcome.result.positions) or "none"
    note = " (repeated command: nothing appended)" if outcome.result.duplicate else ""
    emit(env, data, f"{what}{note}. Positions: {positions}.")
    if not env.json:
        for warning in warnings:
            env.stderr.write(f"warning: {warning}\n")
        for resolved in outcome.summary.get("deviations_resolved") or ():
            env.stderr.write(f"note: no longer a protocol deviation: {resolved}\n")


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
    """A moment of the system's clock (`--now`): ISO 8601, UTC when no offset is given."""

    name = "TIME"

    def parse(self, text: str) -> datetime:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2025-03-01T09:30+08:00)"
                             ) from None

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = self.parse(str(value))
        except ValueError as error:
            self.fail(f"{error}.", param, ctx)
        if not in_range(moment):
            self.fail(f"{value!r} is not a time from {FIRST_YEAR} to {LAST_YEAR}.", param, ctx)
        return moment


class ClinicalTimeParam(DateTimeParam):
    """A clinical date-time (`infuse --at`), by the one rule of workflow/clinical_time.py:
    with an offset that instant, without one local time at the subject's site (the decision
    gives it the site's offset), a bare date refused."""

    def parse(self, text: str) -> datetime:
        from workflow.clinical_time import NotADateTime, parse_datetime

        try:
            return parse_datetime(text)
        except NotADateTime as error:
            raise ValueError(str(error)) from None


DATE = DateParam()
DATETIME = DateTimeParam()  # the system's clock (`--now`): UTC when no offset is given
CLINICAL_TIME = ClinicalTimeParam()
