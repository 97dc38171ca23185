"""Attacks on the executor's read-ahead (`Executor._read_ahead`, commit 6ff183f): the study's
events since, the session row and the subject's events since are read before authenticating
and used by the first try only. Each test runs on SQLite and PostgreSQL (`db_url`)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from events.errors import IdempotencyMismatch
from tests.support.clock import FakeClock
from tests.support.executors import START, kept_is_the_log, two_desks, vitals, vitals_message
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    Desk,
    amend,
    new_study,
    on_day,
    open_desk,
    refused,
)
from workflow.commands import messages as M
from workflow.errors import RuleViolation
from workflow.identity import SessionToken
from workflow.study import load_study
from workflow.subject import fold_subject


@pytest.fixture
def desks(db_url: str) -> tuple[Desk, Desk]:
    return two_desks(db_url)


def _appends(desk: Desk, monkeypatch: pytest.MonkeyPatch, before: Any = None) -> list[int]:
    """Count the desk's optimistic appends (`before(n)` runs ahead of the n-th)."""
    calls: list[int] = []
    original = desk.store.append_streams

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls) + 1)
        if before is not None:
            before(len(calls))
        return original(*args, **kwargs)

    monkeypatch.setattr(desk.store, "append_streams", counting)
    return calls


def _token(desk: Desk, name: str) -> SessionToken:
    credential = desk.actors.credential(name)
    assert isinstance(credential, SessionToken)
    return credential


def test_another_users_session_token_is_refused(desks: tuple[Desk, Desk]) -> None:
    first, _ = desks
    vitals(first, 70)  # the study and S-001 kept: the next command reads ahead
    otto = _token(first, "otto")  # a real, live session, of another user
    before, subject = first.store.last_position(), first.store.read_stream("S-001")
    with pytest.raises(RuleViolation) as caught:
        first.executor.execute(vitals_message(71), SessionToken(COORDINATOR, otto.token))
    assert caught.value.rule == "authentication_failed"
    failed = list(first.store.read_all(after=before))
    assert [(e.type, e.payload["reason"]) for e in failed] == [
        ("AuthenticationFailed", "wrong_session")]
    assert first.store.read_stream("S-001") == subject  # S-001 untouched


def test_an_expired_session_read_ahead_is_refused_and_writes_nothing(
        desks: tuple[Desk, Desk]) -> None:
    first, _ = desks
    vitals(first, 70)
    token, expires = first.actors.sessions[COORDINATOR]
    first.clock.set(expires)  # expired at this very moment
    before = first.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        first.executor.execute(vitals_message(71), SessionToken(COORDINATOR, token))
    assert caught.value.rule == "session_expired"
    assert first.store.last_position() == before
    vitals(first, 72)  # Actors logs in again: a fresh session is accepted
    assert first.store.last_position() == before + 1


def test_a_session_and_a_user_made_by_another_process_are_seen_by_the_next_command(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first executor keeps a study without the site NEW nor its coordinator nina;
    another process adds both and logs nina in: nina's token works on the first executor,
    whose read-ahead brings the study up to date (decided on the first try)."""
    first, second = desks
    vitals(first, 70)
    second.send(ADMIN, M.AddSite("NEW", "Europe/Paris"))
    second.add_user("nina", "coordinator", "NEW")
    nina = _token(second, "nina")
    kept = first.executor._study
    assert kept is not None and "nina" not in kept.users  # kept before the change
    calls = _appends(first, monkeypatch)
    outcome = first.executor.execute(M.ConsentSubject("S-100", date(2025, 3, 10), "2.0"), nina)
    assert calls == [1]  # no conflict: the first try saw the new site and user
    assert first.subject("S-100").site == "NEW"
    assert outcome.result.positions
    kept_is_the_log(first, "S-100")


def test_another_sites_coordinator_is_refused_and_the_kept_folds_stay_the_log(
        desks: tuple[Desk, Desk]) -> None:
    first, second = desks
    vitals(first, 70)
    vitals(second, 71)  # S-001 moved on behind first's back: read ahead by otto's command
    second.send(ADMIN, M.AddSite("THIRD", "Europe/Paris"))  # and the study too
    refused(first, "otto", vitals_message(72), "site", "otto", "S-001")
    kept_is_the_log(first, "S-001", as_is=True)
    kept = first.executor._study
    assert kept is not None and "THIRD" in kept.sites


def test_a_user_deactivated_by_another_executor_is_refused_on_the_first_try(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = desks
    vitals(first, 70)  # cora's session is live and known to first
    second.send(ADMIN, M.DeactivateUser(COORDINATOR))  # her session stays: no logout
    calls = _appends(first, monkeypatch)
    refused(first, COORDINATOR, vitals_message(71), "user_deactivated", COORDINATOR)
    assert calls == []  # refused at once from the study read ahead, not after a conflict


def test_a_protocol_amended_by_another_executor_is_in_force_for_the_next_command(
        db_url: str) -> None:
    clock = FakeClock()
    first = new_study(db_url, clock, protocol_version=1)
    on_day(clock, START)
    first.send(COORDINATOR, M.ConsentSubject("S-001", START, "1.0"))
    refused(first, COORDINATOR, M.ReconsentSubject("S-001", "2.0"), "reconsent_not_needed")
    second = open_desk(db_url, clock)
    amend(second, 2)
    # a stale study (version 1 in force) would refuse again, with no conflict to retry on
    first.send(COORDINATOR, M.ReconsentSubject("S-001", "2.0"))
    assert first.subject("S-001").protocol_version == 2
    assert first.executor._study == load_study(first.store)


def test_a_conflict_is_retried_on_a_fresh_read_not_on_the_read_ahead(
        desks: tuple[Desk, Desk], monkeypatch: pytest.MonkeyPatch) -> None:
    """second reads S-001 ahead; before its append first records a form on S-001: the
    append conflicts and the retry reads the subject again (reusing the empty read-ahead
    would decide on the stale fold again and conflict on every try)."""
    first, second = desks
    vitals(second, 70)
    second.executor._subject_stream("S-001")  # kept up to date: nothing new to read ahead
    raced: list[int] = []

    def race(n: int) -> None:
        if n == 1:
            raced.append(vitals(first, 71))

    calls = _appends(second, monkeypatch, race)
    mine = vitals(second, 72)
    assert calls == [1, 2]  # one conflict, then appended on a fresh read
    assert raced[0] < mine
    rates = [f.values["heart_rate"] for f in first.subject("S-001").forms_of("vitals")
             if "heart_rate" in f.values]
    assert rates[-3:] == [70, 71, 72]
    for desk in desks:
        kept_is_the_log(desk, "S-001")


def test_a_subject_read_ahead_of_a_fold_that_moved_on_is_read_again(
        desks: tuple[Desk, Desk]) -> None:
    """The guard in `_subject_stream`: events read ahead after another version than the one
    kept now (the fold moved on between the read-ahead and the load) are read again."""
    first, second = desks
    vitals(first, 70)
    vitals(second, 71)
    ahead = first.executor._read_ahead(vitals_message(0), _token(first, COORDINATOR))
    assert ahead is not None and ahead.subject is not None and len(ahead.subject) == 2
    first.executor._subject_stream("S-001")  # the kept fold takes 70 and 71 meanwhile
    vitals(second, 72)
    kept = first.executor._subject_stream("S-001", (ahead.subject_since, ahead.subject))
    events = first.store.read_stream("S-001")
    assert [e.position for e in kept.events] == [e.position for e in events]
    assert kept.state == fold_subject("S-001", events)


def test_a_subject_read_ahead_of_a_fold_let_go_meanwhile_is_read_again(
        desks: tuple[Desk, Desk]) -> None:
    """Found by this review: events read ahead after the kept version, whose fold is then let
    go (least recently used out, or another thread), are not the whole stream: folding them
    alone made S-001 look unconsented at the stream's head version (an append would not have
    conflicted). They are used only when the version kept now is the one they follow."""
    first, second = desks
    vitals(first, 70)
    vitals(second, 71)
    ahead = first.executor._read_ahead(vitals_message(0), _token(first, COORDINATOR))
    assert ahead is not None and ahead.subject is not None and ahead.subject_since > 0
    del first.executor._subjects["S-001"]  # let go between the read-ahead and the load
    kept = first.executor._subject_stream("S-001", (ahead.subject_since, ahead.subject))
    events = first.store.read_stream("S-001")
    assert [e.position for e in kept.events] == [e.position for e in events]
    assert kept.state == fold_subject("S-001", events) and kept.state.consent is not None


def test_a_repeated_command_id_returns_the_first_result_on_either_executor(
        desks: tuple[Desk, Desk]) -> None:
    first, second = desks
    vitals(first, 70)
    vitals(second, 70)
    outcome = first.send(COORDINATOR, vitals_message(71), command_id="cmd-vitals-71")
    vitals(second, 72)  # S-001 moved on since: the repeat must not decide again
    before = first.store.last_position()
    for desk in (first, second):
        again = desk.send(COORDINATOR, vitals_message(71), command_id="cmd-vitals-71")
        assert again.result.positions == outcome.result.positions
        assert again.summary == {"repeated": True}
    with pytest.raises(IdempotencyMismatch):
        first.send(COORDINATOR, vitals_message(99), command_id="cmd-vitals-71")
    assert first.store.last_position() == before
