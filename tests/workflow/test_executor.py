"""The executor's own duties, on SQLite and PostgreSQL: it proves who acts (passwords,
sessions, failed attempts and lockout, temporary passwords), carries out a command id once,
appends at the loaded versions and retries a conflict, refuses a "now" ahead of the database's
clock, and changes a credential only together with its event."""

from __future__ import annotations

import statistics
import time
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from events.errors import IdempotencyMismatch
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    PASSWORD,
    SCHEDULER_SECRET,
    Desk,
    enrol,
    new_study,
    screen_eligible,
)
from workflow import event_types as T
from workflow import identity
from workflow.bootstrap import build_app
from workflow.commands import messages as M
from workflow.commands.executor import Executor
from workflow.errors import RuleViolation
from workflow.identity import DatabaseLogin, Password, Secret, SessionToken

START = date(2024, 9, 2)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2024-09-02T04:00:00+00:00")


@pytest.fixture
def desk(db_url: str, clock: FakeClock) -> Desk:
    return new_study(db_url, clock)


def password(name: str, secret: str = PASSWORD) -> Password:
    return Password(name, Secret(secret))


def refused(rule: str, call: Any, *args: Any, **kwargs: Any) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        call(*args, **kwargs)
    assert caught.value.rule == rule, caught.value.message
    return caught.value


def tail(desk: Desk, after: int) -> list[tuple[str, str]]:
    return [(e.stream_id, e.type) for e in desk.store.read_all(after=after)]


def credential_row(desk: Desk, name: str) -> tuple[str, str] | None:
    row = identity.stored_credential(desk.store.engine, name)
    return None if row is None else (row.salt, row.hash)


# ---------------------------------------------------------------------- who acts
def test_every_write_proves_its_actor(desk: Desk) -> None:
    consent = M.ConsentSubject("S-001", START, "2.0")
    before = desk.store.last_position()
    error = refused("authentication_failed", desk.executor.execute, consent,
                    password(COORDINATOR, "not-the-password"))
    assert "could not be authenticated" in error.message
    unknown = refused("authentication_failed", desk.executor.execute, consent,
                      password("nobody", "not-the-password"))
    assert unknown.message.replace("nobody", COORDINATOR) == error.message  # no name revealed
    refused("authentication_failed", desk.executor.execute, consent,
            SessionToken(COORDINATOR, Secret("a-made-up-token")))
    # each failed attempt is in the log, with the name tried and how; nothing else was written
    failed = [e for e in desk.store.read_all(after=before)]
    assert [(e.stream_id, e.type) for e in failed] == [("study", T.AUTHENTICATION_FAILED)] * 3
    assert [(e.payload["name"], e.payload["method"], e.payload["reason"]) for e in failed] == [
        (COORDINATOR, "password", "wrong_password"), ("nobody", "password", "unknown_user"),
        (COORDINATOR, "session", "wrong_session")]
    assert {e.actor for e in failed} == {"unauthenticated"}
    assert all("os_user" in e.payload["login"] for e in failed)
    assert desk.store.read_stream("S-001") == []
    done = desk.executor.execute(consent, password(COORDINATOR))
    assert [e.actor for e in desk.store.read_stream("S-001")] == [COORDINATOR]
    assert desk.study().failed_attempts == {}  # the success reset cora's count, in the log
    assert tail(desk, done.result.positions[0] - 1) == [
        ("S-001", T.SUBJECT_CONSENTED), ("study", T.FAILED_ATTEMPTS_RESET)]


def test_a_session_proves_its_user_until_it_expires(desk: Desk, clock: FakeClock) -> None:
    token, expires = desk.executor.login(password(COORDINATOR), 8)
    assert expires == clock() + timedelta(hours=8)
    session = SessionToken(COORDINATOR, Secret(token))
    desk.executor.execute(M.ConsentSubject("S-001", START, "2.0"), session)
    refused("authentication_failed", desk.executor.execute,
            M.RecordForm("S-001", "vitals", ("weight_kg=60",), START),
            SessionToken(INVESTIGATOR, Secret(token)))  # someone else's token
    clock.advance(hours=9)
    refused("session_expired", desk.executor.execute,
            M.RecordForm("S-001", "vitals", ("weight_kg=60",), START), session)
    assert len(desk.store.read_stream("S-001")) == 1


def test_logout_needs_the_user_s_credential(desk: Desk) -> None:
    token, _ = desk.executor.login(password(COORDINATOR), 8)
    refused("authentication_failed", desk.executor.logout,
            password(COORDINATOR, "guessing-the-password"))
    assert identity.session_of(desk.store.engine, token) is not None  # still live
    assert desk.executor.logout(SessionToken(COORDINATOR, Secret(token))) == 1
    assert identity.session_of(desk.store.engine, token) is None


def test_failed_attempts_lock_the_account_until_an_admin_unlocks_it(desk: Desk) -> None:
    token, _ = desk.executor.login(password(INVESTIGATOR), 8)
    record = M.ConsentSubject("S-001", START, "2.0")
    for _ in range(5):
        refused("authentication_failed", desk.executor.execute, record,
                password(INVESTIGATOR, "a-wrong-guess-1"))
    study = desk.study()
    assert study.account_locked(INVESTIGATOR) and INVESTIGATOR in study.locked_accounts
    locks = [e for e in desk.store.read_stream("study") if e.type == T.ACCOUNT_LOCKED]
    assert [e.payload for e in locks] == [{"name": INVESTIGATOR, "failed_attempts": 5,
                                           "until": None}]
    assert identity.session_of(desk.store.engine, token) is None  # the lock ended them
    # now even the right password is refused, and the attempt is recorded too
    refused("account_locked", desk.executor.execute, record, password(INVESTIGATOR))
    refused("account_locked", desk.executor.login, password(INVESTIGATOR), 8)
    assert desk.study().authentication_failures == 7
    refused("role", desk.executor.execute, M.UnlockAccount(INVESTIGATOR, "called the site"),
            password(COORDINATOR))
    desk.executor.execute(M.UnlockAccount(INVESTIGATOR, "called the site"), password(ADMIN))
    assert not desk.study().account_locked(INVESTIGATOR)
    token, _ = desk.executor.login(password(INVESTIGATOR), 8)
    for _ in range(4):  # the count started again at the unlock
        refused("authentication_failed", desk.executor.login,
                password(INVESTIGATOR, "a-wrong-guess-1"), 8)
    desk.executor.login(password(INVESTIGATOR), 8)
    assert identity.session_of(desk.store.engine, token) is not None
    refused("not_locked", desk.executor.execute, M.UnlockAccount(INVESTIGATOR, "again"),
            password(ADMIN))


def test_guesses_at_once_get_only_the_limit_checked(desk: Desk) -> None:
    """Each password check is counted before it is made: twelve guesses at the same moment
    get five checks, the other seven are refused as locked without one."""
    import threading

    desk.executor.kdf = identity.DEFAULT_KDF  # slow checks, so the guesses overlap
    desk.executor.execute(M.ChangePassword(COORDINATOR, Secret("a-strong-password-1")),
                          password(COORDINATOR))
    start = threading.Barrier(12)
    rules: list[str] = []

    def guess(n: int) -> None:
        executor = Executor(desk.executor.app)
        start.wait()
        try:
            executor.login(password(COORDINATOR, f"guess-number-{n:04d}"), 8)
        except RuleViolation as error:
            rules.append(str(error.rule))

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(rules) == ["account_locked"] * 7 + ["authentication_failed"] * 5
    failed = [e.payload["reason"] for e in desk.store.read_stream("study")
              if e.type == T.AUTHENTICATION_FAILED]
    assert sorted(failed) == ["account_locked"] * 7 + ["wrong_password"] * 5
    assert desk.study().account_locked(COORDINATOR)
    refused("account_locked", desk.executor.login, password(COORDINATOR,
                                                             "a-strong-password-1"), 8)


def test_a_service_account_is_never_locked_and_an_admin_s_lock_lapses(
        desk: Desk, clock: FakeClock) -> None:
    """Locking the scheduler would silence the safety alerts, and locking every admin would
    freeze the study for good: anyone could do either with wrong passwords. So a service
    account (a generated secret, not guessable) is never locked, and an admin's lock lapses
    after 15 minutes (recorded), which still bounds guessing."""
    for _ in range(8):
        refused("authentication_failed", desk.executor.authenticate,
                password("scheduler", "x" * 43))
    assert desk.executor.authenticate(password("scheduler", SCHEDULER_SECRET)).name == \
        "scheduler"
    for _ in range(5):
        refused("authentication_failed", desk.executor.login,
                password(ADMIN, "a-wrong-guess-1"), 8)
    [lock] = [e for e in desk.store.read_stream("study") if e.type == T.ACCOUNT_LOCKED]
    assert lock.payload["until"] == (clock() + timedelta(minutes=15)).isoformat()
    refused("account_locked", desk.executor.login, password(ADMIN), 8)
    clock.advance(minutes=16)
    desk.executor.login(password(ADMIN), 8)
    lifted = [e for e in desk.store.read_stream("study") if e.type == T.ACCOUNT_UNLOCKED]
    assert [(e.payload, e.actor) for e in lifted] == [
        ({"name": ADMIN, "lapsed": True}, "unauthenticated")]


def test_a_session_neither_counts_nor_clears_password_failures(desk: Desk) -> None:
    """A stolen session must not buy unlimited guesses at the password a signature needs:
    only a right password starts the count again."""
    screen_eligible(desk, "S-001", START)
    token, _ = desk.executor.login(password(INVESTIGATOR), 8)
    session = SessionToken(INVESTIGATOR, Secret(token))
    for _ in range(5):
        desk.executor.execute(M.RecordForm("S-001", "vitals", ("weight_kg=58",), START),
                              session)
        refused("authentication_failed", desk.executor.execute,
                M.Sign("S-001", 26, "reviewed"), password(INVESTIGATOR, "a-wrong-guess-1"))
    assert desk.study().account_locked(INVESTIGATOR)  # five wrong, a session write between each
    for _ in range(3):
        refused("authentication_failed", desk.executor.execute,
                M.RecordForm("S-001", "vitals", ("weight_kg=58",), START),
                SessionToken(COORDINATOR, Secret("a-made-up-token")))
    assert not desk.study().account_locked(COORDINATOR)  # wrong tokens are recorded, not counted


def test_a_database_that_cannot_record_the_attempt_checks_no_password(tmp_path: Any,
                                                                      clock: FakeClock) -> None:
    """On a read-only database a password check could not be counted: none is made, so the
    answer is the same for a right and a wrong password."""
    url = f"sqlite:///{tmp_path / 't.db'}"
    new_study(url, clock).store.engine.dispose()
    read_only = f"sqlite:///file:{tmp_path / 't.db'}?mode=ro&uri=true"
    executor = Executor(build_app(read_only, clock=clock))
    answers = []
    for secret in (PASSWORD, "a-wrong-guess-1"):
        with pytest.raises(Exception) as caught:
            executor.login(password(COORDINATOR, secret), 8)
        answers.append((type(caught.value).__name__, str(caught.value)))
    assert answers[0] == answers[1] and "read-only" in answers[0][1]


def test_the_lockout_limit_is_the_study_s_setting(desk: Desk) -> None:
    desk.executor.execute(M.SetLockoutPolicy(2), password(ADMIN))
    for _ in range(2):
        refused("authentication_failed", desk.executor.login,
                password(COORDINATOR, "a-wrong-guess-1"), 8)
    assert desk.study().account_locked(COORDINATOR)


def test_a_failed_check_takes_as_long_whether_or_not_the_name_exists(db_url: str,
                                                                     clock: FakeClock) -> None:
    """With the production hash parameters, a wrong password for a real user and any password
    for a name that does not exist cost the same work (one scrypt each)."""
    desk = new_study(db_url, clock)
    desk.executor.kdf = identity.DEFAULT_KDF
    desk.executor.execute(M.SetLockoutPolicy(100), password(ADMIN))
    desk.executor.execute(M.ChangePassword(COORDINATOR, Secret("a-strong-password-1")),
                          password(COORDINATOR))  # now hashed with the default parameters

    def timed(name: str) -> float:
        start = time.perf_counter()
        with pytest.raises(RuleViolation):
            desk.executor.login(password(name, "a-wrong-guess-1"), 8)
        return time.perf_counter() - start

    # interleaved, so that a busy spell of a shared machine falls on both sides alike
    pairs = [(timed(COORDINATOR), timed("nobody")) for _ in range(5)]
    known = statistics.median(k for k, _ in pairs)
    unknown = statistics.median(u for _, u in pairs)
    assert known > 0.01 and unknown > 0.01  # both did the scrypt work
    assert 0.5 < known / unknown < 2.0, (known, unknown)


def test_a_password_set_by_an_admin_is_temporary(desk: Desk) -> None:
    desk.executor.execute(M.ChangePassword(INVESTIGATOR, Secret("ada-knows-this-1")),
                          password(ADMIN))
    temporary = password(INVESTIGATOR, "ada-knows-this-1")
    refused("password_change_required", desk.executor.login, temporary, 8)
    screen_eligible(desk, "S-001", START)
    refused("password_change_required", desk.executor.execute, M.ConfirmEligibility("S-001"),
            temporary)
    refused("password_change_required", desk.executor.execute,
            M.Sign("S-001", desk.store.read_stream("S-001")[0].position, "reviewed"), temporary)
    desk.executor.execute(M.ChangePassword(INVESTIGATOR, Secret("only-he-knows-1")),
                          temporary)
    desk.executor.execute(M.Sign("S-001", desk.store.read_stream("S-001")[0].position,
                                 "reviewed"), password(INVESTIGATOR, "only-he-knows-1"))


def test_a_signature_needs_the_password_itself(desk: Desk) -> None:
    screen_eligible(desk, "S-001", START)
    token, _ = desk.executor.login(password(INVESTIGATOR), 8)
    sign = M.Sign("S-001", desk.store.read_stream("S-001")[0].position, "reviewed")
    refused("password_required", desk.executor.execute, sign,
            SessionToken(INVESTIGATOR, Secret(token)))
    signed = desk.executor.execute(sign, password(INVESTIGATOR))
    (event,) = desk.store.read_stream("S-001")[-1:]
    assert event.position == signed.result.positions[0]
    assert event.payload["printed_name"] == INVESTIGATOR


def test_a_database_login_is_accepted_only_where_the_database_proved_it(desk: Desk) -> None:
    if desk.store.engine.dialect.name == "sqlite":
        refused("identity_mismatch", desk.executor.execute,
                M.ConsentSubject("S-001", START, "2.0"), DatabaseLogin(COORDINATOR))
    else:  # the test's login (postgres) is not a user of the study
        refused("identity_mismatch", desk.executor.execute,
                M.ConsentSubject("S-001", START, "2.0"), DatabaseLogin(COORDINATOR))
    assert desk.store.read_stream("S-001") == []


# ---------------------------------------------------------------------- credentials
def test_a_credential_changes_only_with_its_event(desk: Desk) -> None:
    token, _ = desk.executor.login(password(COORDINATOR), 8)
    before_row = credential_row(desk, COORDINATOR)
    before = desk.store.last_position()
    # refused: a coordinator may not set the admin's password; the wrong acting password
    refused("role", desk.executor.execute, M.ChangePassword(ADMIN, Secret("taken-over-123")),
            password(COORDINATOR))
    refused("authentication_failed", desk.executor.execute,
            M.ChangePassword(COORDINATOR, Secret("taken-over-123")),
            password(COORDINATOR, "a-wrong-guess-1"))
    assert credential_row(desk, COORDINATOR) == before_row
    assert credential_row(desk, ADMIN) is not None
    assert [t for _, t in tail(desk, before)] == [T.AUTHENTICATION_FAILED]
    assert identity.session_of(desk.store.engine, token) is not None  # sessions untouched
    changed = desk.executor.execute(M.ChangePassword(COORDINATOR, Secret("a-new-password-1")),
                                    password(COORDINATOR))
    assert credential_row(desk, COORDINATOR) != before_row
    assert identity.session_of(desk.store.engine, token) is None  # a change ends sessions
    events = [e for e in desk.store.read_all(after=before)
              if e.position in changed.result.positions]
    changed, reset = events
    assert (changed.type, reset.type) == (T.CREDENTIALS_CHANGED, T.FAILED_ATTEMPTS_RESET)
    origin = changed.payload.pop("origin")  # who typed it: the OS account, the database login
    assert set(origin) == {"os_user", "database_login"} and origin["os_user"]
    assert changed.payload == {"name": COORDINATOR, "by": COORDINATOR, "temporary": False}
    assert reset.payload == {"name": COORDINATOR, "failed_attempts": 1}
    desk.executor.login(password(COORDINATOR, "a-new-password-1"), 8)


def test_no_secret_reaches_the_log_or_the_command_table(desk: Desk) -> None:
    secret = "a-password-nobody-may-read-1"
    desk.executor.execute(M.ChangePassword(COORDINATOR, Secret(secret)), password(COORDINATOR),
                          command_id="pw-1")
    rows = [str(v) for e in desk.store.read_all() for v in e.envelope().values()]
    assert not any(secret in row or PASSWORD in row for row in rows)
    from events.translate import driver_connection

    with driver_connection(desk.store.engine) as driver:
        commands = [str(r) for r in driver.execute("SELECT * FROM commands").fetchall()]
    assert not any(secret in row for row in commands)
    # the command id names the request without its secret: a repeat appends nothing
    again = desk.executor.execute(M.ChangePassword(COORDINATOR, Secret(secret)),
                                  password(COORDINATOR, secret), command_id="pw-1")
    assert again.result.duplicate


# ---------------------------------------------------------------------- the command itself
def test_a_repeated_command_id_returns_the_first_result(desk: Desk) -> None:
    first = desk.send(COORDINATOR, M.ConsentSubject("S-011", START, "2.0"), "consent-S-011")
    again = desk.send(COORDINATOR, M.ConsentSubject("S-011", START, "2.0"), "consent-S-011")
    assert again.result.positions == first.result.positions and again.result.duplicate
    with pytest.raises(IdempotencyMismatch):
        desk.send(COORDINATOR, M.ConsentSubject("S-011", START, "3.0"), "consent-S-011")
    with pytest.raises(IdempotencyMismatch):  # the same message by someone else
        desk.send(INVESTIGATOR, M.ConsentSubject("S-011", START, "2.0"), "consent-S-011")
    assert len(desk.store.read_stream("S-011")) == 1


def test_a_conflict_is_retried_from_a_fresh_load(desk: Desk, clock: FakeClock,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A place taken between load and append makes the executor reload, not double-book."""
    enrol(desk, "S-001", START, clock)
    screen_eligible(desk, "S-002", START, clock=clock)
    screen_eligible(desk, "S-003", START, clock=clock)
    executor = desk.executor
    original = executor._load
    loads = {"n": 0}

    def load_then_interfere(*args: Any) -> Any:
        loaded = original(*args)
        loads["n"] += 1
        if loads["n"] == 1:  # another investigator enrols S-003 meanwhile
            Executor(executor.app).execute(M.ConfirmEligibility("S-003"),
                                           password(INVESTIGATOR))
        return loaded

    monkeypatch.setattr(executor, "_load", load_then_interfere)
    done = executor.execute(M.ConfirmEligibility("S-002"), password(INVESTIGATOR))
    assert loads["n"] == 2
    assert done.summary["enrolment_order"] == 3
    assert sorted(p.order for p in desk.study().taken_places()) == [1, 2, 3]


def test_a_write_may_not_be_decided_in_the_future(desk: Desk) -> None:
    future = datetime.now().astimezone() + timedelta(days=400)
    ahead = Executor(desk.executor.app, clock=lambda: future)
    before = desk.store.last_position()
    refused("clock_ahead", ahead.execute, M.ConsentSubject("S-001", START, "2.0"),
            password(COORDINATOR))
    refused("clock_ahead", ahead.check_clock, future)
    assert desk.store.last_position() == before
    ahead.check_clock(datetime.now().astimezone())  # the real clock is fine


def test_the_study_is_initialised_once_by_its_first_admin(db_url: str,
                                                          clock: FakeClock) -> None:
    from events.schema import upgrade

    app = build_app(db_url, clock=clock)
    upgrade(app.engine)
    executor = Executor(app)
    first = M.InitialiseStudy(ADMIN, Secret(PASSWORD), Secret(SCHEDULER_SECRET))
    refused("authentication_required", executor.execute, first, password(ADMIN, "other-one-1"))
    refused("authentication_required", executor.execute, first, password("mallory"))
    done = executor.execute(first, password(ADMIN))
    assert [e.type for e in app.store.read_stream("study")] == [
        T.STUDY_INITIALISED, T.USER_ADDED, T.CREDENTIALS_CHANGED, T.CREDENTIALS_CHANGED,
        T.PROTOCOL_LOADED]
    assert done.summary["purpose"] == "study"
    refused("already_initialised", executor.execute,
            M.InitialiseStudy("mallory", Secret("mallory-password"), Secret(SCHEDULER_SECRET)),
            password("mallory", "mallory-password"))
    # the scheduler's secret is its credential (a salted SHA-256 of 32 random bytes)
    stored = identity.stored_credential(app.engine, "scheduler")
    assert stored is not None and stored.scheme == identity.SERVICE_SCHEME
    assert executor.authenticate(password("scheduler", SCHEDULER_SECRET)).role == "scheduler"


def test_subjects_are_copied_only_in_a_demo_study(desk: Desk, clock: FakeClock) -> None:
    enrol(desk, "S-001", START, clock)
    refused("demo_only", desk.send, ADMIN, M.CopySubjects("S-001", ("X-001",), 2, 2))
    assert desk.store.read_stream("X-001") == []


def test_identity_tables_hold_no_plain_secret(desk: Desk) -> None:
    engine = desk.store.engine
    name = identity.table("credentials", sqlite=engine.dialect.name == "sqlite")
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT * FROM {name}").all()
    assert {r.name for r in rows} >= {ADMIN, COORDINATOR, "scheduler"}
    assert not any(PASSWORD in str(tuple(r)) or SCHEDULER_SECRET in str(tuple(r))
                   for r in rows)


def test_a_temporary_password_never_spells_its_user_s_name(desk: Desk,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Random letters may spell a short name, which no password may contain: drawn again."""
    import secrets

    draws = ["xxOLGAxxxxxx", "xxxxxxxxxxxx"]
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n: draws.pop(0))
    desk.actors.add_user(ADMIN, "olga", "monitor", None, "a-fine-password-1")
    assert draws == [] and "olga" in desk.study().users
