"""Data review through the real handlers, on SQLite and PostgreSQL: the query lifecycle with a
correction, roles, source data verification cleared by corrections, the study lock, and
idempotent command ids. Every refusal is checked to write nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from events.errors import IdempotencyMismatch
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    enrol,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import Workflow
from workflow.errors import InvalidInput, RuleViolation
from workflow.monitoring import Monitoring, fold_monitoring

START = date(2024, 9, 2)
DATA_MANAGER, AUDITOR, OTHER_SITE = "dora", "audrey", "otto"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2025-12-01T02:00:00+00:00")


@pytest.fixture
def flow(db_url: str, clock: FakeClock) -> Workflow:
    return new_study(db_url, clock)


@pytest.fixture
def desk(flow: Workflow) -> Monitoring:
    return Monitoring(flow)


def form_position(flow: Workflow, subject: str, form: str) -> int:
    return flow.subject(subject).forms_of(form)[0].position


def refused(flow: Workflow, rule: str, call: Callable[..., Any], *args: Any,
            **kwargs: Any) -> RuleViolation:
    """`call` is refused by `rule` and appends nothing."""
    before = flow.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        call(*args, **kwargs)
    assert caught.value.rule == rule, caught.value.message
    assert flow.store.last_position() == before, f"{rule}: something was written"
    return caught.value


def bad_input(flow: Workflow, call: Callable[..., Any], *args: Any,
              **kwargs: Any) -> InvalidInput:
    before = flow.store.last_position()
    with pytest.raises(InvalidInput) as caught:
        call(*args, **kwargs)
    assert flow.store.last_position() == before
    return caught.value


def test_query_lifecycle_with_a_correction(flow: Workflow, desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    opened = desk.open_query(MONITOR, "S-001", vitals, "weight_kg",
                             "Source document says 85 kg.", None)
    qid = opened.summary["query"]
    assert qid == f"Q-{opened.result.positions[0]}"
    [query] = desk.queries("S-001")
    assert (query.id, query.state, query.position, query.form, query.field, query.value,
            query.opened_by) == (qid, "open", vitals, "vitals", "weight_kg", 58, MONITOR)
    assert [q.id for q in desk.queries(open_only=True)] == [qid]

    answered = desk.answer_query(COORDINATOR, qid, "Transcription error.", ["weight_kg=85"],
                                 "typo in the CRF", None)
    correction_at, answer_at = answered.result.positions
    assert answered.summary["correction_position"] == correction_at
    assert flow.subject("S-001").forms[vitals].values["weight_kg"] == 85
    assert flow.subject("S-001").forms[vitals].corrected_by == (correction_at,)
    events = {e.position: e for e in flow.store.read_stream("S-001")}
    correction, answer = events[correction_at], events[answer_at]
    assert correction.type == "FormCorrected" and answer.type == "QueryAnswered"
    assert correction.reason == "typo in the CRF"
    assert correction.command_id == answer.command_id  # one append
    assert correction.payload["query"] == qid
    assert correction.payload["changes"] == {"weight_kg": 85}
    assert correction.payload["previous"] == {"weight_kg": 58}
    [query] = desk.queries("S-001")
    assert (query.state, query.answer, query.answered_by, query.correction_position) == (
        "answered", "Transcription error.", COORDINATOR, correction_at)
    assert desk.queries(open_only=True) == []
    refused(flow, "query_not_open", desk.answer_query, INVESTIGATOR, qid, "again", [], None,
            None)

    desk.close_query(MONITOR, qid, None, None)  # answered: no reason needed
    [query] = desk.queries()
    assert (query.state, query.closed_by, query.close_reason) == ("closed", MONITOR, None)
    refused(flow, "query_closed", desk.close_query, DATA_MANAGER, qid, "again", None)
    refused(flow, "query_not_open", desk.answer_query, COORDINATOR, qid, "late", [], None,
            None)


def test_an_answer_without_correction_and_the_default_correction_reason(
        flow: Workflow, desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    first = desk.open_query(DATA_MANAGER, "S-001", vitals, "height_cm", "Height?", None)
    answered = desk.answer_query(INVESTIGATOR, first.summary["query"], "Source agrees.", [],
                                 None, None)
    assert len(answered.result.positions) == 1
    assert "correction_position" not in answered.summary
    assert flow.subject("S-001").forms[vitals].values["height_cm"] == 162
    second = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "Weight?", None)
    qid = second.summary["query"]
    fixed = desk.answer_query(COORDINATOR, qid, "Re-weighed", ["weight_kg=59"], None, None)
    correction = flow.store.read_stream("S-001")[-2]
    assert correction.position == fixed.summary["correction_position"]
    assert correction.reason == f"Answer to query {qid}: Re-weighed"
    states = {q.id: q.state for q in desk.queries("S-001")}
    assert states == {first.summary["query"]: "answered", qid: "answered"}


def test_a_correction_in_an_answer_follows_the_rules_of_correct(
        flow: Workflow, desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    test = form_position(flow, "S-001", "pregnancy_test")
    qid = desk.open_query(MONITOR, "S-001", test, "test_date", "Date missing.",
                          None).summary["query"]
    # the same refusals `trialflow correct` gives
    refused(flow, "assessment_before_consent", flow.correct, COORDINATOR, "S-001", test,
            ["test_date=2000-01-01"], "date", None)
    refused(flow, "assessment_before_consent", desk.answer_query, COORDINATOR, qid, "dated",
            ["test_date=2000-01-01"], "date", None)
    error = bad_input(flow, desk.answer_query, COORDINATOR, qid, "x", ["colour=blue"], None,
                      None)
    assert error.field == "colour"
    bad_input(flow, desk.answer_query, COORDINATOR, qid, "x", ["specimen=blood"], None, None)
    bad_input(flow, desk.answer_query, COORDINATOR, qid, "x", [], "reason without change",
              None)
    assert [q.state for q in desk.queries("S-001")] == ["open"]
    desk.answer_query(COORDINATOR, qid, "dated", [f"test_date={START.isoformat()}"], None, None)
    assert flow.subject("S-001").forms[test].values["test_date"] == START.isoformat()


def test_roles_and_sites(flow: Workflow, desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    for user in (COORDINATOR, INVESTIGATOR, AUDITOR, ADMIN):
        refused(flow, "role", desk.open_query, user, "S-001", vitals, "weight_kg", "?", None)
    refused(flow, "unknown_user", desk.open_query, "nobody", "S-001", vitals, "weight_kg", "?",
            None)
    refused(flow, "unknown_user", desk.open_query, None, "S-001", vitals, "weight_kg", "?",
            None)
    qid = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", None).summary["query"]
    for user in (MONITOR, DATA_MANAGER, AUDITOR):
        refused(flow, "role", desk.answer_query, user, qid, "answer", ["weight_kg=70"], "r",
                None)
    refused(flow, "site", desk.answer_query, OTHER_SITE, qid, "answer", ["weight_kg=70"], "r",
            None)
    for user in (COORDINATOR, INVESTIGATOR, AUDITOR):
        refused(flow, "role", desk.close_query, user, qid, "done", None)
    for user in (COORDINATOR, DATA_MANAGER, AUDITOR):
        refused(flow, "role", desk.verify_source, user, "S-001", vitals, None)
    refused(flow, "role", desk.lock_study, MONITOR, "no", None)
    refused(flow, "role", desk.lock_study, ADMIN, "no", None)
    flow.deactivate_user(ADMIN, COORDINATOR, None)
    flow.deactivate_user(ADMIN, MONITOR, None)
    refused(flow, "user_deactivated", desk.answer_query, COORDINATOR, qid, "a", [], None, None)
    refused(flow, "user_deactivated", desk.open_query, MONITOR, "S-001", vitals, "weight_kg",
            "?", None)
    refused(flow, "user_deactivated", desk.close_query, MONITOR, qid, "done", None)
    refused(flow, "user_deactivated", desk.verify_source, MONITOR, "S-001", vitals, None)
    assert [(q.state, q.answer) for q in desk.queries()] == [("open", None)]
    desk.answer_query(INVESTIGATOR, qid, "fine", [], None, None)  # the site's other user may


def test_bad_query_input_writes_nothing(flow: Workflow, desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    consent = flow.store.read_stream("S-001")[0].position
    assert bad_input(flow, desk.open_query, MONITOR, "S-001", vitals, "colour", "?",
                     None).field == "field"
    assert bad_input(flow, desk.open_query, MONITOR, "S-001", consent, "weight_kg", "?",
                     None).field == "position"
    assert bad_input(flow, desk.open_query, MONITOR, "S-009", 1, "weight_kg", "?",
                     None).field == "position"
    assert bad_input(flow, desk.open_query, MONITOR, "S-001", vitals, "weight_kg", " ",
                     None).field == "text"
    assert bad_input(flow, desk.answer_query, COORDINATOR, "Q-x", "a", [], None,
                     None).field == "query"
    assert bad_input(flow, desk.answer_query, COORDINATOR, f"Q-{vitals}", "a", [], None,
                     None).field == "query"  # a position that is no query
    assert bad_input(flow, desk.close_query, MONITOR, "Q-99999", "r", None).field == "query"
    assert bad_input(flow, desk.verify_source, MONITOR, "S-001", consent, None).field == \
        "position"


def test_an_unanswered_query_closes_only_with_a_reason(flow: Workflow,
                                                       desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    qid = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", None).summary["query"]
    refused(flow, "query_unanswered", desk.close_query, MONITOR, qid, None, None)
    refused(flow, "query_unanswered", desk.close_query, MONITOR, qid, "  ", None)
    closed = desk.close_query(DATA_MANAGER, qid, "raised in error", None)
    event = flow.store.read_stream("S-001")[-1]
    assert event.position == closed.result.positions[0] and event.reason == "raised in error"
    [query] = desk.queries()
    assert (query.state, query.answer, query.closed_by, query.close_reason) == (
        "closed", None, DATA_MANAGER, "raised in error")


def test_source_verification_is_cleared_by_a_correction(flow: Workflow,
                                                        desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    demographics = form_position(flow, "S-001", "demographics")

    def status(position: int) -> tuple[bool, str | None, int | None]:
        form = next(f for f in desk.sdv_status("S-001") if f.position == position)
        return form.verified, form.verified_by, form.cleared_by

    assert status(vitals) == (False, None, None)
    verified = desk.verify_source(MONITOR, "S-001", vitals, None)
    desk.verify_source(MONITOR, "S-001", demographics, None)
    assert status(vitals) == (True, MONITOR, None)
    refused(flow, "already_verified", desk.verify_source, MONITOR, "S-001", vitals, None)
    fixed = flow.correct(COORDINATOR, "S-001", vitals, ["weight_kg=59"], "typo", None)
    assert status(vitals) == (False, None, fixed.result.positions[0])
    assert status(demographics) == (True, MONITOR, None)  # only the corrected form is cleared
    again = desk.verify_source(MONITOR, "S-001", vitals, None)
    assert again.result.positions[0] > verified.result.positions[0]
    assert status(vitals) == (True, MONITOR, None)
    # a correction made by answering a query clears it as well
    qid = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", None).summary["query"]
    answered = desk.answer_query(COORDINATOR, qid, "re-weighed", ["weight_kg=60"], None, None)
    assert status(vitals) == (False, None, answered.summary["correction_position"])
    form = next(f for f in desk.sdv_status() if f.position == vitals)
    assert form.corrected_by == (fixed.result.positions[0],
                                 answered.summary["correction_position"])


def test_the_infusion_can_be_queried_verified_and_corrected(
        flow: Workflow, desk: Monitoring, clock: FakeClock) -> None:
    d0 = through_infusion(flow, "S-001", START, clock)
    infusion = flow.subject("S-001").infusion
    assert infusion is not None
    desk.verify_source(MONITOR, "S-001", infusion.position, None)
    qid = desk.open_query(MONITOR, "S-001", infusion.position, "infused_at", "Time?",
                          None).summary["query"]
    later = f"{d0.isoformat()}T14:00:00+08:00"
    desk.answer_query(COORDINATOR, qid, "14:00 per the chart", [f"infused_at={later}"], None,
                      None)
    state = flow.subject("S-001")
    assert state.infused_at is not None
    assert datetime.fromisoformat(state.infused_at) == datetime.fromisoformat(later)
    [form] = [f for f in desk.sdv_status("S-001") if f.form == "infusion"]
    assert not form.verified and form.cleared_by is not None


def test_the_study_lock_refuses_every_subject_write(flow: Workflow, desk: Monitoring,
                                                    clock: FakeClock) -> None:
    enrol(flow, "S-001", START, clock)
    screen_eligible(flow, "S-002", START)
    vitals = form_position(flow, "S-001", "vitals")
    qid = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", None).summary["query"]
    verified_before = desk.sdv_status("S-001")
    locked = desk.lock_study(DATA_MANAGER, "database lock for the primary analysis", None)
    assert flow.study().locked
    assert flow.store.read_stream("study")[-1].position == locked.result.positions[0]
    refused(flow, "already_locked", desk.lock_study, DATA_MANAGER, "again", None)
    on_day(clock, START + timedelta(days=7))
    day = START + timedelta(days=7)
    writes: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
        ("S-003", flow.consent, (COORDINATOR, "S-003", START, "2.0", None)),
        ("S-001", flow.record, (COORDINATOR, "S-001", "vitals", ["weight_kg=60"], day, None,
                                None)),
        ("S-001", flow.correct, (COORDINATOR, "S-001", vitals, ["weight_kg=60"], "typo",
                                 None)),
        ("S-001", flow.leukapheresis, (COORDINATOR, "S-001", day, "COI-1", None)),
        ("S-002", flow.confirm_eligibility, (INVESTIGATOR, "S-002", None)),
        ("S-002", flow.screen_fail, (COORDINATOR, "S-002", "inclusion_2", None)),
        ("S-001", flow.off_study, (COORDINATOR, "S-001", "consent_withdrawn", None)),
        ("S-001", desk.answer_query, (COORDINATOR, qid, "fixed", ["weight_kg=60"], None,
                                      None)),
        ("S-001", desk.answer_query, (COORDINATOR, qid, "fine", [], None, None)),
        ("S-001", desk.open_query, (MONITOR, "S-001", vitals, "height_cm", "?", None)),
        ("S-001", desk.close_query, (MONITOR, qid, "withdrawn", None)),
        ("S-001", desk.verify_source, (MONITOR, "S-001", vitals, None)),
    ]
    for subject, call, args in writes:
        error = refused(flow, "study_locked", call, *args)
        assert error.subject == subject and subject in error.message, error.message
    # reading still works
    assert flow.subject("S-001").phase == "cell_collection"
    assert [q.state for q in desk.queries("S-001")] == ["open"]
    assert desk.sdv_status("S-001") == verified_before
    refused(flow, "role", desk.unlock_study, DATA_MANAGER, "done", None)
    desk.unlock_study(ADMIN, "analysis done", None)
    assert not flow.study().locked
    refused(flow, "not_locked", desk.unlock_study, ADMIN, "again", None)
    flow.record(COORDINATOR, "S-001", "vitals", ["weight_kg=60"], day, None, None)
    flow.leukapheresis(COORDINATOR, "S-001", day, "COI-1", None)
    desk.answer_query(COORDINATOR, qid, "fixed", ["weight_kg=60"], None, None)
    assert flow.subject("S-001").forms[vitals].values["weight_kg"] == 60
    assert flow.subject("S-001").phase == "cell_collection"
    events = [e.type for e in flow.store.read_stream("study")[-2:]]
    assert events == ["StudyLocked", "StudyUnlocked"]


def test_a_repeated_command_id_appends_nothing(flow: Workflow, desk: Monitoring) -> None:
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    first = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", "q-1")
    before = flow.store.last_position()
    again = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", "q-1")
    assert again.result.duplicate and again.summary["query"] == first.summary["query"]
    assert flow.store.last_position() == before
    with pytest.raises(IdempotencyMismatch):
        desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "other text", "q-1")
    qid = first.summary["query"]
    answered = desk.answer_query(COORDINATOR, qid, "fixed", ["weight_kg=60"], None, "a-1")
    before = flow.store.last_position()
    repeat = desk.answer_query(COORDINATOR, qid, "fixed", ["weight_kg=60"], None, "a-1")
    assert repeat.result.duplicate and repeat.result.positions == answered.result.positions
    assert repeat.summary["correction_position"] == answered.summary["correction_position"]
    desk.verify_source(MONITOR, "S-001", vitals, "v-1")
    desk.verify_source(MONITOR, "S-001", vitals, "v-1")
    desk.close_query(MONITOR, qid, None, "c-1")
    desk.close_query(MONITOR, qid, None, "c-1")
    desk.lock_study(DATA_MANAGER, "lock", "l-1")
    desk.lock_study(DATA_MANAGER, "lock", "l-1")
    assert flow.store.last_position() == before + 3
    assert [e.type for e in flow.store.read_stream("S-001")].count("FormCorrected") == 1


def test_the_fold_replays_the_stream(flow: Workflow, desk: Monitoring) -> None:
    """The fold is pure: any prefix of the stream gives the state the system showed then."""
    screen_eligible(flow, "S-001", START)
    vitals = form_position(flow, "S-001", "vitals")
    qid = desk.open_query(MONITOR, "S-001", vitals, "weight_kg", "?", None).summary["query"]
    desk.verify_source(MONITOR, "S-001", vitals, None)
    desk.answer_query(COORDINATOR, qid, "fixed", ["weight_kg=60"], None, None)
    events = flow.store.read_stream("S-001")
    states = [fold_monitoring("S-001", events[:n]).queries for n in range(len(events) + 1)]
    seen = [q[int(qid[2:])].state if q else None for q in states]
    assert seen[-3:] == ["open", "open", "answered"]
    verified = [fold_monitoring("S-001", events[:n]).forms.get(vitals) for n in
                range(len(events) - 2, len(events) + 1)]
    assert [f.verified for f in verified if f] == [True, False, False]
