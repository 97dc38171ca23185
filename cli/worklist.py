"""The worklists: `todo` (every open task, most urgent first) and `subjects` (one row per
subject with its next task). Both are reads: `--user` names the acting user for `--mine`
and needs no password."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from cli.context import Env
from cli.render import emit, table
from cli.writes import DATETIME

AS_OF = click.option("--as-of", "as_of", default=None, metavar="TIME|@N",
                     help="What the system showed then: ISO 8601 recorded time (UTC if no "
                     "offset) or @POSITION.")
PHASES = ("screening", "cell_collection", "lymphodepletion", "infusion", "follow_up",
          "completed", "screen_failed", "off_study")


def _now(env: Env, now: datetime | None) -> datetime:
    from cli.queries import _utc

    return _utc(now) or env.app.clock()


@click.command("todo", help="Every open task across subjects, most urgent first: subject, "
               "due date or clock, who must act (role) and the command that does it. "
               "SAE reporting clocks first, then overdue tasks, then by deadline, then "
               "tasks without a deadline, then tasks not due yet, then source "
               "verification.")
@click.option("--site", default=None, help="Only subjects of this site.")
@click.option("--mine", is_flag=True, help="Only tasks of the acting user's role (and site): "
              "needs --user (no password: a read).")
@click.option("--now", "now", type=DATETIME, default=None,
              help="The clock for due, overdue and time left (default now; UTC if no "
              "offset).")
@AS_OF
@click.pass_obj
def todo(env: Env, site: str | None, mine: bool, now: datetime | None,
         as_of: str | None) -> None:
    from projections.todo import acting_user, todo_list
    from projections.views import open_view

    view = open_view(env.app.engine, env.app.store, as_of=as_of)
    user = acting_user(view, env.user) if mine else None
    data = todo_list(view, env.app.store, _now(env, now), site=site, user=user)
    emit(env, data, lambda: _todo_text(data))


def _due(task: dict[str, Any]) -> str:
    if task["hours_left"] is not None:
        hours = task["hours_left"]
        return f"{task['due']} ({hours} h left)" if hours >= 0 else \
            f"{task['due']} ({-hours} h late)"
    if task["due"] is None:
        return "-"
    days = task["days_left"]
    if days is None:
        return str(task["due"])
    if task["state"] == "upcoming" and task["window_start"]:
        return f"{task['due']} (opens {task['window_start']})"
    return f"{task['due']} ({days} d left)" if days >= 0 else f"{task['due']} ({-days} d late)"


def _todo_text(data: list[dict[str, Any]]) -> str:
    if not data:
        return "Nothing to do."
    return table(["subject", "state", "due", "role", "task", "command"],
                 [[t["subject"], t["state"], _due(t), t["role"], t["action"], t["command"]]
                  for t in data])


@click.command("subjects", help="One row per subject: site, phase, cohort, D0 and the next "
               "task (the first of `todo` for that subject).")
@click.option("--site", default=None, help="Only subjects of this site.")
@click.option("--phase", type=click.Choice(PHASES), default=None, help="Only this phase.")
@click.option("--now", "now", type=DATETIME, default=None,
              help="The clock for the next task (default now; UTC if no offset).")
@AS_OF
@click.pass_obj
def subjects(env: Env, site: str | None, phase: str | None, now: datetime | None,
             as_of: str | None) -> None:
    from projections.todo import subject_list
    from projections.views import open_view

    view = open_view(env.app.engine, env.app.store, as_of=as_of)
    data = subject_list(view, env.app.store, _now(env, now), site=site, phase=phase)
    emit(env, data, lambda: table(
        ["subject", "site", "phase", "cohort", "d0", "next task"],
        [[r["subject"], r["site"], r["phase"], r["cohort"], r["d0"], r["next_step"]]
         for r in data]) if data else "No subjects.")
