"""`trialflow demo`: a fresh database running the IM19-SLE story (projections/demo_story.py),
then the study status, endpoints, adverse events and data queries, and the four reports written
by `trialflow report …` into --reports (default `NAME-reports` beside the SQLite file
`NAME.db`)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.context import Env
from cli.init_cmd import safe_url
from cli.render import emit, table
from cli.writes import DATE

if TYPE_CHECKING:
    from projections.demo_story import DemoResult


DEMO_DEFAULT_DB = "sqlite:///demo.db"  # without --db or TRIALFLOW_DB
REPORTS = (("swimmer", "swimmer.png"), ("sledai", "sledai.png"),
           ("persistence", "persistence.png"), ("html", "report.html"))


@click.command("demo", help="Create a fresh database and run the IM19-SLE study through the "
               "application's commands: 8 candidates, 6 enrolled, a year of follow-up with "
               "the scheduler ticking every day. Then print the study status, endpoints and "
               "adverse events, and write the reports (swimmer, SLEDAI-2K and persistence "
               "PNGs, the HTML monitoring page) into --reports. Without --db (and "
               "TRIALFLOW_DB) the database is demo.db in the working directory, never the "
               "default trialflow.db.")
@click.option("--subjects", type=click.IntRange(8, 100_000), default=8, show_default=True,
              help="Candidates: the story has 8; beyond them the study is amended to a "
              "protocol variant whose cap is N (version 102) and N-8 more subjects are copies "
              "of story subjects (for benchmarks).")
@click.option("--seed", type=int, default=7, show_default=True,
              help="Same seed, same events in the same order.")
@click.option("--start", type=DATE, default="2024-09-02", show_default=True,
              help="The first consent (the story's calendar).")
@click.option("--replace", is_flag=True, help="Replace an existing database (never implied).")
@click.option("--reports", "reports", default=None, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the reports go (created if missing; the four files are replaced). "
              "Default: NAME-reports beside a SQLite file NAME.db, else demo-reports in the "
              "working directory.")
@click.option("--no-reports", is_flag=True, help="Write no reports (large benchmarks).")
@click.pass_obj
def demo(env: Env, subjects: int, seed: int, start: date, replace: bool,
         reports: Path | None, no_reports: bool) -> None:
    from workflow.errors import InvalidInput, RuleViolation

    if reports is not None and no_reports:
        raise InvalidInput("--reports and --no-reports exclude each other.", field="reports")
    if env.db_defaulted:  # never the production default, trialflow.db
        env.db_url = DEMO_DEFAULT_DB
    folder = None if no_reports else (reports or default_reports_dir(env.db_url))
    if folder is not None:
        _check_folder(folder, create=False)
    found = database_kind(env.db_url)
    shown = safe_url(env.db_url)
    if found == "demo" and not replace:
        raise RuleViolation(f"The database {shown} holds an earlier demo; pass --replace to "
                            "replace it.", rule="database_not_empty", field="db")
    if found not in ("absent", "demo"):
        raise RuleViolation(
            f"The database {shown} holds data that `trialflow demo` did not create, so the demo "
            "refuses it: give a new SQLite file, one holding an earlier demo (with --replace), "
            "or an empty PostgreSQL database.", rule="not_a_demo_database", field="db")
    if folder is not None:
        _check_folder(folder, create=True)
    if found == "demo":
        _remove_sqlite(env.db_url)
    from projections.demo_story import run_demo

    def progress(line: str) -> None:
        env.stderr.write(line + "\n")

    verbose = env.log_level in ("info", "debug")
    from cli.progress import progress_bar

    with progress_bar(env, "demo: story days") as advance:
        result = run_demo(env.db_url, seed=seed, start=start, subjects=subjects,
                          progress=progress if verbose else None,
                          advance=None if verbose else advance)
    written = [] if folder is None else write_reports(env, folder, result.now)
    _summary(env, result, written)


def _check_folder(folder: Path, *, create: bool) -> None:
    """Refuse (exit 2) a --reports that is not a usable directory, before anything is written;
    with `create`, make it (and its parents)."""
    from workflow.errors import InvalidInput

    try:
        if folder.exists() and not folder.is_dir():
            raise InvalidInput(f"--reports {folder}: not a directory.", field="reports")
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidInput(f"--reports {str(folder)[:80]}: {error.strerror or error}.",
                           field="reports") from None


def default_reports_dir(url: str) -> Path:
    """`NAME-reports` beside the SQLite file `NAME.db`; `demo-reports` in the working
    directory for other databases."""
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path and path != ":memory:":
            file = Path(path)
            return file.with_name(f"{file.stem}-reports")
    return Path("demo-reports")


def write_reports(env: Env, folder: Path, now: datetime) -> list[dict[str, str]]:
    """The four reports, each written by its own command (`trialflow report KIND --out
    FILE --now NOW`, cli/report_cmd.py) with the story's clock; their files and SHA-256."""
    import io
    import json
    from dataclasses import replace

    from cli.report_cmd import report

    written = []
    for kind, name in REPORTS:
        out = io.StringIO()
        inner = replace(env, json=True, stdout=out)
        inner.__dict__["app"] = env.app  # the same engine (Env.app is a cached property)
        report.main(args=[kind, "--out", str(folder / name), "--now", now.isoformat()],
                    prog_name="trialflow report", standalone_mode=False, obj=inner)
        written.append(json.loads(out.getvalue()))
    return written


def database_kind(url: str) -> str:
    """What `url` holds: `absent` (no SQLite file, or a PostgreSQL database with no events),
    `demo` (a SQLite file whose study `trialflow demo` made), else `other` (anything else: a
    real study, an empty schema, a PostgreSQL study of any kind, a file that is no database).
    Read without changing anything."""
    from sqlalchemy.exc import DBAPIError

    from events.errors import EventStoreError
    from workflow.bootstrap import build_app
    from workflow.study import load_study

    sqlite = url.startswith("sqlite")
    if sqlite and not Path(_sqlite_path(url)).exists():
        return "absent"
    app = build_app(url)
    try:
        from sqlalchemy import inspect

        if not inspect(app.engine).has_table("events"):
            return "absent" if not sqlite else "other"
        if not app.store.last_position():
            return "absent" if not sqlite else "other"
        if not sqlite:
            return "other"  # PostgreSQL: never replaced, whatever it holds
        return "demo" if load_study(app.store).purpose == "demo" else "other"
    except DBAPIError as error:  # e.g. a file that is no database
        if sqlite:
            return "other"
        from events.translate import translate

        raise translate(error) from error  # a server that is down, a missing database, …
    except EventStoreError:
        if sqlite:
            return "other"
        raise
    finally:
        app.engine.dispose()


def _sqlite_path(url: str) -> str:
    """The file a SQLite URL names (`sqlite:///file:PATH?uri=true` included)."""
    from sqlalchemy.engine import make_url

    path = make_url(url).database or ""
    if path.startswith("file:"):  # a URI filename: file:PATH, file://HOST/PATH
        path = path.removeprefix("file:").split("?", 1)[0]
        if path.startswith("//"):
            path = "/" + path[2:].split("/", 1)[-1]
    return path


def _remove_sqlite(url: str) -> None:
    """Remove an earlier demo's SQLite file (checked by `database_kind` just before)."""
    path = _sqlite_path(url)
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


def _summary(env: Env, result: DemoResult, reports: list[dict[str, str]]) -> None:
    from projections.demo_story import preview_summary
    from projections.queries import Clock, ae_list, endpoint_list, study_status
    from projections.views import open_view
    from workflow.monitoring import review
    from workflow.signing import signatures

    app = env.app
    view = open_view(app.engine, app.store)
    clock = Clock(view, result.now)
    status = study_status(view, clock)
    endpoints = endpoint_list(view, None)
    aes = ae_list(view, None)
    story = result.subjects[: len(result.subjects) - result.copies]
    queries, signed = [], []
    for subject in story:  # copies have no queries: their streams are skipped
        signed += signatures(list(app.store.read_stream(subject)))
        state, reviewed = review(app.store, subject)
        for _, query in sorted(reviewed.queries.items()):
            form = state.forms.get(query.position)
            queries.append({**query.to_json(), "current_value": None if form is None
                            else form.values.get(query.field)})
    data = {"database": safe_url(env.db_url), "events": result.events,
            "scheduler_ticks": result.ticks,
            "reminders_issued": result.reminders_issued, "now": result.now.isoformat(),
            "subjects": len(result.subjects), "copies": result.copies,
            "protocol_version": result.protocol_version,
            "status": status, "endpoints": endpoints, "adverse_events": aes,
            "queries": queries, "signatures": signed, "amendments": result.previews,
            "reports": reports}

    def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["subject"] in story]

    def text() -> str:
        lines = [f"Demo study in {data['database']}: {data['events']} events, "
                 f"{data['scheduler_ticks']} scheduler ticks, {data['reminders_issued']} "
                 "reminders issued.", ""]
        if result.copies:
            lines += [f"Protocol version {result.protocol_version} (cap {status['cap']}, "
                      f"cohorts scaled) in force; {result.copies} subjects copied from the "
                      "story (X-…; the tables below show the story's subjects, --json all).",
                      ""]
        lines += [f"Phases: {', '.join(f'{k} {v}' for k, v in status['phases'].items() if v)}",
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
             for e in shown(endpoints) if e["sledai2k"]["D90"] is not None]))
        lines += ["", "Adverse events:", table(
            ["subject", "term", "day", "grade", "serious", "related", "CRS", "ICANS"],
            [[a["subject"], a["term"], a["study_day"], a["grade"], a["serious"],
              a["relatedness"], a["crs_grade"], a["icans_grade"]] for a in shown(aes)])]
        lines += ["", "Data queries:", table(
            ["query", "subject", "form", "field", "queried value", "now", "state",
             "correction at"],
            [[q["id"], q["subject"], q["form"], q["field"], q["value"], q["current_value"],
              q["state"], q["correction_position"]] for q in queries])]
        for preview in result.previews[:1]:  # the story's amendment (not the scaled variant)
            lines += ["", f"Protocol amendment to version {preview['candidate']['version']}: "
                      "its preview, reviewed before it took effect (`protocol preview`, "
                      "`protocol amend --reviewed`):",
                      *(f"  {line}" for line in preview_summary(preview))]
        lines += ["", "Signatures:", table(
            ["subject", "position", "signs", "meaning", "by", "at", "state"],
            [[r["subject"], r["position"], f"{r['target_type']} @{r['target_position']}",
              r["meaning"], r["printed_name"],
              r["signed_at"], r["state"]] for r in signed])]
        if reports:
            lines += ["", "Reports:", *(f"  {r['file']}" for r in reports)]
        return "\n".join(lines)
    emit(env, data, text)

