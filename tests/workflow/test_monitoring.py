"""Data review as decisions (no database): the query lifecycle with a correction, roles and
sites, source data verification cleared by corrections, the study lock. The executor's own
duties (idempotent command ids, nothing written on refusal) are in test_executor.py."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from tests.support.ledger import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    Ledger,
    a_study,
    enrol,
    screen_eligible,
    through_infusion,
    types,
)
from workflow.commands import messages as M
from workflow.errors import InvalidInput, RuleViolation
from workflow.monitoring import FormReview, Query, fold_monitoring

START = date(2024, 9, 2)
DATA_MANAGER, AUDITOR, OTHER_SITE = "dora", "audrey", "otto"


@pytest.fixture
def ledger() -> Ledger:
    study = a_study()
    screen_eligible(study, "S-001", START)
    return study


def form_position(ledger: Ledger, subject: str, form: str) -> int:
    return ledger.subject(subject).forms_of(form)[0].position


def queries(ledger: Ledger, subject: str = "S-001", *, open_only: bool = False) -> list[Query]:
    found = [q for _, q in sorted(fold_monitoring(subject, ledger.stream(subject))
                                  .queries.items())]
    return [q for q in found if q.state == "open"] if open_only else found


def sdv(ledger: Ledger, position: int, subject: str = "S-001") -> FormReview:
    return fold_monitoring(subject, ledger.stream(subject)).forms[position]


def refused(ledger: Ledger, rule: str, user: str, message: M.Message) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        ledger.decide(user, message)
    assert caught.value.rule == rule, caught.value.message
    return caught.value


def bad_input(ledger: Ledger, user: str, message: M.Message) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        ledger.decide(user, message)
    return caught.value


def open_query(ledger: Ledger, user: str, position: int, field: str, text: str = "?") -> str:
    decision = ledger.decide(user, M.OpenQuery("S-001", position, field, text))
    (event,) = ledger.send(user, M.OpenQuery("S-001", position, field, text))
    assert decision.positions == {"query": (0, "Q-{}")}
    return f"Q-{event.position}"


def test_query_lifecycle_with_a_correction(ledger: Ledger) -> None:
    vitals = form_position(ledger, "S-001", "vitals")
    qid = open_query(ledger, MONITOR, vitals, "weight_kg", "Source document says 85 kg.")
    [query] = queries(ledger)
    assert (query.id, query.state, query.position, query.form, query.field, query.value,
            query.opened_by) == (qid, "open", vitals, "vitals", "weight_kg", 58, MONITOR)
    assert [q.id for q in queries(ledger, open_only=True)] == [qid]

    correction, answer = ledger.send(COORDINATOR, M.AnswerQuery(
        qid, "Transcription error.", ("weight_kg=85",), "typo in the CRF"))
    assert (correction.type, answer.type) == ("FormCorrected", "QueryAnswered")
    assert ledger.subject("S-001").forms[vitals].values["weight_kg"] == 85
    assert ledger.subject("S-001").forms[vitals].corrected_by == (correction.position,)
    assert correction.reason == "typo in the CRF"
    assert correction.payload["query"] == qid
    assert correction.payload["changes"] == {"weight_kg": 85}
    assert correction.payload["previous"] == {"weight_kg": 58}
    [query] = queries(ledger)
    assert (query.state, query.answer, query.answered_by, query.correction_position) == (
        "answered", "Transcription error.", COORDINATOR, correction.position)
    assert queries(ledger, open_only=True) == []
    refused(ledger, "query_not_open", INVESTIGATOR, M.AnswerQuery(qid, "again"))

    (closed,) = ledger.send(MONITOR, M.CloseQuery(qid))  # answered: no reason needed
    assert closed.payload == {"query": qid, "state_at_close": "answered"}
    [query] = queries(ledger)
    assert (query.state, query.closed_by, query.close_reason) == ("closed", MONITOR, None)
    refused(ledger, "query_closed", DATA_MANAGER, M.CloseQuery(qid, "again"))
    refused(ledger, "query_not_open", COORDINATOR, M.AnswerQuery(qid, "late"))


def test_an_answer_without_correction_and_the_default_correction_reason(ledger: Ledger) -> None:
    vitals = form_position(ledger, "S-001", "vitals")
    first = open_query(ledger, DATA_MANAGER, vitals, "height_cm", "Height?")
    decision = ledger.decide(INVESTIGATOR, M.AnswerQuery(first, "Source agrees."))
    assert "correction_position" not in decision.positions
    assert types(ledger.send(INVESTIGATOR, M.AnswerQuery(first, "Source agrees."))) == [
        "QueryAnswered"]
    assert ledger.subject("S-001").forms[vitals].values["height_cm"] == 162
    qid = open_query(ledger, MONITOR, vitals, "weight_kg", "Weight?")
    decision = ledger.decide(COORDINATOR, M.AnswerQuery(qid, "Re-weighed", ("weight_kg=59",)))
    assert decision.positions == {"correction_position": (0, "{}")}
    correction, _ = ledger.send(COORDINATOR, M.AnswerQuery(qid, "Re-weighed", ("weight_kg=59",)))
    assert correction.reason == f"Answer to query {qid}: Re-weighed"
    assert {q.id: q.state for q in queries(ledger)} == {first: "answered", qid: "answered"}


def test_a_correction_in_an_answer_follows_the_rules_of_correct(ledger: Ledger) -> None:
    test = form_position(ledger, "S-001", "pregnancy_test")
    qid = open_query(ledger, MONITOR, test, "test_date", "Date missing.")
    # the same refusals `trialflow correct` gives
    refused(ledger, "assessment_before_consent", COORDINATOR,
            M.CorrectRecord("S-001", test, ("test_date=2000-01-01",), "date"))
    refused(ledger, "assessment_before_consent", COORDINATOR,
            M.AnswerQuery(qid, "dated", ("test_date=2000-01-01",), "date"))
    assert bad_input(ledger, COORDINATOR, M.AnswerQuery(qid, "x", ("colour=blue",))
                     ).field == "colour"
    bad_input(ledger, COORDINATOR, M.AnswerQuery(qid, "x", ("specimen=blood",)))
    with pytest.raises(InvalidInput):
        M.AnswerQuery(qid, "x", (), "reason without change")
    assert [q.state for q in queries(ledger)] == ["open"]
    ledger.send(COORDINATOR, M.AnswerQuery(qid, "dated", (f"test_date={START.isoformat()}",)))
    assert ledger.subject("S-001").forms[test].values["test_date"] == START.isoformat()


def test_roles_and_sites(ledger: Ledger) -> None:
    vitals = form_position(ledger, "S-001", "vitals")
    for user in (COORDINATOR, INVESTIGATOR, AUDITOR, ADMIN):
        refused(ledger, "role", user, M.OpenQuery("S-001", vitals, "weight_kg", "?"))
    qid = open_query(ledger, MONITOR, vitals, "weight_kg")
    for user in (MONITOR, DATA_MANAGER, AUDITOR):
        refused(ledger, "role", user, M.AnswerQuery(qid, "answer", ("weight_kg=70",), "r"))
    refused(ledger, "site", OTHER_SITE, M.AnswerQuery(qid, "answer", ("weight_kg=70",), "r"))
    for user in (COORDINATOR, INVESTIGATOR, AUDITOR):
        refused(ledger, "role", user, M.CloseQuery(qid, "done"))
    for user in (COORDINATOR, DATA_MANAGER, AUDITOR):
        refused(ledger, "role", user, M.VerifySource("S-001", vitals))
    refused(ledger, "role", MONITOR, M.LockStudy("no"))
    refused(ledger, "role", ADMIN, M.LockStudy("no"))
    ledger.send(ADMIN, M.DeactivateUser(COORDINATOR))
    ledger.send(ADMIN, M.DeactivateUser(MONITOR))
    refused(ledger, "user_deactivated", COORDINATOR, M.AnswerQuery(qid, "a"))
    refused(ledger, "user_deactivated", MONITOR, M.OpenQuery("S-001", vitals, "weight_kg", "?"))
    refused(ledger, "user_deactivated", MONITOR, M.CloseQuery(qid, "done"))
    refused(ledger, "user_deactivated", MONITOR, M.VerifySource("S-001", vitals))
    assert [(q.state, q.answer) for q in queries(ledger)] == [("open", None)]
    ledger.send(INVESTIGATOR, M.AnswerQuery(qid, "fine"))  # the site's other user may


def test_bad_query_input(ledger: Ledger) -> None:
    vitals = form_position(ledger, "S-001", "vitals")
    consent = ledger.stream("S-001")[0].position
    assert bad_input(ledger, MONITOR, M.OpenQuery("S-001", vitals, "colour", "?")
                     ).field == "field"
    assert bad_input(ledger, MONITOR, M.OpenQuery("S-001", consent, "weight_kg", "?")
                     ).field == "position"
    assert bad_input(ledger, MONITOR, M.VerifySource("S-001", consent)).field == "position"
    with pytest.raises(InvalidInput) as caught:
        M.OpenQuery("S-001", vitals, "weight_kg", " ")
    assert caught.value.field == "text"
    with pytest.raises(InvalidInput) as caught:
        M.AnswerQuery("Q-x", "a")
    assert caught.value.field == "query"


def test_an_unanswered_query_closes_only_with_a_reason(ledger: Ledger) -> None:
    vitals = form_position(ledger, "S-001", "vitals")
    qid = open_query(ledger, MONITOR, vitals, "weight_kg")
    refused(ledger, "query_unanswered", MONITOR, M.CloseQuery(qid))
    refused(ledger, "query_unanswered", MONITOR, M.CloseQuery(qid, "  "))
    (event,) = ledger.send(DATA_MANAGER, M.CloseQuery(qid, "raised in error"))
    assert event.reason == "raised in error"
    [query] = queries(ledger)
    assert (query.state, query.answer, query.closed_by, query.close_reason) == (
        "closed", None, DATA_MANAGER, "raised in error")


def test_source_verification_is_cleared_by_a_correction(ledger: Ledger) -> None:
    vitals = form_position(ledger, "S-001", "vitals")
    demographics = form_position(ledger, "S-001", "demographics")

    def status(position: int) -> tuple[bool, str | None, int | None]:
        form = sdv(ledger, position)
        return form.verified, form.verified_by, form.cleared_by

    assert status(vitals) == (False, None, None)
    (verified,) = ledger.send(MONITOR, M.VerifySource("S-001", vitals))
    assert verified.payload == {"target_position": vitals, "form": "vitals", "corrections": []}
    ledger.send(MONITOR, M.VerifySource("S-001", demographics))
    assert status(vitals) == (True, MONITOR, None)
    refused(ledger, "already_verified", MONITOR, M.VerifySource("S-001", vitals))
    (fixed,) = ledger.send(COORDINATOR, M.CorrectRecord("S-001", vitals, ("weight_kg=59",),
                                                        "typo"))
    assert status(vitals) == (False, None, fixed.position)
    assert status(demographics) == (True, MONITOR, None)  # only the corrected form is cleared
    ledger.send(MONITOR, M.VerifySource("S-001", vitals))
    assert status(vitals) == (True, MONITOR, None)
    # a correction made by answering a query clears it as well
    qid = open_query(ledger, MONITOR, vitals, "weight_kg")
    correction, _ = ledger.send(COORDINATOR, M.AnswerQuery(qid, "re-weighed",
                                                           ("weight_kg=60",)))
    assert status(vitals) == (False, None, correction.position)
    assert sdv(ledger, vitals).corrected_by == (fixed.position, correction.position)


def test_the_infusion_can_be_queried_verified_and_corrected() -> None:
    ledger = a_study()
    d0 = through_infusion(ledger, "S-001", START)
    infusion = ledger.subject("S-001").infusion
    assert infusion is not None
    ledger.send(MONITOR, M.VerifySource("S-001", infusion.position))
    qid = open_query(ledger, MONITOR, infusion.position, "infused_at", "Time?")
    later = f"{d0.isoformat()}T14:00:00+08:00"
    ledger.send(COORDINATOR, M.AnswerQuery(qid, "14:00 per the chart", (f"infused_at={later}",)))
    state = ledger.subject("S-001")
    assert state.infused_at is not None
    assert datetime.fromisoformat(state.infused_at) == datetime.fromisoformat(later)
    form = sdv(ledger, infusion.position)
    assert not form.verified and form.cleared_by is not None


def test_the_study_lock_refuses_every_subject_write() -> None:
    ledger = a_study()
    enrol(ledger, "S-001", START)
    screen_eligible(ledger, "S-002", START)
    vitals = form_position(ledger, "S-001", "vitals")
    qid = open_query(ledger, MONITOR, vitals, "weight_kg")
    (locked,) = ledger.send(DATA_MANAGER, M.LockStudy("database lock for the primary analysis"))
    assert locked.type == "StudyLocked" and locked.stream_id == "study"
    assert ledger.study().locked
    refused(ledger, "already_locked", DATA_MANAGER, M.LockStudy("again"))
    day = START + timedelta(days=7)
    ledger.at(day)
    writes: list[tuple[str, str, M.Message]] = [
        ("S-003", COORDINATOR, M.ConsentSubject("S-003", START, "2.0")),
        ("S-001", COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=60",), day)),
        ("S-001", COORDINATOR, M.CorrectRecord("S-001", vitals, ("weight_kg=60",), "typo")),
        ("S-001", COORDINATOR, M.RecordLeukapheresis("S-001", day, "COI-1")),
        ("S-002", INVESTIGATOR, M.ConfirmEligibility("S-002")),
        ("S-002", COORDINATOR, M.RecordScreenFailure("S-002", "age")),
        ("S-001", COORDINATOR, M.TakeOffStudy("S-001", "consent_withdrawn")),
        ("S-001", COORDINATOR, M.AnswerQuery(qid, "fixed", ("weight_kg=60",))),
        ("S-001", COORDINATOR, M.AnswerQuery(qid, "fine")),
        ("S-001", MONITOR, M.OpenQuery("S-001", vitals, "height_cm", "?")),
        ("S-001", MONITOR, M.CloseQuery(qid, "withdrawn")),
        ("S-001", MONITOR, M.VerifySource("S-001", vitals)),
        ("S-001", INVESTIGATOR, M.Sign("S-001", vitals, "reviewed")),
    ]
    for subject, user, message in writes:
        error = refused(ledger, "study_locked", user, message)
        assert error.subject == subject and subject in error.message, error.message
    refused(ledger, "role", DATA_MANAGER, M.UnlockStudy("done"))
    ledger.send(ADMIN, M.UnlockStudy("analysis done"))
    assert not ledger.study().locked
    refused(ledger, "not_locked", ADMIN, M.UnlockStudy("again"))
    ledger.send(COORDINATOR, M.RecordLeukapheresis("S-001", day, "COI-1"))
    ledger.send(COORDINATOR, M.AnswerQuery(qid, "fixed", ("weight_kg=60",)))
    assert ledger.subject("S-001").forms[vitals].values["weight_kg"] == 60
    assert types(ledger.stream("study")[-2:]) == ["StudyLocked", "StudyUnlocked"]


def test_the_fold_replays_the_stream(ledger: Ledger) -> None:
    """The fold is pure: any prefix of the stream gives the state the system showed then."""
    vitals = form_position(ledger, "S-001", "vitals")
    qid = open_query(ledger, MONITOR, vitals, "weight_kg")
    ledger.send(MONITOR, M.VerifySource("S-001", vitals))
    ledger.send(COORDINATOR, M.AnswerQuery(qid, "fixed", ("weight_kg=60",)))
    events = ledger.stream("S-001")
    states = [fold_monitoring("S-001", events[:n]).queries for n in range(len(events) + 1)]
    seen = [q[int(qid[2:])].state if q else None for q in states]
    assert seen[-3:] == ["open", "open", "answered"]
    verified = [fold_monitoring("S-001", events[:n]).forms.get(vitals) for n in
                range(len(events) - 2, len(events) + 1)]
    assert [f.verified for f in verified if f] == [True, False, False]
