"""`trialflow todo` and `trialflow subjects`: every subject's open tasks (workflow/tasks.py),
from the subjects the read models list: the clock applied to each subject's stored task
inputs (the `tasks` read model, `rm_task_inputs`), which are the inputs `status SUBJECT`
derives from its own fold, so its next step is the first task here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events.store import EventStore
from projections import tables as t
from projections.views import View
from workflow.errors import InvalidInput
from workflow.study import User
from workflow.tasks import Task, TaskInputs, sort_tasks, subject_tasks, tasks_at


def _tasks_by_subject(view: View, store: EventStore, now: datetime, *, site: str | None = None,
                      phase: str | None = None) -> list[tuple[dict[str, Any], list[Task]]]:
    """Each subject's tasks at `now`: the clock applied to its stored inputs (the `tasks`
    read model), or, for a subject in screening (eligibility is judged on the day), to its
    stream folded at the view's position."""
    from workflow.subject import fold_subject

    inputs = {row["subject"]: row["inputs"] for row in view.rows(t.task_inputs)}
    out = []
    for row in view.subjects():
        if site is not None and row["site"] != site:
            continue
        if phase is not None and row["phase"] != phase:
            continue
        found = inputs.get(row["subject"])
        stored = None if found is None else TaskInputs.from_json(found)
        if stored is not None and not stored.screening:
            out.append((row, tasks_at(view.study, stored, now)))
            continue
        events = view.stream(store, row["subject"])
        state = fold_subject(row["subject"], events)
        out.append((row, subject_tasks(view.study, state, now, events)))
    return out


def mine(task: Task, user: User) -> bool:
    """A task the user's role may do, at the user's site when the user has one."""
    return user.role in (task.roles or (task.role,)) and (user.site is None
                                                          or task.site == user.site)


def acting_user(view: View, name: str | None) -> User:
    """`--mine`: the user named by `--user` (no password: a read)."""
    if name is None:
        raise InvalidInput("--mine needs the acting user: give --user NAME (or set "
                           "TRIALFLOW_USER).", field="user")
    user = view.study.users.get(name)
    if user is None:
        raise InvalidInput(f"Unknown user {name}: `trialflow users list` shows the users.",
                           field="user")
    return user


def todo_list(view: View, store: EventStore, now: datetime, *, site: str | None = None,
              user: User | None = None) -> list[dict[str, Any]]:
    """Every open task across subjects, most urgent first (`workflow.tasks.sort_key`)."""
    if site is not None and site not in view.study.sites:
        raise InvalidInput(f"Unknown site {site}: `trialflow sites list` shows the sites.",
                           field="site")
    tasks = [task for _, found in _tasks_by_subject(view, store, now, site=site)
             for task in found if user is None or mine(task, user)]
    return [task.to_json() for task in sort_tasks(tasks)]


def subject_list(view: View, store: EventStore, now: datetime, *, site: str | None = None,
                 phase: str | None = None) -> list[dict[str, Any]]:
    """One row per subject: site, phase, cohort, D0 and its next task."""
    rows = []
    for row, tasks in _tasks_by_subject(view, store, now, site=site, phase=phase):
        first = tasks[0] if tasks else None
        rows.append({"subject": row["subject"], "site": row["site"], "phase": row["phase"],
                     "cohort": row["cohort"], "d0": row["infused_on"],
                     "consent_date": row["consent_date"],
                     "next_step": None if first is None else first.action,
                     "next_task": None if first is None else first.to_json()})
    return rows
