"""Command ids the product derives for its own acts (an account's lock, an admin lock's lapse,
a reminder issued or cancelled) cannot be taken first by a user: given with another message
they are refused before any work (rule `command_id_reserved`), so the act is never silenced as
a "repeat" of something else. Found by an attacker's review: a monitor's query opened with the
id `account-locked-ivan-0` had kept ivan's lock from being recorded and his sessions alive."""

from __future__ import annotations

import io
import json
from datetime import date

import pytest

from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    PASSWORD,
    SCHEDULER_SECRET,
    Desk,
    new_study,
    screen_eligible,
)
from workflow import event_types as T
from workflow import identity
from workflow.commands import messages as M
from workflow.commands.executor import RESERVED_COMMAND_IDS
from workflow.errors import InvalidInput
from workflow.identity import Password, Secret

START = date(2024, 9, 2)
MONITOR = "mona"


@pytest.fixture
def desk(db_url: str) -> Desk:
    return new_study(db_url, FakeClock("2024-09-02T04:00:00+00:00"))


def _reserved(desk: Desk, user: str, message: M.Message, command_id: str) -> None:
    before = desk.store.last_position()
    with pytest.raises(InvalidInput) as caught:
        desk.send(user, message, command_id)
    assert caught.value.rule == "command_id_reserved" and caught.value.field == "command_id"
    assert command_id in caught.value.message
    assert desk.store.last_position() == before  # nothing written, not even an attempt
    assert desk.store.find_command(command_id) is None


def test_a_lock_s_id_taken_first_is_refused_and_the_lock_is_recorded(desk: Desk) -> None:
    screen_eligible(desk, "S-001", START)
    vitals = next(e.position for e in desk.store.read_stream("S-001")
                  if e.type == T.FORM_RECORDED and e.payload["form"] == "vitals")
    token, _ = desk.executor.login(Password(INVESTIGATOR, Secret(PASSWORD)), 8)
    squat = M.OpenQuery("S-001", vitals, "weight_kg", "Please check the source.")
    for command_id in ("account-locked-ivan-0", "lock-lapsed-ada-1"):
        _reserved(desk, MONITOR, squat, command_id)
    for _ in range(5):  # the guesses that lock the account
        with pytest.raises(Exception, match="could not be authenticated"):
            desk.executor.execute(M.ConsentSubject("S-002", START, "2.0"),
                                  Password(INVESTIGATOR, Secret("a-wrong-guess")))
    locks = [e for e in desk.store.read_stream("study") if e.type == T.ACCOUNT_LOCKED]
    assert [e.payload["name"] for e in locks] == [INVESTIGATOR]
    assert locks[0].command_id == "account-locked-ivan-0"
    assert identity.session_of(desk.store.engine, token) is None  # the lock ended them
    # the id is still the monitor's to use for nothing: another id works
    desk.send(MONITOR, squat, "mona-query-1")


def test_a_reminder_s_id_is_only_its_own_message_s(desk: Desk) -> None:
    screen_eligible(desk, "S-001", START)
    for prefix, (owners, _what) in RESERVED_COMMAND_IDS.items():
        _reserved(desk, COORDINATOR, M.ConsentSubject("S-002", START, "2.0"), f"{prefix}x")
        assert all(owner in (M.IssueReminder, M.CancelReminder) for owner in owners)
    # the scheduler's own message with its own id is accepted (tests/scheduler: once each)
    issue = M.IssueReminder("S-001", "visit:D1@2024-09-02", "due", "2024-09-02T09:00:00+08:00",
                            "D1 is due", 0)
    scheduler = desk.executor.execute(issue, Password("scheduler", Secret(SCHEDULER_SECRET)),
                                      command_id="reminder-issue-r1")
    assert scheduler.result.positions and desk.store.find_command("reminder-issue-r1")
    # nor may the scheduler's reminder id carry another of its messages
    with pytest.raises(InvalidInput):
        desk.executor.execute(issue, Password("scheduler", Secret(SCHEDULER_SECRET)),
                              command_id="reminder-cancel-r1")


def test_the_cli_refuses_a_reserved_id_with_exit_2_and_writes_nothing(sqlite_url: str) -> None:
    def call(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        status = run_cli(["--db", sqlite_url, *argv], stdout=out, stderr=err, environ=None)
        return status, out.getvalue()

    assert call("init", "--admin", ADMIN)[0] == 0
    status, out = call("--user", ADMIN, "--json", "sites", "add", "PKU3", "--tz",
                       "Asia/Shanghai", "--command-id", "reminder-issue-x")
    body = json.loads(out)
    assert status == 2 and body["rule"] == "command_id_reserved", out
    assert "reserved" in body["error"] and "reminder-issue-x" in body["error"]
    status, out = call("--user", ADMIN, "--json", "sites", "list")
    assert status == 0 and "PKU3" not in out
