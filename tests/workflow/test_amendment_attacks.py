"""Attacks on `protocol preview` / `protocol amend --reviewed` and on the shadow read models
(workflow/amendment.py, admin.amend_protocol, the executor's `amendment` load,
projections/shadow.py): every path that could put an amendment with consequences in force
without the reviewed digest, the digest's stability, the preview's being a pure read, the
CLI's refusals, promote's consistency, and `todo` against each subject's own fold."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from events.engine import create_store_engine
from events.errors import IdempotencyMismatch
from events.store import EventStore
from projections import registry, shadow
from projections.amendment import preview_of
from projections.runner import Runner
from projections.todo import todo_list
from projections.views import open_view
from tests.support.clock import FakeClock
from tests.support.demo import copy_demo
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    MONITOR,
    PASSWORD,
    SCHEDULER,
    Desk,
    new_study,
    open_desk,
    refused,
)
from tests.workflow.test_amendment_preview import (
    build,
    candidate_text,
    tables,
    with_candidate_file,
)
from workflow import event_types as T
from workflow.commands import messages as M
from workflow.errors import InvalidInput, RuleViolation
from workflow.study import fold_study
from workflow.subject import fold_subject
from workflow.tasks import sort_tasks, subject_tasks


def url_of(desk: Desk) -> str:
    return desk.executor.app.engine.url.render_as_string(hide_password=False)


def load_candidate(url: str, folder: Path) -> tuple[Desk, Path]:
    """The study of test_amendment_preview with candidate version 3 loaded (not in force)."""
    desk, path = with_candidate_file(url, folder)
    desk.send(ADMIN, M.LoadProtocol(path.read_text(encoding="utf-8"), str(path)))
    return desk, path


@pytest.fixture
def loaded(db_url: str, tmp_path: Path) -> tuple[Desk, Path]:
    """On SQLite and PostgreSQL: for what the store takes part in (races, command ids, DDL)."""
    return load_candidate(db_url, tmp_path)


@pytest.fixture
def loaded_file(sqlite_url: str, tmp_path: Path) -> tuple[Desk, Path]:
    """On a SQLite file: for the decisions' own rules, which no store changes."""
    return load_candidate(sqlite_url, tmp_path)


def amended_event(desk: Desk, positions: Any) -> Any:
    (event,) = [e for e in desk.store.read_stream("study")
                if e.position in positions and e.type == T.PROTOCOL_AMENDED]
    return event


# --- paths around the review -----------------------------------------------------------------


def racing_amendment(desk: Desk, monkeypatch: pytest.MonkeyPatch, race: M.Message,
                     user: str = COORDINATOR) -> list[int]:
    """Another process sends `race` once, right after the executor previewed at the head."""
    other = open_desk(url_of(desk), desk.clock)
    original = desk.executor._amendment
    raced: list[int] = []

    def racing(study: Any, version: int, head: int) -> Any:
        found = original(study, version, head)
        if not raced:
            raced.append(other.send(user, race).result.positions[0])
        return found

    monkeypatch.setattr(desk.executor, "_amendment", racing)
    return raced


def test_a_subject_event_racing_the_amendment_is_previewed_again(
        loaded: tuple[Desk, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by this review: the append did not check the log since the preview. Now the
    command conflicts, is previewed again, and a race that changes the consequences (one
    more subject to re-consent) makes the reviewed digest stale."""
    desk, _ = loaded
    reviewed = preview_of(desk.store, "3").digest
    raced = racing_amendment(desk, monkeypatch,
                             M.ConsentSubject("S-009", desk.clock().date(), "2.0"))
    before = desk.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        desk.send(ADMIN, M.AmendProtocol(3, reviewed))
    assert caught.value.rule == "preview_changed"
    assert raced == [before + 1] and desk.store.last_position() == before + 1
    assert desk.study().protocol_version == 2


def test_a_race_that_changes_nothing_is_previewed_again_and_accepted(
        loaded: tuple[Desk, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    desk, _ = loaded
    reviewed = preview_of(desk.store, "3").digest
    # a monitor verifies one of S-001's records: the same under both versions, so no
    # consequence of version 3 changes
    form = next(e.position for e in desk.store.read_stream("S-001")
                if e.type == T.FORM_RECORDED)
    raced = racing_amendment(desk, monkeypatch, M.VerifySource("S-001", form), MONITOR)
    outcome = desk.send(ADMIN, M.AmendProtocol(3, reviewed))
    event = amended_event(desk, outcome.result.positions)
    assert raced and raced[0] == event.position - 1
    # the recorded preview is of the log the amendment was appended to
    assert event.payload["preview"]["position"] == event.position - 1
    assert event.payload["preview"]["digest"] == reviewed == preview_of(
        desk.store, "3", up_to=event.position - 1).digest


def test_the_scheduler_and_a_coordinator_may_neither_amend_nor_relax_the_policy(
        loaded_file: tuple[Desk, Path]) -> None:
    desk, _ = loaded_file
    reviewed = preview_of(desk.store, "3").digest
    for user in (SCHEDULER, COORDINATOR):
        refused(desk, user, M.AmendProtocol(3, reviewed), "role")
        refused(desk, user, M.SetAmendmentReview(False), "role")
    assert desk.study().protocol_version == 2


def test_a_repeated_command_id_cannot_change_what_was_reviewed(
        loaded: tuple[Desk, Path]) -> None:
    desk, _ = loaded
    # a refused amendment records nothing under its id...
    refused(desk, ADMIN, M.AmendProtocol(3), "preview_not_reviewed")
    with pytest.raises(RuleViolation) as caught:
        desk.send(ADMIN, M.AmendProtocol(3), command_id="amend-3")
    assert caught.value.rule == "preview_not_reviewed"
    reviewed = preview_of(desk.store, "3").digest
    first = desk.send(ADMIN, M.AmendProtocol(3, reviewed), command_id="amend-3")
    head = desk.store.last_position()
    # the same id again: the same outcome, nothing written
    again = desk.send(ADMIN, M.AmendProtocol(3, reviewed), command_id="amend-3")
    assert again.result.positions == first.result.positions
    assert desk.store.last_position() == head
    # the same id with another message (no digest, another version) is no repeat
    for other in (M.AmendProtocol(3), M.AmendProtocol(2)):
        with pytest.raises(IdempotencyMismatch):
            desk.send(ADMIN, other, command_id="amend-3")
    assert desk.store.last_position() == head and desk.study().protocol_version == 3


def test_a_different_text_loaded_after_the_review_is_refused(
        db_url: str, tmp_path: Path) -> None:
    desk = build(db_url)
    path = tmp_path / "v3-a.toml"
    path.write_text(candidate_text(), encoding="utf-8")
    reviewed = preview_of(desk.store, str(path)).digest  # file A, not loaded yet
    other = candidate_text(windows={"D14": 0, "D28": 1, "D60": 3})  # file B, the same version
    desk.send(ADMIN, M.LoadProtocol(other, "v3-b.toml"))
    assert preview_of(desk.store, "3").digest != reviewed
    refused(desk, ADMIN, M.AmendProtocol(3, reviewed), "preview_changed")
    # and the optional policy does not let a wrong digest through either
    desk.send(ADMIN, M.SetAmendmentReview(False))
    refused(desk, ADMIN, M.AmendProtocol(3, reviewed), "preview_changed")
    assert desk.study().protocol_version == 2


def test_a_builtin_version_not_loaded_needs_the_review_and_the_digest_reproduces(
        sqlite_url: str) -> None:
    desk = new_study(sqlite_url, FakeClock(), protocol_version=1)
    assert 2 not in desk.study().protocol_texts
    found = preview_of(desk.store, "2")
    assert found.change_count > 0  # cap, cohorts, LLDAS visits
    refused(desk, ADMIN, M.AmendProtocol(2), "preview_not_reviewed", "protocol preview 2")
    assert 2 not in desk.study().protocol_texts  # not even the builtin text was loaded
    outcome = desk.send(ADMIN, M.AmendProtocol(2, found.digest))
    event = amended_event(desk, outcome.result.positions)
    assert event.payload["preview"]["reviewed"] is True
    assert preview_of(desk.store, "2", up_to=event.payload["preview"]["position"]).digest \
        == found.digest
    assert desk.study().protocol_version == 2


def test_amending_back_needs_its_own_review(loaded_file: tuple[Desk, Path]) -> None:
    desk, _ = loaded_file
    forward = preview_of(desk.store, "3").digest
    desk.send(ADMIN, M.AmendProtocol(3, forward))
    back = preview_of(desk.store, "2")
    assert back.change_count > 0 and back.digest != forward
    refused(desk, ADMIN, M.AmendProtocol(2), "preview_not_reviewed")
    refused(desk, ADMIN, M.AmendProtocol(2, forward), "preview_changed")
    refused(desk, ADMIN, M.AmendProtocol(3, forward), "protocol_in_force")
    desk.send(ADMIN, M.AmendProtocol(2, back.digest))
    assert desk.study().protocol_version == 2
    # the digest names consequences, not an occasion: the first review, its consequences
    # unchanged, puts version 3 in force again (docs/amendments.md: "not of the moment")
    assert preview_of(desk.store, "3").digest == forward
    desk.send(ADMIN, M.AmendProtocol(3, forward))
    assert desk.study().protocol_version == 3


def test_the_policy_back_to_required_applies_again(loaded_file: tuple[Desk, Path]) -> None:
    desk, _ = loaded_file
    desk.send(ADMIN, M.SetAmendmentReview(False))
    desk.send(ADMIN, M.SetAmendmentReview(True))
    refused(desk, ADMIN, M.AmendProtocol(3), "preview_not_reviewed")


# --- the digest -------------------------------------------------------------------------------


def test_the_digest_ignores_unrelated_events_and_follows_the_consequences(
        loaded_file: tuple[Desk, Path]) -> None:
    desk, _ = loaded_file
    first = preview_of(desk.store, "3")
    desk.add_user("nina", "coordinator", "PKU3")
    desk.send(ADMIN, M.SetLockoutPolicy(7))
    desk.send(ADMIN, M.SetAmendmentReview(False))
    desk.send(ADMIN, M.SetAmendmentReview(True))
    later = preview_of(desk.store, "3")
    assert later.position > first.position and later.digest == first.digest
    # S-001 leaves the study: it will not follow version 3, its deviations are no consequence
    desk.send(COORDINATOR, M.TakeOffStudy("S-001", "investigator_decision"))
    gone = preview_of(desk.store, "3")
    assert gone.digest != first.digest
    assert gone.to_json()["subjects_changed"] == 0
    refused(desk, ADMIN, M.AmendProtocol(3, first.digest), "preview_changed")
    # --now moves the tasks at that time only, never the digest
    at = preview_of(desk.store, "3", now=datetime.fromisoformat("2026-01-01T00:00:00+00:00"))
    assert at.digest == gone.digest


# --- the CLI ----------------------------------------------------------------------------------


def cli(url: str, *argv: str, user: str | None = None) -> tuple[int, str, str]:
    from cli.app import run

    login = [] if user is None else ["--user", user, "--password-stdin"]
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", url, *login, *argv], stdout=out, stderr=err,
                 stdin=io.StringIO(PASSWORD + "\n"), environ={})
    return status, out.getvalue(), err.getvalue()


def test_cli_malformed_reviewed_is_one_clear_sentence_and_writes_nothing(
        loaded_file: tuple[Desk, Path]) -> None:
    desk, _ = loaded_file
    url, head = url_of(desk), desk.store.last_position()
    digest = preview_of(desk.store, "3").digest
    for bad in ("abc", "g" * 64, digest[:63], digest + "0", ""):
        status, out, err = cli(url, "protocol", "amend", "3", "--reviewed", bad, user=ADMIN)
        assert status == 2, (bad, status, out, err)
        assert "64-character digest" in err and len(err.strip().splitlines()) == 1, err
    # the message normalises the digest as the CLI passes it (copied in upper case, padded)
    assert M.AmendProtocol(3, f" {digest.upper()} ").reviewed == digest
    with pytest.raises(InvalidInput):
        M.AmendProtocol(3, "z" * 64)
    assert desk.store.last_position() == head and desk.study().protocol_version == 2
    # the CLI takes the digest as copied, upper case or padded
    status, out, err = cli(url, "protocol", "amend", "3", "--reviewed",
                           f" {digest.upper()} ", user=ADMIN)
    assert status == 0, err
    assert desk.study().protocol_version == 3


def test_cli_preview_writes_nothing_and_moves_no_read_model(
        loaded: tuple[Desk, Path], tmp_path: Path) -> None:
    desk, _ = loaded
    url = url_of(desk)
    engine = create_store_engine(url)
    Runner(engine, EventStore(engine)).catch_up()
    desk.send(ADMIN, M.AddSite("THIRD", "UTC"))  # the read models now lag by one event
    before, head = tables(engine), desk.store.last_position()
    other = tmp_path / "v4.toml"
    other.write_text(candidate_text(version=4), encoding="utf-8")
    for target in ("3", str(other), "1"):
        for extra in ((), ("--as-of", f"@{head - 1}"), ("--now", "2025-06-01T00:00:00Z")):
            status, out, err = cli(url, "--json", "protocol", "preview", target, *extra)
            assert status == 0 and '"digest"' in out, (target, extra, err)
    assert desk.store.last_position() == head and tables(engine) == before
    assert 4 not in desk.study().protocol_texts
    engine.dispose()


# --- shadow read models -----------------------------------------------------------------------


def checkpoints(engine: Engine) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        return {r.name: (int(r.version), int(r.position))
                for r in conn.execute(select(registry.LIVE.checkpoints)).all()}


def test_promote_twice_without_a_shadow_or_from_an_older_version(loaded: tuple[Desk, Path]
                                                                   ) -> None:
    desk, _ = loaded
    engine = desk.executor.app.engine
    runner = Runner(engine, desk.store)
    runner.catch_up()
    live = tables(engine)
    with pytest.raises(RuleViolation) as caught:  # no shadow yet: nothing touched
        shadow.promote(engine, desk.store)
    assert caught.value.rule == "no_shadow_build" and tables(engine) == live
    shadow.build(engine, desk.store)
    # the shadow of one projection as an older code left it: a version behind, rows dropped
    name = registry.NAMES[-1]
    (first,) = shadow.SHADOW.projections[name][:1]
    with engine.begin() as conn:
        conn.execute(shadow.SHADOW.checkpoints.update()
                     .where(shadow.SHADOW.checkpoints.c.name == name)
                     .values(version=registry.VERSIONS[name] - 1))
        conn.execute(first.delete())
    desk.send(ADMIN, M.AddSite("THIRD", "UTC"))  # and the log moved on since the build
    shadow.promote(engine, desk.store)
    head = desk.store.last_position()
    assert checkpoints(engine) == {n: (registry.VERSIONS[n], head) for n in registry.NAMES}
    promoted = tables(engine, stamped=False)
    runner.rebuild()  # what the live tables would hold, folded afresh (at a later second)
    assert tables(engine, stamped=False) == promoted
    promoted = tables(engine)
    with pytest.raises(RuleViolation) as caught:  # a second promote: the shadow is gone
        shadow.promote(engine, desk.store)
    assert caught.value.rule == "no_shadow_build" and tables(engine) == promoted
    assert {s["state"] for s in runner.status()} == {"ok"}


# --- todo on the demo ---------------------------------------------------------------------------


def test_todo_on_the_demo_equals_each_subjects_own_fold(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    url = copy_demo(tmp_path_factory, tmp_path_factory.mktemp("attacks") / "demo.db")
    engine = create_store_engine(url)
    store = EventStore(engine)
    Runner(engine, store).catch_up()
    study = fold_study(store.read_stream("study"))
    assert any(e.type == T.PROTOCOL_AMENDED for e in store.read_stream("study"))
    (last,) = store.read_all(after=store.last_position() - 1)
    recorded = datetime.fromisoformat(last.recorded_at.replace("Z", "+00:00"))
    view = open_view(engine, store)
    subjects = [row["subject"] for row in view.subjects()]
    assert subjects
    for now in (recorded, recorded + timedelta(days=3, hours=5), recorded + timedelta(days=60)):
        expected = []
        for subject in subjects:
            events = store.read_stream(subject)
            expected += subject_tasks(study, fold_subject(subject, events), now, events)
        got = todo_list(view, store, now)
        assert got == [task.to_json() for task in sort_tasks(expected)], now
        assert got  # the demo has open tasks to compare
    engine.dispose()
