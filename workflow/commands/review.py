"""Decisions of data review: queries, source data verification and the study lock.

A query is opened by a monitor or data manager on one field of a recorded form, answered by the
site (optionally with a correction of that form, decided by the rules of `CorrectRecord`, in the
same append) and closed by the reviewer. The lock is a pair of `study` events; while it holds,
the executor refuses every write to a subject's stream.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from events.envelope import NewEvent
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.commands.decision import Context, Decision, decided
from workflow.commands.mend import correction_events
from workflow.commands.messages import (
    AnswerQuery,
    CloseQuery,
    LockStudy,
    OpenQuery,
    UnlockStudy,
    VerifySource,
)
from workflow.errors import InvalidInput, RuleViolation
from workflow.forms import form_spec
from workflow.monitoring import FormReview, MonitoringState, Query


def open_query(m: OpenQuery, c: Context) -> Decision:
    state, review = c.require_subject(), _review(c)
    form = _form_at(review, m.position)
    spec = form_spec(form.form)
    if spec.field(m.field) is None:
        raise InvalidInput(f"Subject {m.subject}: {m.field!r} is not a field of form "
                           f"{form.form} ({', '.join(spec.field_codes)}).", field="field",
                           subject=m.subject)
    if state.infusion is not None and state.infusion.position == m.position:
        value = state.infusion.payload.get(m.field)
    else:
        value = state.forms[m.position].values.get(m.field)
    payload = {"target_position": m.position, "form": form.form, "field": m.field,
               "text": m.text, "value": value}
    opened = decided(m.subject, [NewEvent(T.QUERY_OPENED, payload)], {
        "subject": m.subject, "position": m.position, "form": form.form, "field": m.field,
        "text": m.text, "value": value, "state": "open"})
    return replace(opened, positions={"query": (0, "Q-{}")})


def answer_query(m: AnswerQuery, c: Context) -> Decision:
    state = c.require_subject()
    query = _query(c, m.query_position)
    if query.state != "open":
        raise RuleViolation(f"Query {m.query} of subject {state.subject} is {query.state}; only "
                            "an open query can be answered.", rule="query_not_open",
                            subject=state.subject, field="query")
    events: list[NewEvent] = []
    summary: dict[str, Any] = {"subject": state.subject, "query": m.query,
                               "position": query.position, "form": query.form,
                               "field": query.field, "answer": m.text, "state": "answered"}
    if m.fields:
        why = m.reason if m.reason is not None else f"Answer to query {m.query}: {m.text}"
        corrections, details = correction_events(c, query.position, m.fields, why)
        events = [replace(e, payload={**e.payload, "query": m.query}) for e in corrections]
        summary["correction"] = details
        for key in ("warnings", "deviations_resolved"):  # said at once, as `correct` says it
            if details.get(key):
                summary[key] = details[key]
    events.append(NewEvent(T.QUERY_ANSWERED, {"query": m.query, "text": m.text,
                                              "corrected": bool(m.fields)}))
    answered = decided(state.subject, events, summary)
    return replace(answered, positions={"correction_position": (0, "{}")}) if m.fields \
        else answered


def close_query(m: CloseQuery, c: Context) -> Decision:
    subject = c.require_subject().subject
    query = _query(c, m.query_position)
    if query.state == "closed":
        raise RuleViolation(f"Query {m.query} of subject {subject} is already closed.",
                            rule="query_closed", subject=subject, field="query")
    if query.state == "open" and m.reason is None:
        raise RuleViolation(f"Query {m.query} of subject {subject} is not answered: closing it "
                            "needs --reason.", rule="query_unanswered", subject=subject,
                            field="reason")
    payload: dict[str, Any] = {"query": m.query, "state_at_close": query.state}
    if m.reason is not None:
        payload["reason"] = m.reason
    return decided(subject, [NewEvent(T.QUERY_CLOSED, payload, reason=m.reason)], {
        "subject": subject, "query": m.query, "state": "closed",
        "state_at_close": query.state, "reason": m.reason})


def verify_source(m: VerifySource, c: Context) -> Decision:
    form = _form_at(_review(c), m.position)
    if form.verified:
        raise RuleViolation(f"Form {form.form} at position {m.position} of subject {m.subject} "
                            f"is already source-verified (by {form.verified_by}).",
                            rule="already_verified", subject=m.subject, field="position")
    payload = {"target_position": m.position, "form": form.form,
               "corrections": list(form.corrected_by)}
    return decided(m.subject, [NewEvent(T.SOURCE_VERIFIED, payload)], {
        "subject": m.subject, "position": m.position, "form": form.form, "verified": True})


def lock_study(m: LockStudy, c: Context) -> Decision:
    if c.study.locked:
        raise RuleViolation("The study is already locked.", rule="already_locked")
    return decided(STUDY_STREAM, [NewEvent(T.STUDY_LOCKED, {"reason": m.reason},
                                           reason=m.reason)],
                   {"locked": True, "reason": m.reason})


def unlock_study(m: UnlockStudy, c: Context) -> Decision:
    if not c.study.locked:
        raise RuleViolation("The study is not locked.", rule="not_locked")
    return decided(STUDY_STREAM, [NewEvent(T.STUDY_UNLOCKED, {"reason": m.reason},
                                           reason=m.reason)],
                   {"locked": False, "reason": m.reason})


def _review(c: Context) -> MonitoringState:
    assert c.review is not None, "the executor folds the review of a subject message"
    return c.review


def _query(c: Context, number: int) -> Query:
    query = _review(c).queries.get(number)
    if query is None:  # the executor located the subject by this query; kept as a safety net
        raise InvalidInput(f"There is no query Q-{number}; `trialflow queries` lists them.",
                           field="query")
    return query


def _form_at(review: MonitoringState, position: int) -> FormReview:
    form = review.forms.get(position)
    if form is None:
        raise InvalidInput(f"Subject {review.subject} has no form recorded at position "
                           f"{position}.", field="position", subject=review.subject)
    return form
