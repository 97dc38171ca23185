"""The executor keeps the study and each subject's stream folded between commands (issue 17:
a command's cost must not grow with the study): a cache that is never trusted unchecked.

Two executors (two processes' worth: two engines) on one study: each sees what the other
appended (it reads the events since its fold), its folds equal a fresh fold of the log, and a
study event appended between a command's load and its append (a user deactivated) makes the
append a conflict, retried on a fresh read: the command is then refused and writes nothing.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from events.envelope import NewEvent
from events.errors import ConcurrencyConflict
from events.store import AppendContext, EventStore, StreamAppend, Unchanged
from events.streams import STUDY_STREAM
from tests.support.clock import FakeClock
from tests.support.executors import START, kept_is_the_log, two_desks, vitals
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    Desk,
    new_study,
    refused,
    screen_eligible,
)
from workflow.commands import messages as M
from workflow.errors import RuleViolation
from workflow.study import load_study


@pytest.fixture
def desks(db_url: str) -> tuple[Desk, Desk]:
    return two_desks(db_url)


def test_each_executor_sees_what_the_other_appended(desks: tuple[Desk, Desk]) -> None:
    first, second = desks
    a = vitals(second, 70)  # second folds S-001 now
    b = vitals(first, 71)  # first appends behind second's back
    c = vitals(second, 72)  # second reads the event since its fold, at the right version
    assert a < b < c
    for desk in (first, second):
        vitals(desk, 73)
        kept_is_the_log(desk, "S-001")
    heart_rates = [f.values["heart_rate"] for f in first.subject("S-001").forms_of("vitals")
                   if "heart_rate" in f.values]
    assert heart_rates[-5:] == [70, 71, 72, 73, 73]


def test_a_refusal_leaves_the_kept_fold_as_the_log(desks: tuple[Desk, Desk]) -> None:
    first, _ = desks
    vitals(first, 70)
    refused(first, COORDINATOR, M.ConsentSubject("S-001", START, "2.0"), "already_consented")
    kept_is_the_log(first, "S-001")


def test_a_study_change_between_load_and_append_is_a_conflict_then_a_fresh_decision(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """The second executor decides with its study (cora active); before its append the first
    deactivates cora. The append sees the study stream moved on (checked under the lock) and
    conflicts; the retry reads the study again and refuses: nothing of cora's is written."""
    first, second = desks
    vitals(second, 70)
    store: EventStore = second.store
    original = store.append_streams
    calls: list[tuple[Unchanged, ...] | None] = []

    def deactivate_first(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("unchanged"))
        if len(calls) == 1:
            first.send(ADMIN, M.DeactivateUser(COORDINATOR))
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "append_streams", deactivate_first)
    before = first.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        second.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("heart_rate=71",),
                                              date(2025, 3, 9)))
    assert caught.value.rule == "user_deactivated" and COORDINATOR in caught.value.message
    assert len(calls) == 1 and [u.stream_id for u in calls[0] or ()] == [STUDY_STREAM]
    deactivated = [e for e in first.store.read_stream(STUDY_STREAM) if e.position > before]
    assert [e.type for e in deactivated] == ["UserDeactivated"]
    assert first.store.last_position() == before + 1  # only the deactivation


def test_a_place_taken_for_another_subject_meanwhile_is_no_conflict(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """Enrolment places are read only by the decisions that take or free one: another
    subject's enrolment between this command's load and its append changes nothing it
    decided, so it appends at once (no conflict, no retry)."""
    first, second = desks
    screen_eligible(first, "S-002", START)
    vitals(second, 70)
    store: EventStore = second.store
    original = store.append_streams
    calls = 0

    def enrol_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            first.send(INVESTIGATOR, M.ConfirmEligibility("S-002"))
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "append_streams", enrol_first)
    vitals(second, 71)
    assert calls == 1  # appended on the first try
    assert second.executor.study().place_of("S-002") is not None


@pytest.mark.parametrize("ignoring,conflict", [
    (frozenset(), True), (frozenset({"SiteAdded"}), False), (frozenset({"Other"}), True)])
def test_an_append_refuses_a_stream_that_moved_on(db_url: str, ignoring: frozenset[str],
                                                  conflict: bool) -> None:
    """The store's own check: `Unchanged` names a stream read but not written; an event of it
    after the version read refuses the append, unless its type is ignored."""
    clock = FakeClock()
    desk = new_study(db_url, clock)
    version = load_study(desk.store).version
    desk.send(ADMIN, M.AddSite("THIRD", "Europe/Paris"))  # a SiteAdded after `version`
    context = AppendContext(actor=ADMIN, role="admin")
    append = [StreamAppend("S-009", 0, [NewEvent("Noted", {"n": 1})])]
    check = (Unchanged(STUDY_STREAM, version, ignoring),)
    if conflict:
        with pytest.raises(ConcurrencyConflict):
            desk.store.append_streams(append, context, unchanged=check)
        assert desk.store.read_stream("S-009") == []
    else:
        desk.store.append_streams(append, context, unchanged=check)
        assert len(desk.store.read_stream("S-009")) == 1
    current = (Unchanged(STUDY_STREAM, version + 1),)  # the version now: always appends
    desk.store.append_streams([StreamAppend("S-010", 0, [NewEvent("Noted", {"n": 2})])],
                              context, unchanged=current)
    assert len(desk.store.read_stream("S-010")) == 1


def test_a_writer_that_keeps_losing_the_race_decides_under_the_append_lock(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each optimistic try finds the study moved on (another investigator enrols a subject
    just before it appends): after OPTIMISTIC_TRIES the executor decides again holding the
    append lock, where nothing can move, and its enrolment gets the next place."""
    from workflow.commands.executor import OPTIMISTIC_TRIES

    first, second = desks
    for subject in ("S-002", "S-003", "S-004", "S-005"):
        screen_eligible(first, subject, START)
    store: EventStore = second.store
    original = store.append_streams
    rivals = iter(("S-002", "S-003", "S-004", "S-005"))
    tries = 0

    def lose_the_race(*args: Any, **kwargs: Any) -> Any:
        nonlocal tries
        tries += 1
        first.send(INVESTIGATOR, M.ConfirmEligibility(next(rivals)))
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "append_streams", lose_the_race)
    outcome = second.send(INVESTIGATOR, M.ConfirmEligibility("S-001"))
    assert tries == OPTIMISTIC_TRIES  # each lost to a rival's enrolment
    orders = {s: first.study().place_of(s) for s in ("S-001", "S-002", "S-003", "S-004")}
    assert all(place is not None for place in orders.values())
    taken = sorted(place.order for place in orders.values() if place is not None)
    assert taken == list(range(taken[0], taken[0] + 4))  # four places, none twice
    assert outcome.summary["enrolment_order"] == orders["S-001"].order == taken[-1]


def test_a_refusal_under_the_append_lock_writes_nothing(db_url: str) -> None:
    """`append_under_lock`: what `build` raises rolls the transaction back."""
    clock = FakeClock()
    desk = new_study(db_url, clock)
    before = desk.store.last_position()

    def build() -> Any:
        raise RuleViolation("refused", rule="test")

    with pytest.raises(RuleViolation):
        desk.store.append_under_lock(build)
    assert desk.store.last_position() == before
    from events.store import LockedAppend

    context = AppendContext(actor=ADMIN, role="admin")
    result = desk.store.append_under_lock(lambda: LockedAppend(
        [StreamAppend("S-011", 0, [NewEvent("Noted", {"n": 3})])], context))
    assert result.positions == (before + 1,)


def test_a_command_folds_only_what_is_new_whatever_the_size_of_the_study(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of a command does not grow with the study: once an executor has folded the
    study and a subject, the next command on that subject applies no study event and only
    the subject's events appended since (here: its own last one), however many enrolments and
    events the log holds."""
    import workflow.commands.executor as executor_module
    import workflow.study as study_module
    import workflow.subject as subject_module

    first, _ = desks
    for n in range(2, 7):  # five more subjects enrolled (the cap is 6): places in the study
        screen_eligible(first, f"S-{n:03d}", START)
        first.send(INVESTIGATOR, M.ConfirmEligibility(f"S-{n:03d}"))
    vitals(first, 70)  # the executor now keeps S-001 and the study folded
    study_applied: list[str] = []
    subject_applied: list[int] = []
    apply_study, apply_subject = executor_module.apply_study, subject_module.apply_subject

    def counting_study(study: Any, event: Any) -> None:
        study_applied.append(event.type)
        apply_study(study, event)

    def counting_subject(state: Any, event: Any) -> None:
        subject_applied.append(event.position)
        apply_subject(state, event)

    monkeypatch.setattr(executor_module, "apply_study", counting_study)
    monkeypatch.setattr(study_module, "apply_study", counting_study)  # a whole fold too
    monkeypatch.setattr(subject_module, "apply_subject", counting_subject)
    last = vitals(first, 71)
    assert study_applied == []  # nothing new in the study stream: nothing folded
    # the S-001 event appended by the previous command, then the preview of this one's
    assert len(subject_applied) == 2 and subject_applied[0] == last - 1


def test_a_command_reads_the_study_its_session_and_its_subject_together(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the study and the subject are kept folded, a coordinator's command (proven by a
    session) reads the study's events since, the session's row and the subject's events
    since in one `fetch_many` (one round trip on PostgreSQL) and nothing else before its
    append; what it reads is what separate reads would have read (the kept folds equal the
    log)."""
    import events.store as store_module
    import workflow.identity as identity_module

    first, other = desks
    vitals(first, 70)
    vitals(other, 71)  # the subject moved on in another process: read ahead by the next one
    other.send(ADMIN, M.AddSite("SITE2", "Europe/Paris"))  # and the study too
    batches: list[list[str]] = []
    singles: list[str] = []
    fetch_many, fetch_rows = store_module.fetch_many, store_module.fetch_rows

    def counting_many(engine: Any, queries: Any) -> Any:
        batches.append([sql.split(" FROM ")[1].split()[0] for sql, _ in queries])
        return fetch_many(engine, queries)

    def counting_rows(engine: Any, sql: str, params: Any = ()) -> Any:
        singles.append(sql)
        return fetch_rows(engine, sql, params)

    monkeypatch.setattr(store_module, "fetch_many", counting_many)
    monkeypatch.setattr(store_module, "fetch_rows", counting_rows)
    monkeypatch.setattr(identity_module, "fetch_rows", counting_rows)
    vitals(first, 72)
    assert len(batches) == 1 and len(batches[0]) == 3, batches
    assert batches[0][0] == batches[0][1] == "events" and "sessions" in batches[0][2]
    assert singles == []
    kept_is_the_log(first, "S-001")
    assert "SITE2" in first.executor.study().sites


def test_a_session_ended_between_two_commands_is_refused_when_read_ahead(
        desks: tuple[Desk, Desk]) -> None:
    first, _ = desks
    vitals(first, 70)  # the session is known; the next command reads it ahead
    import sqlalchemy as sa

    from workflow.identity import table

    engine = first.store.engine
    sessions = table("sessions", sqlite=engine.dialect.name == "sqlite")
    with engine.begin() as conn:  # ended meanwhile (as a logout in another process would)
        assert conn.execute(sa.text(f"DELETE FROM {sessions} WHERE name = :name"),
                            {"name": COORDINATOR}).rowcount >= 1
    before = first.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        vitals(first, 71)
    assert caught.value.rule == "authentication_failed"
    assert [e.type for e in first.store.read_all(after=before)] == ["AuthenticationFailed"]
