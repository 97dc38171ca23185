"""Data review folded: queries and source data verification of a subject's stream.

Queries and verifications are events of the subject's own stream, so they are part of its
audit trail. A query's id is `Q-` and the global position of its `QueryOpened`: short, and
stable for ever. An answer may correct the queried form: the `FormCorrected` (decided by the
rules of `trialflow correct`, with `"query"` in its payload) and the `QueryAnswered` are one
append. A correction of a form clears its source verification. The decisions are in
workflow/commands/review.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from events.envelope import RecordedEvent
from events.store import EventStore
from events.streams import check_subject_id, is_subject_id
from workflow import event_types as T
from workflow.errors import InvalidInput
from workflow.subject import SubjectState, fold_subject, to_date

QUERY_ID = re.compile(r"Q-([1-9][0-9]{0,17})")
QUERY_STATES = ("open", "answered", "closed")


# ---------------------------------------------------------------------- the fold
@dataclass(frozen=True)
class Query:
    id: str
    subject: str
    position: int  # the queried form
    form: str
    field: str
    text: str
    value: Any  # the field's value when the query was opened
    opened_by: str
    opened_at: str
    state: str = "open"  # open, answered, closed
    answer: str | None = None
    answered_by: str | None = None
    answered_at: str | None = None
    correction_position: int | None = None  # the FormCorrected appended with the answer
    closed_by: str | None = None
    closed_at: str | None = None
    close_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FormReview:
    """One form (a `FormRecorded`, or the infusion) and its source verification."""

    subject: str
    position: int
    form: str
    on: str  # the clinical date it was recorded for
    verified: bool = False
    verified_by: str | None = None
    verified_at: str | None = None
    verified_position: int | None = None
    cleared_by: int | None = None  # the correction that cleared the last verification
    corrected_by: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "corrected_by": list(self.corrected_by)}


@dataclass
class MonitoringState:
    subject: str
    version: int = 0
    forms: dict[int, FormReview] = field(default_factory=dict)  # by the form's position
    queries: dict[int, Query] = field(default_factory=dict)  # by the QueryOpened position


def query_id(position: int) -> str:
    return f"Q-{position}"


def query_position(identifier: str) -> int:
    """The position of a query's `QueryOpened` from its id `Q-N`."""
    match = QUERY_ID.fullmatch(identifier or "")
    if match is None:
        raise InvalidInput(f"{identifier!r} is not a query id: use Q- and a number, as "
                           "`trialflow queries` lists them.", field="query")
    return int(match.group(1))


def fold_monitoring(subject: str, events: Iterable[RecordedEvent]) -> MonitoringState:
    return monitoring_onto(MonitoringState(subject), events)


def monitoring_onto(state: MonitoringState, events: Iterable[RecordedEvent]) -> MonitoringState:
    """The next `events` of the stream folded into a copy of `state` (left as it was)."""
    copy = object.__new__(state.__class__)  # as `copy_subject`: no `__init__` per fold
    copy.__dict__ = {**state.__dict__, "forms": dict(state.forms),
                     "queries": dict(state.queries)}
    state = copy
    for event in events:
        if event.type in _REVIEWED:
            apply_monitoring(state, event)
        else:  # most of a stream: nothing to review in it (issue 17: every catch-up folds it)
            state.version = event.version
    return state


_REVIEWED: Final = frozenset({T.FORM_RECORDED, T.INFUSION_GIVEN, T.FORM_CORRECTED,
                              T.RECORD_VOIDED, T.SOURCE_VERIFIED, T.QUERY_OPENED,
                              T.QUERY_ANSWERED, T.QUERY_CLOSED})  # what apply_monitoring reads


def apply_monitoring(m: MonitoringState, event: RecordedEvent) -> None:
    m.version = event.version
    kind = event.type
    if kind == T.FORM_RECORDED:
        p = event.payload
        m.forms[event.position] = FormReview(m.subject, event.position, p["form"], p["on"])
    elif kind == T.INFUSION_GIVEN:
        on = to_date(event.payload["infused_at"]).isoformat()
        m.forms[event.position] = FormReview(m.subject, event.position, "infusion", on)
    elif kind == T.FORM_CORRECTED:
        p = event.payload
        target = m.forms.get(int(p["target_position"]))
        if target is not None:
            m.forms[target.position] = replace(
                target, verified=False, verified_by=None, verified_at=None,
                verified_position=None,
                cleared_by=event.position if target.verified else target.cleared_by,
                corrected_by=(*target.corrected_by, event.position))
        if p.get("query"):
            number = query_position(p["query"])
            m.queries[number] = replace(m.queries[number], correction_position=event.position)
    elif kind == T.RECORD_VOIDED:  # entered in error: nothing left to review or verify
        m.forms.pop(int(event.payload["target_position"]), None)
    elif kind == T.SOURCE_VERIFIED:
        target = m.forms[int(event.payload["target_position"])]
        m.forms[target.position] = replace(
            target, verified=True, verified_by=event.actor, verified_at=event.recorded_at,
            verified_position=event.position, cleared_by=None)
    elif kind == T.QUERY_OPENED:
        p = event.payload
        m.queries[event.position] = Query(
            query_id(event.position), m.subject, int(p["target_position"]), p["form"],
            p["field"], p["text"], p.get("value"), event.actor, event.recorded_at)
    elif kind == T.QUERY_ANSWERED:
        number = query_position(event.payload["query"])
        m.queries[number] = replace(
            m.queries[number], state="answered", answer=event.payload["text"],
            answered_by=event.actor, answered_at=event.recorded_at)
    elif kind == T.QUERY_CLOSED:
        number = query_position(event.payload["query"])
        m.queries[number] = replace(
            m.queries[number], state="closed", closed_by=event.actor,
            closed_at=event.recorded_at, close_reason=event.reason)


# ---------------------------------------------------------------------- reads
def review(store: EventStore, subject: str, *, up_to_version: int | None = None
           ) -> tuple[SubjectState, MonitoringState]:
    events = store.read_stream(check_subject_id(subject), up_to_version=up_to_version)
    return fold_subject(subject, events), fold_monitoring(subject, events)


def queries(store: EventStore, subject: str | None = None, *, open_only: bool = False
            ) -> list[Query]:
    found = [q for r in _reviews(store, subject) for _, q in sorted(r.queries.items())]
    return [q for q in found if q.state == "open"] if open_only else found


def sdv_status(store: EventStore, subject: str | None = None) -> list[FormReview]:
    return [form for r in _reviews(store, subject) for _, form in sorted(r.forms.items())]


def _reviews(store: EventStore, subject: str | None) -> list[MonitoringState]:
    if subject is not None:
        return [review(store, subject)[1]]
    subjects = sorted(s for s in store.stream_heads() if is_subject_id(s))
    return [fold_monitoring(s, store.read_stream(s)) for s in subjects]



