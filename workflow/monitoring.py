"""Data review: queries, source data verification and the study lock.

Queries and verifications are events of the subject's own stream, so they are part of its
audit trail. A query's id is `Q-` and the global position of its `QueryOpened`: short, and
stable for ever. An answer may correct the queried form: the `FormCorrected` (decided by the
rules of `trialflow correct`, with `"query"` in its payload) and the `QueryAnswered` are one
append. A correction of a form clears its source verification.

The lock is a pair of events of the `study` stream (`Study.locked`); the one check that
refuses every subject write while it holds is in `Workflow._run`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import Any

from events.envelope import NewEvent, RecordedEvent
from events.store import StreamAppend
from events.streams import STUDY_STREAM, check_subject_id, is_subject_id
from workflow import event_types as T
from workflow.commands import (
    Outcome,
    Workflow,
    _require,
    correction_events,
)
from workflow.errors import InvalidInput, RuleViolation
from workflow.forms import form_spec
from workflow.study import Study, User
from workflow.subject import SubjectState, fold_subject, to_date

QUERY_ID = re.compile(r"Q-([1-9][0-9]{0,17})")
REVIEWERS = frozenset({"monitor", "data_manager"})  # open and close queries
ANSWERERS = frozenset({"coordinator", "investigator"})  # of the subject's site
VERIFIERS = frozenset({"monitor"})
QUERY_STATES = ("open", "answered", "closed")
MAX_NOTE = 500


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
    state = MonitoringState(subject)
    for event in events:
        apply_monitoring(state, event)
    return state


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


# ---------------------------------------------------------------------- the commands
class Monitoring:
    """Writes and reads of data review, through the plumbing of `Workflow` (acting user,
    idempotent command ids, appends at the loaded versions, retried conflicts, the lock)."""

    def __init__(self, flow: Workflow) -> None:
        self.flow = flow
        self.store = flow.store

    def review(self, subject: str, *, up_to_version: int | None = None
               ) -> tuple[SubjectState, MonitoringState]:
        events = self.store.read_stream(check_subject_id(subject), up_to_version=up_to_version)
        return fold_subject(subject, events), fold_monitoring(subject, events)

    # ---------------------------------------------------------------- queries
    def open_query(self, user: str | None, subject: str, position: int, field_name: str,
                   text: str, command_id: str | None) -> Outcome:
        check_subject_id(subject)
        note = _note(text, "text")

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, REVIEWERS, "open queries", subject=subject)
            state, review = self.review(subject)
            form = _form_at(review, position)
            spec = form_spec(form.form)
            if spec.field(field_name) is None:
                raise InvalidInput(f"Subject {subject}: {field_name!r} is not a field of form "
                                   f"{form.form} ({', '.join(spec.field_codes)}).",
                                   field="field", subject=subject)
            value = _value(state, position, field_name)
            payload = {"target_position": position, "form": form.form, "field": field_name,
                       "text": note, "value": value}
            return [StreamAppend(subject, state.version, [NewEvent(T.QUERY_OPENED, payload)])], {
                "subject": subject, "position": position, "form": form.form,
                "field": field_name, "text": note, "value": value, "state": "open"}
        outcome = self.flow._run("query open", {"subject": subject, "position": position,
                                 "field": field_name, "text": note}, user, command_id, build)
        return _with(outcome, query=query_id(outcome.result.positions[0]))

    def answer_query(self, user: str | None, identifier: str, text: str,
                     tokens: Sequence[str], reason: str | None,
                     command_id: str | None) -> Outcome:
        number = query_position(identifier)
        qid = query_id(number)
        note = _note(text, "text")
        if reason is not None and not tokens:
            raise InvalidInput("--reason explains a correction: give FIELD=VALUE as well, or "
                               "say it in --text.", field="reason")
        subject = self._subject_of(number)

        def body(study: Study, actor: User, state: SubjectState, today: date
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            review = fold_monitoring(subject, self.store.read_stream(
                subject, up_to_version=state.version))
            query = review.queries[number]
            if query.state != "open":
                raise RuleViolation(f"Query {qid} of subject {subject} is {query.state}; only an "
                                    "open query can be answered.", rule="query_not_open",
                                    subject=subject, field="query")
            events: list[NewEvent] = []
            summary: dict[str, Any] = {"query": qid, "position": query.position,
                                       "form": query.form, "field": query.field,
                                       "answer": note, "state": "answered"}
            if tokens:
                why = reason if reason is not None else f"Answer to query {qid}: {note}"
                corrections, details = correction_events(study, state, query.position, tokens,
                                                         why, today)
                events = [replace(e, payload={**e.payload, "query": qid}) for e in corrections]
                summary["correction"] = details
            events.append(NewEvent(T.QUERY_ANSWERED, {"query": qid, "text": note,
                                                      "corrected": bool(tokens)}))
            return events, summary
        outcome = self.flow._subject_write(
            "answer queries", subject, {"query": qid, "text": note, "tokens": list(tokens),
                                        "reason": reason}, user, command_id, body,
            roles=ANSWERERS)
        extra: dict[str, Any] = {"query": qid}
        if tokens:
            extra["correction_position"] = outcome.result.positions[0]
        return _with(outcome, **extra)

    def close_query(self, user: str | None, identifier: str, reason: str | None,
                    command_id: str | None) -> Outcome:
        number = query_position(identifier)
        qid = query_id(number)
        why = reason.strip() if reason and reason.strip() else None
        subject = self._subject_of(number)

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, REVIEWERS, "close queries", subject=subject)
            _, review = self.review(subject)
            query = review.queries[number]
            if query.state == "closed":
                raise RuleViolation(f"Query {qid} of subject {subject} is already closed.",
                                    rule="query_closed", subject=subject, field="query")
            if query.state == "open" and why is None:
                raise RuleViolation(f"Query {qid} of subject {subject} is not answered: closing "
                                    "it needs --reason.", rule="query_unanswered",
                                    subject=subject, field="reason")
            payload: dict[str, Any] = {"query": qid, "state_at_close": query.state}
            if why is not None:
                payload["reason"] = why
            return [StreamAppend(subject, review.version,
                                 [NewEvent(T.QUERY_CLOSED, payload, reason=why)])], {
                "subject": subject, "query": qid, "state": "closed",
                "state_at_close": query.state, "reason": why}
        return self.flow._run("query close", {"query": qid, "reason": why}, user, command_id,
                              build)

    def _subject_of(self, number: int) -> str:
        """The subject whose stream holds query `Q-number`."""
        found = list(self.store.read_all(after=number - 1, up_to=number))
        if not found or found[0].type != T.QUERY_OPENED:
            raise InvalidInput(f"There is no query {query_id(number)}; `trialflow queries` "
                               "lists them.", field="query")
        return found[0].stream_id

    # ---------------------------------------------------------------- source data verification
    def verify_source(self, user: str | None, subject: str, position: int,
                      command_id: str | None) -> Outcome:
        check_subject_id(subject)

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, VERIFIERS, "mark forms source-verified", subject=subject)
            _, review = self.review(subject)
            form = _form_at(review, position)
            if form.verified:
                raise RuleViolation(f"Form {form.form} at position {position} of subject "
                                    f"{subject} is already source-verified (by "
                                    f"{form.verified_by}).", rule="already_verified",
                                    subject=subject, field="position")
            payload = {"target_position": position, "form": form.form,
                       "corrections": list(form.corrected_by)}
            return [StreamAppend(subject, review.version,
                                 [NewEvent(T.SOURCE_VERIFIED, payload)])], {
                "subject": subject, "position": position, "form": form.form,
                "verified": True}
        return self.flow._run("sdv", {"subject": subject, "position": position}, user,
                              command_id, build)

    # ---------------------------------------------------------------- the study lock
    def lock_study(self, user: str | None, reason: str, command_id: str | None) -> Outcome:
        why = _note(reason, "reason")

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"data_manager"}, "lock the study")
            if study.locked:
                raise RuleViolation("The study is already locked.", rule="already_locked")
            return [StreamAppend(STUDY_STREAM, study.version, [NewEvent(
                T.STUDY_LOCKED, {"reason": why}, reason=why)])], {"locked": True, "reason": why}
        return self.flow._run("study lock", {"reason": why}, user, command_id, build)

    def unlock_study(self, user: str | None, reason: str, command_id: str | None) -> Outcome:
        why = _note(reason, "reason")

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            _require(actor, {"admin"}, "unlock the study")
            if not study.locked:
                raise RuleViolation("The study is not locked.", rule="not_locked")
            return [StreamAppend(STUDY_STREAM, study.version, [NewEvent(
                T.STUDY_UNLOCKED, {"reason": why}, reason=why)])], {
                "locked": False, "reason": why}
        return self.flow._run("study unlock", {"reason": why}, user, command_id, build)

    # ---------------------------------------------------------------- reads
    def queries(self, subject: str | None = None, *, open_only: bool = False) -> list[Query]:
        found = [q for review in self._reviews(subject)
                 for _, q in sorted(review.queries.items())]
        return [q for q in found if q.state == "open"] if open_only else found

    def sdv_status(self, subject: str | None = None) -> list[FormReview]:
        return [form for review in self._reviews(subject)
                for _, form in sorted(review.forms.items())]

    def _reviews(self, subject: str | None) -> list[MonitoringState]:
        if subject is not None:
            return [self.review(subject)[1]]
        subjects = sorted(s for s in self.store.stream_heads() if is_subject_id(s))
        return [fold_monitoring(s, self.store.read_stream(s)) for s in subjects]


# ---------------------------------------------------------------------- helpers
def _form_at(review: MonitoringState, position: int) -> FormReview:
    form = review.forms.get(position)
    if form is None:
        raise InvalidInput(f"Subject {review.subject} has no form recorded at position "
                           f"{position}.", field="position", subject=review.subject)
    return form


def _value(state: SubjectState, position: int, field_name: str) -> Any:
    if state.infusion is not None and state.infusion.position == position:
        return state.infusion.payload.get(field_name)
    return state.forms[position].values.get(field_name)


def _note(value: str | None, field_name: str) -> str:
    text = (value or "").strip()
    if not text or len(text) > MAX_NOTE or any(ord(c) < 32 for c in text):
        raise InvalidInput(f"--{field_name} must be 1 to {MAX_NOTE} printable characters.",
                           field=field_name)
    return text


def _with(outcome: Outcome, **extra: Any) -> Outcome:
    return Outcome(outcome.result, {**outcome.summary, **extra})
