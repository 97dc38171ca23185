"""The pure fold of one subject: its stream (and the study's facts) to the rows of every read
model. The runner stores these rows, as-of queries keep them in memory; both call this, so a
table and an in-memory fold cannot disagree.

A subject's rows depend on its own stream and on the study's facts (sites' time zones, the
protocol texts, the version in force), never on another subject, so catching up after new
events refolds just the subjects they touch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from events.envelope import RecordedEvent
from workflow import event_types as T
from workflow.clinical_time import local_date
from workflow.deviations import deviations
from workflow.eligibility import Eligibility, eligibility_day, evaluate_eligibility_on
from workflow.endpoints import subject_endpoints
from workflow.safety import adverse_events, sae_clocks, safety_window
from workflow.schedule import planned_visits
from workflow.study import Study
from workflow.subject import SubjectState, fold_subject
from workflow.tasks import task_inputs

Row = dict[str, Any]
Rows = dict[str, list[Row]]  # table name -> rows of one subject


def zone_of(study: Study, site: str | None) -> ZoneInfo:
    return study.zone(site)


@dataclass
class SubjectContext:
    """One subject folded up to some position, with the study's facts at that position."""

    study: Study
    state: SubjectState
    events: Sequence[RecordedEvent]  # the stream folded (its last event is `last`)

    @property
    def last(self) -> RecordedEvent:
        return self.events[-1]

    @cached_property
    def zone(self) -> ZoneInfo:
        return zone_of(self.study, self.state.site)

    @cached_property
    def protocol(self) -> Any:
        """The subject's own protocol version (schedule, windows, endpoints)."""
        return self.study.protocol_of(self.state.protocol_version)

    @cached_property
    def visits(self) -> list[Row]:
        return planned_visits(self.state, self.study.protocol_of)

    @cached_property
    def adverse_events(self) -> list[Row]:
        return adverse_events(self.state, self.protocol)

    @cached_property
    def sae_clocks(self) -> list[Row]:
        return sae_clocks(self.state, self.protocol)

    @cached_property
    def eligibility(self) -> Eligibility:
        return evaluate_eligibility_on(self.study, self.state, self.evaluated_on)

    @cached_property
    def evaluated_on(self) -> date:
        """The day eligibility is evaluated for in the table: the confirmation date once
        eligibility is confirmed, else the site's date of the last event, not past the
        screening window (after it closes the answer no longer moves)."""
        return eligibility_day(self.study, self.state, local_date(self.last.recorded_at,
                                                                  self.zone))


def fold_context(study: Study, subject: str, events: Sequence[RecordedEvent],
                 state: SubjectState | None = None) -> SubjectContext | None:
    """None when the stream holds no consent (nothing to show); `state`: the stream's fold
    when the caller has it already (projections/kept_streams.py)."""
    if not events:
        return None
    if state is None:
        state = fold_subject(subject, events)
    if not state.consented:
        return None
    return SubjectContext(study, state, events)


def events_on(events: Iterable[RecordedEvent], on: date, zone: ZoneInfo) -> list[RecordedEvent]:
    """`--on DATE`: the events that happened (clinically) on or before DATE at the site.

    A correction or a void belongs to the record it mends: it is kept when its target is
    kept, whenever it was made, because it says what was true then (a void's change of phase
    is dated on the voided procedure's own date).
    """
    kept: list[RecordedEvent] = []
    positions: set[int] = set()
    for event in events:
        if event.type in (T.FORM_CORRECTED, T.RECORD_VOIDED):
            if int(event.payload["target_position"]) in positions:
                kept.append(event)
        elif local_date(event.occurred_at, zone) <= on:
            kept.append(event)
            positions.add(event.position)
    return kept


# --- one function per projection: the rows of its tables -----------------------------------


def _iso(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def subject_rows(ctx: SubjectContext) -> Rows:
    s = ctx.state
    assert s.phase is not None and s.consent is not None
    return {"rm_subjects": [{
        "subject": s.subject, "site": s.site, "phase": s.phase,
        "phase_since": _iso(s.phase_since), "protocol_version": s.protocol_version,
        "consent_date": _iso(s.consent.consent_date),
        "consent_form_version": s.consent.consent_form_version,
        "enrolment_order": s.enrolment_order, "cohort": s.cohort,
        "eligibility_confirmed_on": _iso(s.eligibility_confirmed_on),
        "collected_on": _iso(s.collected_on), "infused_on": _iso(s.infused_on),
        "exit_reason": s.exit_reason, "exited_on": _iso(s.exited_on),
        "stream_version": s.version, "last_position": ctx.last.position,
        "last_recorded_at": ctx.last.recorded_at,
    }]}


def eligibility_rows(ctx: SubjectContext) -> Rows:
    result = ctx.eligibility
    criteria = [{"subject": ctx.state.subject, "code": c.code, "kind": "inclusion",
                 "status": c.status, "reason": c.reason} for c in result.criteria]
    exclusions = [{"subject": ctx.state.subject, "code": code, "kind": "exclusion",
                   "status": answer or "unanswered", "reason": None}
                  for code, answer in result.exclusions]
    return {
        "rm_eligibility": [{
            "subject": ctx.state.subject, "overall": result.overall,
            "screening_window_ends": _iso(result.screening_window_ends),
            "evaluated_on": ctx.evaluated_on.isoformat(), "result": result.to_json(),
        }],
        "rm_eligibility_criteria": criteria + exclusions,
    }


def safety_rows(ctx: SubjectContext) -> Rows:
    window = safety_window(ctx.state, ctx.protocol)
    return {
        "rm_adverse_events": ctx.adverse_events,
        "rm_safety_windows": [] if window is None else [window],
        "rm_sae_clocks": ctx.sae_clocks,
    }


def visit_rows(ctx: SubjectContext) -> Rows:
    return {"rm_visits": ctx.visits}


def deviation_rows(ctx: SubjectContext) -> Rows:
    return {"rm_deviations": deviations(ctx.state, ctx.study.protocol_of)}


def task_rows(ctx: SubjectContext) -> Rows:
    inputs = task_inputs(ctx.study, ctx.state, ctx.events, visits=ctx.visits,
                         aes=ctx.adverse_events, clocks=ctx.sae_clocks)
    return {"rm_task_inputs": [{"subject": inputs.subject, "site": inputs.site,
                                "phase": inputs.phase, "screening": inputs.screening,
                                "inputs": inputs.to_json()}]}


def endpoint_rows(ctx: SubjectContext) -> Rows:
    return {"rm_endpoints": [{"subject": ctx.state.subject,
                              "result": subject_endpoints(ctx.state, ctx.protocol)}]}


RowFunction = Callable[[SubjectContext], Rows]
