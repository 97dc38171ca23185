"""Data review commands: queries, source data verification, the study lock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from cli.context import Env
from cli.options import POSITION, command_id_option
from cli.render import emit, table
from cli.writes import send, show


# ---------------------------------------------------------------------- queries
@click.group("query", help="Data queries: a monitor or data manager opens one on a field of a "
             "recorded form, the site answers it (and may correct the form), the monitor "
             "closes it.")
def query() -> None:
    pass


@query.command("open", help="Open a query on FIELD of the form recorded at POSITION "
               "(monitor or data_manager).")
@click.argument("subject")
@click.argument("position", type=POSITION)
@click.option("--field", "field_name", required=True, help="A field of that form.")
@click.option("--text", required=True, help="The question for the site.")
@command_id_option
@click.pass_obj
def query_open(env: Env, subject: str, position: int, field_name: str, text: str,
               command_id: str | None) -> None:
    from workflow.commands import messages as M

    outcome = send(env, M.OpenQuery(subject, position, field_name, text), command_id)
    positions = outcome.result.positions
    query_id = outcome.summary.get("query") or (f"Q-{positions[0]}" if positions else "?")
    show(env, f"Query {query_id} opened on {field_name} of the form at "
         f"position {position} of {subject}",
         replace(outcome, summary={**outcome.summary, "query": query_id}))


@query.command("answer", context_settings={"ignore_unknown_options": True},
               help="Answer an open query (coordinator or investigator of the subject's site); "
               "FIELD=VALUE… also corrects the queried form, by the rules of `trialflow "
               "correct`, in the same append (reason: --reason, else the answer).")
@click.argument("query_id", metavar="ID")
@click.argument("fields", nargs=-1, type=click.UNPROCESSED)
@click.option("--text", required=True, help="The answer.")
@click.option("--reason", default=None, help="Reason of the correction (default: the answer).")
@command_id_option
@click.pass_obj
def query_answer(env: Env, query_id: str, fields: tuple[str, ...], text: str,
                 reason: str | None, command_id: str | None) -> None:
    from workflow.commands import messages as M

    outcome = send(env, M.AnswerQuery(query_id, text, fields, reason), command_id)
    corrected = outcome.summary.get("correction_position")
    note = f" and the form corrected (position {corrected})" if corrected else ""
    show(env, f"Query {outcome.summary.get('query', query_id)} answered{note}", outcome)


@query.command("close", help="Close a query (monitor or data_manager); an unanswered query "
               "needs --reason.")
@click.argument("query_id", metavar="ID")
@click.option("--reason", default=None)
@command_id_option
@click.pass_obj
def query_close(env: Env, query_id: str, reason: str | None, command_id: str | None) -> None:
    from workflow.commands import messages as M

    outcome = send(env, M.CloseQuery(query_id, reason), command_id)
    show(env, f"Query {outcome.summary.get('query', query_id)} closed", outcome)


@click.command("queries", help="Data queries, with their state (open, answered, closed), "
               "answer and correction; of one SUBJECT or all.")
@click.argument("subject", required=False)
@click.option("--open", "open_only", is_flag=True, help="Only queries not answered yet.")
@click.pass_obj
def queries(env: Env, subject: str | None, open_only: bool) -> None:
    from workflow.monitoring import queries as listed

    if subject is None:
        found = _every_query(env, open_only)
    else:
        found = listed(env.app.store, subject, open_only=open_only)
    rows = [q.to_json() for q in found]
    emit(env, rows, lambda: _queries_text(rows))


def _every_query(env: Env, open_only: bool) -> list[Any]:
    """`workflow.monitoring.queries(store)`, folding only the subjects that ever had a query
    opened (one indexed look-up of the log) instead of every subject's stream (issue 17)."""
    from sqlalchemy import text

    from events.streams import is_subject_id
    from events.translate import translated
    from workflow import event_types as T
    from workflow.monitoring import fold_monitoring

    store = env.app.store
    with translated(), store.engine.connect() as conn:
        streams = conn.execute(text("SELECT DISTINCT stream_id FROM events WHERE type = :type"),
                               {"type": T.QUERY_OPENED}).scalars().all()
    found = [q for s in sorted(str(s) for s in streams if is_subject_id(str(s)))
             for _, q in sorted(fold_monitoring(s, store.read_stream(s)).queries.items())]
    return [q for q in found if q.state == "open"] if open_only else found


def _queries_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No queries."
    return table(
        ["id", "subject", "pos", "form", "field", "state", "opened_by", "text", "answer",
         "correction"],
        [[r["id"], r["subject"], r["position"], r["form"], r["field"], r["state"],
          r["opened_by"], r["text"], r["answer"], r["correction_position"]] for r in rows],
    )


# ---------------------------------------------------------------------- source data verification
@click.command("sdv", help="Monitor: mark the form recorded at POSITION source-verified (a later "
               "correction clears the mark).")
@click.argument("subject")
@click.argument("position", type=POSITION)
@command_id_option
@click.pass_obj
def sdv(env: Env, subject: str, position: int, command_id: str | None) -> None:
    from workflow.commands import messages as M

    outcome = send(env, M.VerifySource(subject, position), command_id)
    show(env, f"Form at position {position} of {subject} source-verified", outcome)


@click.command("sdv-status", help="Each recorded form, whether it is source-verified and by "
               "whom; of one SUBJECT or all.")
@click.argument("subject", required=False)
@click.pass_obj
def sdv_status(env: Env, subject: str | None) -> None:
    from workflow.monitoring import sdv_status as listed

    rows = [form.to_json() for form in listed(env.app.store, subject)]
    emit(env, rows, lambda: _sdv_text(rows))


def _sdv_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No forms recorded."
    return table(
        ["subject", "pos", "form", "on", "verified", "by", "at", "cleared_by"],
        [[r["subject"], r["position"], r["form"], r["on"], r["verified"], r["verified_by"],
          r["verified_at"], r["cleared_by"]] for r in rows],
    )


# ---------------------------------------------------------------------- the study lock
@click.group("study", help="Study lock: while locked every subject write is refused "
             "(rule study_locked); reading still works.")
def study() -> None:
    pass


@study.command("lock", help="Data manager: lock the study.")
@click.option("--reason", required=True)
@command_id_option
@click.pass_obj
def study_lock(env: Env, reason: str, command_id: str | None) -> None:
    from workflow.commands import messages as M

    show(env, "Study locked", send(env, M.LockStudy(reason), command_id))


@study.command("unlock", help="Admin: unlock the study.")
@click.option("--reason", required=True)
@command_id_option
@click.pass_obj
def study_unlock(env: Env, reason: str, command_id: str | None) -> None:
    from workflow.commands import messages as M

    show(env, "Study unlocked", send(env, M.UnlockStudy(reason), command_id))
