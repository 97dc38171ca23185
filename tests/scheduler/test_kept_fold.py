"""A scheduler process keeps every subject's reminders folded and reads only what was appended
since its last pass (projections/scheduler.py `issued_reminders`): what another scheduler
issued, delivered or cancelled meanwhile is seen, and a database behind the kept fold (an
older copy put in its place) is folded again from the start."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import pytest

from projections import scheduler
from projections.scheduler import issued_reminders
from projections.scheduler import tick as one_pass
from tests.scheduler.study import SUBJECT, local
from tests.support.study import SCHEDULER, SCHEDULER_SECRET, TEST_KDF
from workflow.bootstrap import App, build_app
from workflow.identity import Password, Secret

PROOF = Password(SCHEDULER, Secret(SCHEDULER_SECRET))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Recorder:
    channel = "log"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, message: Mapping[str, Any]) -> None:
        self.sent.append(str(message["id"]))


@pytest.fixture
def two(infused: str) -> Iterator[tuple[App, App]]:
    """Two schedulers' applications (two processes' worth) on one study."""
    apps = (build_app(infused, kdf=TEST_KDF), build_app(infused, kdf=TEST_KDF))
    yield apps
    for app in apps:
        app.engine.dispose()


def test_a_kept_fold_sees_what_another_scheduler_wrote_since(two: tuple[App, App]) -> None:
    first, other = two
    mine, theirs = Recorder(), Recorder()
    start = one_pass(first, PROOF, _at(local("2025-02-06")), [mine])
    assert len(start.issued) == 2 and sorted(mine.sent) == sorted(start.issued)
    # two days later the other scheduler passes first: it issues and delivers what came due
    later = local("2025-02-08")
    theirs_pass = one_pass(other, PROOF, _at(later), [theirs])
    assert theirs_pass.issued and sorted(theirs.sent) == sorted(theirs_pass.issued)
    # this one's kept fold reads the other's reminders and deliveries: nothing to do again
    again = one_pass(first, PROOF, _at(later), [mine])
    assert (again.issued, again.already_issued, again.delivered) == ([], 0, [])
    assert len(mine.sent) == 2
    assert issued_reminders(first.store, [SUBJECT]) == issued_reminders(other.store, [SUBJECT])


def test_a_database_behind_the_kept_fold_is_folded_again(two: tuple[App, App]) -> None:
    app, _ = two
    one_pass(app, PROOF, _at(local("2025-02-06")), [Recorder()])
    before = issued_reminders(app.store, [SUBJECT])
    assert len(before) == 2
    kept = scheduler._folded(app.store)
    kept.position += 1_000  # as if an older copy of the database had been put in its place
    kept.reminders = {}
    assert issued_reminders(app.store, [SUBJECT]) == before
    assert kept.position == app.store.read_prefixed("reminders-")[-1].position


def test_only_the_subjects_asked_for_and_copies_the_caller_owns(two: tuple[App, App]) -> None:
    app, _ = two
    one_pass(app, PROOF, _at(local("2025-02-06")), [])
    assert issued_reminders(app.store, ["S-999"]) == {}
    mine = issued_reminders(app.store, [SUBJECT])
    for reminder in mine.values():
        reminder.delivered["log"] = "changed by the caller"
    assert all("log" not in r.delivered for r in issued_reminders(app.store, [SUBJECT]).values())
