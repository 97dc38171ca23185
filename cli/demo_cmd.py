"""`trialflow demo`: a fresh database running the IM19-SLE story (projections/demo_story.py)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.context import Env
from cli.render import emit, table
from cli.writes import DATE

if TYPE_CHECKING:
    from projections.demo_story import DemoResult


@click.command("demo", help="Create a fresh database and run the IM19-SLE study through the "
               "application's commands: 8 candidates, 6 enrolled, a year of follow-up with "
               "the scheduler ticking every day. Then print the study status, endpoints and "
               "adverse events.")
@click.option("--subjects", type=click.IntRange(1, 100_000), default=8, show_default=True,
              help="Candidates: the story has 8; more are copies of a completed subject's "
              "history (for benchmarks).")
@click.option("--seed", type=int, default=7, show_default=True,
              help="Same seed, same events in the same order.")
@click.option("--start", type=DATE, default="2024-09-02", show_default=True,
              help="The first consent (the story's calendar).")
@click.option("--replace", is_flag=True, help="Replace an existing database (never implied).")
@click.pass_obj
def demo(env: Env, subjects: int, seed: int, start: date, replace: bool) -> None:
    from workflow.errors import RuleViolation

    if _has_data(env.db_url):
        if not replace:
            raise RuleViolation(f"The database {env.db_url} already holds a study; pass "
                                "--replace to overwrite it (its data will be lost).",
                                rule="database_not_empty", field="db")
        _wipe(env.db_url)
    from projections.demo_story import run_demo

    def progress(line: str) -> None:
        env.stderr.write(line + "\n")

    verbose = env.log_level in ("info", "debug")
    result = run_demo(env.db_url, seed=seed, start=start, progress=progress if verbose else None)
    if subjects > len(result.subjects):
        _more_subjects(env.db_url, subjects, result)
    _summary(env, result)


def _has_data(url: str) -> bool:
    from sqlalchemy import inspect

    from workflow.bootstrap import build_app

    if url.startswith("sqlite") and not Path(_sqlite_path(url)).exists():
        return False
    app = build_app(url)
    try:
        return bool(inspect(app.engine).has_table("events") and app.store.last_position())
    finally:
        app.engine.dispose()


def _sqlite_path(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


def _wipe(url: str) -> None:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        return
    from sqlalchemy import MetaData

    from workflow.bootstrap import build_app

    app = build_app(url)
    meta = MetaData()
    meta.reflect(app.engine)
    with app.engine.begin() as conn:
        meta.drop_all(conn)
    app.engine.dispose()


def _more_subjects(url: str, subjects: int, result: DemoResult) -> None:
    """Copies of S-001's complete history (workflow/demo.py), appended in batches."""
    from workflow.bootstrap import build_app
    from workflow.demo import clone_subjects, subject_ids, template_of

    app = build_app(url)
    extra = [s for s in subject_ids(subjects, prefix="X")][: subjects - len(result.subjects)]
    clone_subjects(app.store, template_of(app.store, "S-001"), extra, first_order=7)
    result.subjects += extra
    result.events = app.store.last_position()


def _summary(env: Env, result: DemoResult) -> None:
    from projections.queries import Clock, ae_list, endpoint_list, study_status
    from projections.views import open_view

    app = env.app
    view = open_view(app.engine, app.store)
    end = result.end
    clock = Clock(view, datetime.combine(end, datetime.min.time()).astimezone())
    status = study_status(view, clock)
    endpoints = endpoint_list(view, None)
    aes = ae_list(view, None)
    data = {"database": env.db_url, "events": result.events,
            "scheduler_ticks": result.ticks,
            "reminders_issued": result.reminders_issued,
            "status": status, "endpoints": endpoints, "adverse_events": aes}

    def text() -> str:
        lines = [f"Demo study in {env.db_url}: {data['events']} events, "
                 f"{data['scheduler_ticks']} scheduler ticks, {data['reminders_issued']} "
                 "reminders issued.", "",
                 f"Phases: {', '.join(f'{k} {v}' for k, v in status['phases'].items() if v)}",
                 f"Enrolled {status['enrolled']} of {status['cap']}; cohorts "
                 + ", ".join(f"{c['cohort']} {c['filled']}/{c['places']}"
                             for c in status["cohorts"]), "", "Endpoints:"]
        lines.append(table(
            ["subject", "SLEDAI base", "D90", "D180", "D360", "improved", "LLDAS D360",
             "renal D360", "peak copies/µg", "last detectable day"],
            [[e["subject"], e["sledai2k"]["baseline"], e["sledai2k"]["D90"],
              e["sledai2k"]["D180"], e["sledai2k"]["D360"], e["sledai2k"]["improved_D360"],
              e["lldas"]["D360"], e["renal_response"]["D360"],
              e["persistence"]["peak_copies_per_ug"], e["persistence"]["last_detectable_day"]]
             for e in endpoints if e["sledai2k"]["D90"] is not None]))
        lines += ["", "Adverse events:", table(
            ["subject", "term", "day", "grade", "serious", "related", "CRS", "ICANS"],
            [[a["subject"], a["term"], a["study_day"], a["grade"], a["serious"],
              a["relatedness"], a["crs_grade"], a["icans_grade"]] for a in aes])]
        return "\n".join(lines)
    emit(env, data, text)
