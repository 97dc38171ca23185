"""Query commands: status, eligibility, visits, deviations, adverse events, endpoints.

Each takes `--now` (the clock for due, overdue and days left), `--as-of TIME|@N` (what the
system showed then) and, where it makes sense, `--on DATE` (what was true that day).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cli.context import Env
from cli.render import emit, human, prose, table
from cli.writes import DATE, DATETIME

if TYPE_CHECKING:
    from projections.queries import Clock
    from projections.views import View

F = TypeVar("F", bound=Callable[..., Any])


def query_options(*, on: bool = True) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        function = click.option("--now", "now", type=DATETIME, default=None,
                                help="The clock for due, overdue and days left "
                                "(default now).")(function)
        function = click.option("--as-of", "as_of", default=None, metavar="TIME|@N",
                                help="What the system showed then: ISO 8601 recorded time "
                                "(UTC if no offset) or @POSITION.")(function)
        if on:
            function = click.option("--on", "on", type=DATE, default=None,
                                    help="What was true on this clinical date (site "
                                    "calendar).")(function)
        return function
    return decorate


def _view(env: Env, as_of: str | None, on: date | None,
          now: datetime | None) -> tuple[View, Clock]:
    from projections.queries import Clock
    from projections.views import open_view

    view = open_view(env.app.engine, env.app.store, as_of=as_of, on=on)
    return view, Clock(view, _utc(now) or env.app.clock())


def _utc(now: datetime | None) -> datetime | None:
    """`--now` without an offset means UTC, as `--as-of` does."""
    if now is not None and now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now


def _subject(subject: str | None) -> str | None:
    if subject is None:
        return None
    from events.streams import check_subject_id

    return check_subject_id(subject)


@click.command("status", help="The study (no SUBJECT): subjects per phase, enrolment, cohorts, "
               "open safety windows, overdue visits and reports. With SUBJECT: its phase, "
               "days in phase, study day, cohort and next step.")
@click.argument("subject", required=False)
@query_options()
@click.pass_obj
def status(env: Env, subject: str | None, now: datetime | None, as_of: str | None,
           on: date | None) -> None:
    if subject is not None:
        _subject_status(env, subject, now, as_of, on)
        return
    from projections.queries import study_status

    view, clock = _view(env, as_of, on, now)
    data = study_status(view, clock)
    emit(env, data, lambda: _study_text(data))


def _subject_status(env: Env, subject: str, now: datetime | None, as_of: str | None,
                    on: date | None) -> None:
    from projections.as_of import as_of_position
    from projections.subject_status import subject_status
    from projections.views import open_view
    from workflow.study import fold_study
    from workflow.subject import fold_subject

    store = env.app.store
    if as_of is None and on is None:
        open_view(env.app.engine, store)  # a query catches the read models up
    bound = as_of_position(as_of, store)
    study = fold_study(store.read_stream("study", up_to_position=bound))
    events = store.read_stream(_subject(subject) or subject, up_to_position=bound)
    state = fold_subject(subject, events)
    moment = _utc(now) or env.app.clock()
    if on is not None and state.consented:
        from projections.subject_rows import events_on, zone_of

        zone = zone_of(study, state.site)
        events = events_on(events, on, zone)
        state = fold_subject(subject, events)
        moment = datetime.combine(on, datetime.max.time(), zone)
    data = subject_status(study, state, moment, events)
    emit(env, data, lambda: "\n".join(
        [f"{k}: {human(v)}" for k, v in data.items() if k != "next_task"]
        + ([f"next_command: {data['next_task']['command']}"] if data["next_task"] else [])))


@click.command("eligibility", help="Each inclusion criterion and exclusion answer of a subject, "
               "with evidence and reasons.")
@click.argument("subject")
@query_options()
@click.pass_obj
def eligibility(env: Env, subject: str, now: datetime | None, as_of: str | None,
                on: date | None) -> None:
    from projections.queries import eligibility_of

    checked = _subject(subject) or subject
    view, clock = _view(env, as_of, on, now)

    def load(name: str) -> Any:  # only when the stored evaluation is not for today
        from projections.subject_rows import events_on, zone_of
        from workflow.subject import fold_subject

        events = env.app.store.read_stream(name, up_to_position=view.position)
        state = fold_subject(name, events)
        if on is not None:
            state = fold_subject(name, events_on(events, on, zone_of(view.study, state.site)))
        return state

    data = eligibility_of(view, clock, checked, load)
    emit(env, data, lambda: _eligibility_text(data))


@click.command("visits", help="Planned visits with target date, window and status "
               "(upcoming, due, overdue, done, missed) and the reminders due.")
@click.argument("subject", required=False)
@click.option("--due", is_flag=True, help="Only visits due now.")
@click.option("--overdue", is_flag=True, help="Only visits overdue now.")
@query_options()
@click.pass_obj
def visits(env: Env, subject: str | None, due: bool, overdue: bool, now: datetime | None,
           as_of: str | None, on: date | None) -> None:
    from projections.queries import visit_list

    view, clock = _view(env, as_of, on, now)
    data = visit_list(view, clock, _subject(subject), due=due, overdue=overdue)
    emit(env, data, lambda: table(
        ["subject", "visit", "target", "window", "status", "done_on", "reminders"],
        [[v["subject"], v["visit"], v["target_date"],
          f"{v['window_start']}..{v['window_end']}", v["status"], v["done_on"],
          ", ".join(r["kind"] for r in v["reminders_due"])] for v in data]))


@click.command("deviations", help="Protocol deviations: visits outside their window, doses off "
               "the regimen or tolerance, assessments missing from a visit.")
@click.argument("subject", required=False)
@query_options()
@click.pass_obj
def deviations(env: Env, subject: str | None, now: datetime | None, as_of: str | None,
               on: date | None) -> None:
    from projections.queries import deviation_list

    view, _ = _view(env, as_of, on, now)
    data = deviation_list(view, _subject(subject))
    emit(env, data, lambda: table(
        ["subject", "kind", "on", "position", "protocol", "detail"],
        [[d["subject"], d["kind"], d["on"], d["position"], d["protocol_version"],
          d["detail"]] for d in data]) if data else "No protocol deviations.")


@click.command("endpoints", help="Efficacy endpoints: SLEDAI-2K, LLDAS, renal response, CAR-T "
               "persistence; a missing value is shown with its reason.")
@click.argument("subject", required=False)
@query_options()
@click.pass_obj
def endpoints(env: Env, subject: str | None, now: datetime | None, as_of: str | None,
              on: date | None) -> None:
    from projections.queries import endpoint_list

    view, _ = _view(env, as_of, on, now)
    data = endpoint_list(view, _subject(subject))
    document: Any = data[0] if subject is not None else data
    emit(env, document, lambda: "\n\n".join(_endpoint_text(e) for e in data))


@click.group("ae", help="Adverse events, safety windows and SAE reporting clocks.")
def ae() -> None:
    pass


@ae.command("list", help="Every adverse event with grade, seriousness, relatedness, period "
            "(pre_treatment before D0, safety_window D0–D28, after_window) and CRS/ICANS "
            "grades.")
@click.argument("subject", required=False)
@query_options()
@click.pass_obj
def ae_list(env: Env, subject: str | None, now: datetime | None, as_of: str | None,
            on: date | None) -> None:
    from projections.queries import ae_list as rows

    view, _ = _view(env, as_of, on, now)
    data = rows(view, _subject(subject))
    emit(env, data, lambda: table(
        ["subject", "position", "term", "onset", "day", "grade", "serious", "related",
         "period", "crs", "icans"],
        [[a["subject"], a["position"], a["term"], a["onset_date"], a["study_day"], a["grade"],
          a["serious"], a["relatedness"], a["period"], a["crs_grade"],
          a["icans_grade"]] for a in data]) if data else "No adverse events.")


@ae.command("windows", help="D0–D28 safety windows (open/closed, days left), SAE reporting "
            "clocks with due and overdue flags, primary safety endpoint counts.")
@click.argument("subject", required=False)
@query_options()
@click.pass_obj
def ae_windows(env: Env, subject: str | None, now: datetime | None, as_of: str | None,
               on: date | None) -> None:
    from projections.queries import ae_windows as windows

    view, clock = _view(env, as_of, on, now)
    data = windows(view, clock, _subject(subject))
    emit(env, data, lambda: _windows_text(data))


# --- text renderings -----------------------------------------------------------------------


def _study_text(data: dict[str, Any]) -> str:
    phases = ", ".join(f"{k} {v}" for k, v in data["phases"].items() if v)
    cohorts = ", ".join(f"{c['cohort']} {c['filled']}/{c['places']}" for c in data["cohorts"])
    lines = [
        f"Subjects: {data['subjects']} ({phases or 'none'})",
        f"Enrolled: {data['enrolled']} of {data['cap']} (cohorts: {cohorts})",
        f"Open safety windows: {', '.join(data['open_safety_windows']) or 'none'}",
        "Overdue visits: " + (", ".join(f"{v['subject']} {v['visit']}"
                                        for v in data["overdue_visits"]) or "none"),
        "Overdue reports: " + (", ".join(f"{r['subject']} {r['clock']} (AE {r['ae_position']})"
                                         for r in data["overdue_reports"]) or "none"),
        "Screening windows closing: " + (", ".join(
            f"{s['subject']} ({_days_left(s['days_left'])})" for s in data["screening_expiring"])
            or "none"),
        f"Failed sign-in attempts: {data['failed_authentications']}; locked accounts: "
        + (", ".join(data["locked_accounts"]) or "none"),
    ]
    return "\n".join(lines)


def _eligibility_text(data: dict[str, Any]) -> str:
    criteria = data["criteria"]
    exclusions = data["exclusions"]
    confirmed = data.get("confirmed_on")
    if confirmed:  # enrolled: the screening window no longer matters
        when = f"as of its confirmation on {human(confirmed)}"
    else:
        when = f"screening window ends {human(data['screening_window_ends'])}"
        if data.get("days_left") is not None:
            when += f", {_days_left(data['days_left'])}"
    lines = [f"Subject {data['subject']}: {human(data['overall'])} ({when})", ""]
    lines.append(table(["criterion", "status", "reason"],
                       [[c["code"], c["status"], c["reason"]] for c in criteria]))
    answers = ", ".join(
        f"{e['code']}={'?' if e['answer'] is None else human(_answer(e['answer']))}"
        for e in exclusions)
    lines += ["", prose(f"exclusions: {answers}", "  ")]
    if confirmed:
        findings = data.get("post_enrolment_findings") or []
        lines += ["", f"post-enrolment findings (dated after the confirmation on {confirmed}; "
                      "listed, not judged): " + ("none" if not findings else str(len(findings)))]
        if findings:
            lines.append(table(["on", "position", "form", "field", "value", "criterion"],
                               [[f["on"], f["position"], f["form"], f["field"],
                                 _answer(f["value"]), f["criterion"]] for f in findings]))
    return "\n".join(lines)


def _days_left(days: int) -> str:
    if days < 0:
        return f"closed {-days} day{'s' if days != -1 else ''} ago"
    return f"{days} day{'s' if days != 1 else ''} left"


def _answer(value: Any) -> Any:
    """A recorded yes/no as the word typed."""
    return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value


def _endpoint_text(data: dict[str, Any]) -> str:
    s, p = data["sledai2k"], data["persistence"]
    lines = [
        f"Subject {data['subject']}",
        f"  SLEDAI-2K: baseline {human(s['baseline'])}, D90 {human(s['D90'])}, "
        f"D180 {human(s['D180'])}, D360 {human(s['D360'])} (change {human(s['change_D360'])}, "
        f"improved {human(s['improved_D360'])})",
        f"  LLDAS: D180 {human(data['lldas']['D180'])}, D360 {human(data['lldas']['D360'])}",
        f"  Renal response: D180 {human(data['renal_response']['D180'])}, "
        f"D360 {human(data['renal_response']['D360'])}",
        f"  CAR-T persistence: peak {human(p['peak_copies_per_ug'])} copies/µg on day "
        f"{human(p['peak_day'])}, last detectable day {human(p['last_detectable_day'])}",
    ]
    lines += [prose(f"  missing {key}: {human(why)}", "    ")
              for key, why in data.get("missing", {}).items()
              if ".change_" not in key and ".improved_" not in key]  # follow from the visit
    return "\n".join(lines)


def _windows_text(data: dict[str, Any]) -> str:
    lines = ["Safety windows:"]
    lines.append(table(["subject", "d0", "window", "state", "days_left"],
                       [[w["subject"], w["d0"], f"{w['window_start']}..{w['window_end']}",
                         w["state"], w["days_left"]] for w in data["windows"]])
                 if data["windows"] else "none")
    lines.append("")
    lines.append("SAE reporting clocks:")
    lines.append(table(["subject", "ae", "clock", "due_at", "state"],
                       [[c["subject"], c["ae_position"], c["clock"], c["due_at"], c["state"]]
                        for c in data["sae_clocks"]]) if data["sae_clocks"] else "none")
    counts = data["primary_endpoint"]
    lines += ["", f"Primary safety endpoint: {counts['events']} related AEs in the window in "
              f"{counts['subjects']} subjects"]
    return "\n".join(lines)
