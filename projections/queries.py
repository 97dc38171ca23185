"""The query commands' documents, built from a `View` and a clock.

Whatever depends on today (due, overdue, days left, open windows) is computed here, at query
time, from `now`; nothing of it is stored. Each subject's "today" is its site's calendar date.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, or_

from projections import tables as t
from projections.views import Filter
from workflow.errors import InvalidInput

if TYPE_CHECKING:
    from projections.subject_rows import Row
    from projections.views import View

# The clinical rules (workflow.safety, workflow.schedule, workflow.eligibility, …) are imported
# by the functions that use them: each query command pays for its own (issue 17).


def _open_visit(table: Table) -> Any:
    return table.c.done_on.is_(None) & or_(table.c.recorded_status.is_(None),
                                          table.c.recorded_status != "missed")


# Visits neither done nor recorded missed: the only ones that can be due or overdue
# (workflow.schedule.visit_state).
OPEN_VISITS = Filter(_open_visit, lambda row: row.get("done_on") is None
                     and row.get("recorded_status") != "missed")


class Clock:
    """`--now` for the query, or the end of the `--on` day (what was true that day)."""

    def __init__(self, view: View, now: datetime) -> None:
        self.view = view
        self._now = now

    def now(self, site: str | None) -> datetime:
        if self.view.on is not None:
            return datetime.combine(self.view.on, time(23, 59, 59), self.view.study.zone(site))
        return self._now

    def today(self, site: str | None) -> date:
        if self.view.on is not None:
            return self.view.on
        return self._now.astimezone(self.view.study.zone(site)).date()


def _sites(view: View) -> dict[str, str | None]:
    return {row["subject"]: row["site"] for row in view.subjects()}


def require_subject(view: View, subject: str) -> Row:
    row = view.subject(subject)
    if row is None:
        raise InvalidInput(f"Subject {subject} is not known at this point of the log: it has no "
                           "consent recorded.", field="subject", subject=subject)
    return row


def _select(view: View, table: Any, subject: str | None, where: Filter | None = None
            ) -> list[Row]:
    if subject is not None:
        require_subject(view, subject)
    return view.rows(table, subject, where=where)


# --- adverse events ------------------------------------------------------------------------


def ae_list(view: View, subject: str | None) -> list[Row]:
    rows = _select(view, t.adverse_events, subject)
    return sorted(rows, key=lambda r: (r["subject"], r["position"]))


def ae_windows(view: View, clock: Clock, subject: str | None) -> dict[str, Any]:
    from workflow.safety import clock_state, primary_safety_counts, window_state

    sites = _sites(view)
    windows = [window_state(row, clock.today(sites.get(row["subject"])))
               for row in _select(view, t.safety_windows, subject)]
    clocks = [clock_state(row, clock.now(sites.get(row["subject"])))
              for row in view.rows(t.sae_clocks, subject)]
    return {
        "windows": sorted(windows, key=lambda r: r["subject"]),
        "sae_clocks": sorted(clocks, key=lambda r: (r["subject"], r["ae_position"],
                                                    r["clock"])),
        "primary_endpoint": primary_safety_counts(view.rows(t.adverse_events, subject)),
    }


# --- visits and deviations -----------------------------------------------------------------


def visit_list(view: View, clock: Clock, subject: str | None, *, due: bool = False,
               overdue: bool = False) -> list[Row]:
    from workflow.schedule import visit_state

    sites = _sites(view)
    out = []
    # only visits still open can be due or overdue: the others are not even read
    where = OPEN_VISITS if due or overdue else None
    for row in _select(view, t.visits, subject, where):
        protocol = view.study.protocol_of(row["protocol_version"])
        lead = (protocol.screening_expiring_lead_days if row["visit"] == "screening"
                else protocol.window_opening_lead_days)
        state = visit_state(row, clock.today(sites.get(row["subject"])), lead_days=lead)
        state["status_on"] = clock.today(sites.get(row["subject"])).isoformat()
        out.append(state)
    wanted = {"due"} if due else set()
    wanted |= {"overdue"} if overdue else set()
    if wanted:
        out = [row for row in out if row["status"] in wanted]
    order = {"screening": -2, "D0": -1}
    return sorted(out, key=lambda r: (r["subject"], order.get(r["visit"], 0),
                                      r["target_date"] or ""))


def deviation_list(view: View, subject: str | None) -> list[Row]:
    rows = _select(view, t.deviations, subject)
    return sorted(rows, key=lambda r: (r["subject"], r["on"] or "", r["position"] or 0))


# --- endpoints and eligibility -------------------------------------------------------------


def endpoint_list(view: View, subject: str | None) -> list[dict[str, Any]]:
    rows = _select(view, t.endpoints, subject)
    return [dict(row["result"]) for row in sorted(rows, key=lambda r: r["subject"])]


def eligibility_of(view: View, clock: Clock, subject: str, state_loader: Any
                   ) -> dict[str, Any]:
    """The stored evaluation when it was made for the same day as today's answer would be;
    otherwise evaluated now from the subject's fold (`state_loader(subject)`), with the rules
    the guard calls. Either way the answer equals the guard's for the same day."""
    row = require_subject(view, subject)
    today = clock.today(row["site"])
    stored = view.rows(t.eligibility, subject)
    ends = stored[0]["screening_window_ends"] if stored else None
    day = min(today, date.fromisoformat(ends)) if ends else today
    if row.get("eligibility_confirmed_on"):  # judged as of the confirmation from then on
        day = min(today, date.fromisoformat(row["eligibility_confirmed_on"]))
    if stored and stored[0]["evaluated_on"] == day.isoformat():
        result = dict(stored[0]["result"])
        source = "read model"
    else:
        from workflow.eligibility import eligibility_day, evaluate_eligibility_on

        state = state_loader(subject)
        result = evaluate_eligibility_on(view.study, state,
                                         eligibility_day(view.study, state, today)).to_json()
        source = "evaluated at query time"
    if ends:
        result["days_left"] = (date.fromisoformat(ends) - today).days
    return {"subject": subject, "phase": row["phase"], **result,
            "evaluated_for": today.isoformat(), "source": source}


def post_enrolment_findings(view: View) -> list[dict[str, Any]]:
    """Every subject's post-enrolment findings (the eligibility read model: values dated after
    the confirmation that would have counted against eligibility), by subject, date and
    position. A confirmed subject's evaluation is as of its confirmation, so the stored rows
    hold it whatever the day of the question."""
    found = [{"subject": row["subject"], **item}
             for row in _select(view, t.eligibility, None)
             for item in (row["result"] or {}).get("post_enrolment_findings") or []]
    return sorted(found, key=lambda r: (r["subject"], r["on"], r["position"]))


# --- the study ------------------------------------------------------------------------------


def study_status(view: View, clock: Clock) -> dict[str, Any]:
    from workflow.phases import STATES, TERMINAL

    subjects = view.subjects()
    protocol = view.study.protocol
    phases = Counter(row["phase"] for row in subjects)
    exits = Counter(row["exit_reason"] for row in subjects if row["phase"] in TERMINAL
                    and row["exit_reason"])
    taken = view.study.taken_places()
    cohorts = []
    for cohort in protocol.cohorts:
        filled = sum(1 for place in taken if cohort.contains(place.order))
        cohorts.append({"cohort": cohort.code, "places": cohort.last - cohort.first + 1,
                        "filled": filled})
    windows = ae_windows(view, clock, None)
    # due (screening windows closing) or overdue: the open visits are enough
    visits = visit_list(view, clock, None, due=True, overdue=True)
    expiring = []
    for row in visits:
        if row["visit"] == "screening" and row["status"] == "due":
            lead = protocol.screening_expiring_lead_days
            if row["days_left"] is not None and row["days_left"] <= lead:
                expiring.append({"subject": row["subject"], "window_end": row["window_end"],
                                 "days_left": row["days_left"]})
    overdue_reports = [c for c in windows["sae_clocks"] if c["state"] == "overdue"]
    return {
        "position": view.position,
        "protocol_version": view.study.protocol_version,
        "subjects": len(subjects),
        "phases": {phase: phases.get(phase, 0) for phase in STATES},
        "exits": dict(sorted(exits.items())),
        "enrolled": len(taken),
        "cap": protocol.enrolment_cap,
        "cohorts": cohorts,
        "open_safety_windows": [w["subject"] for w in windows["windows"]
                                if w["state"] == "open"],
        "overdue_visits": [{"subject": v["subject"], "visit": v["visit"],
                            "window_end": v["window_end"]} for v in visits
                           if v["status"] == "overdue" and v["visit"] != "screening"],
        "overdue_reports": [{"subject": c["subject"], "ae_position": c["ae_position"],
                             "clock": c["clock"], "due_at": c["due_at"]}
                            for c in overdue_reports],
        "screening_expiring": expiring,
        "primary_endpoint": windows["primary_endpoint"],
        # account security (21 CFR 11.300(d)): failed attempts in the log, accounts locked
        "failed_authentications": view.study.authentication_failures,
        "locked_accounts": sorted(name for name in view.study.users
                                  if view.study.account_locked(name)),
    }

