"""The one door for writes: authenticate, authorise, decide, append.

Every write of every caller (the CLI, the scheduler, the demo, the tests) is
`Executor.execute(message, credential)`:

1. authenticate the credential against the study (a password, a session, or a personal
   PostgreSQL login the database authenticated); a failed attempt is an event, and enough of
   them lock the account;
2. return the first result when the command id was carried out before (the idempotency hash is
   the SHA-256 of the actor and the message's canonical JSON);
3. authorise: the actor is active, its role may send the message (workflow/commands/roles.py),
   a coordinator or investigator writes only subjects of their site, a password an admin set
   is changed before anything else, a signature or credential change brings the password;
4. load what the message needs (the study, the subject's stream folded, its queries, its
   reminders) and the site's today from the executor's clock;
5. decide (a pure function, workflow/commands/handlers.py), refuse any subject write while the
   study is locked;
6. append at the loaded versions, with the credential changes the decision asks for in the same
   transaction, refused by the store if the clock is ahead of the database's; retry from 4 on a
   conflict.

Nothing else in the product appends to the log (a test reads the source to prove it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog

if TYPE_CHECKING:
    from workflow.amendment import Preview

from events.envelope import NewEvent, RecordedEvent, canonical_json
from events.errors import (
    ClockAhead,
    ConcurrencyConflict,
    EventStoreError,
    IdempotencyMismatch,
    IntegrityFailure,
)
from events.store import (
    AppendContext,
    AppendResult,
    LockedAppend,
    Statement,
    StreamAppend,
    Unchanged,
)
from events.streams import STUDY_STREAM, reminders_stream
from workflow import event_types as T
from workflow import identity
from workflow.bootstrap import App
from workflow.commands import messages as M
from workflow.commands.decision import (
    ClearAttempts,
    Context,
    Decision,
    EndSessions,
    SetPassword,
    Write,
    context_for,
)
from workflow.commands.handlers import decide
from workflow.commands.roles import PERMISSIONS, change_first, only
from workflow.errors import InvalidInput, RuleViolation
from workflow.identity import (
    UNAUTHENTICATED,
    Credential,
    DatabaseLogin,
    Password,
    SessionToken,
)
from workflow.monitoring import MonitoringState, fold_monitoring, monitoring_onto
from workflow.study import Study, User, apply_study, load_study
from workflow.subject import SubjectState, fold_onto, fold_subject, subject_streams

CONFLICT_RETRIES: Final = 5
# The first OPTIMISTIC_TRIES tries decide without the append lock and append at the versions
# read (after a second conflict in a row, first waiting a random moment of up to 2^attempt ms,
# so writers racing for one stream fall out of step); the next ones decide holding the
# append lock (`EventStore.append_under_lock`), so a writer that keeps losing the race for a
# busy stream (the study's, at enrolments) is never starved.
OPTIMISTIC_TRIES: Final = 3
CONFLICT_BACKOFF_MAX_S: Final = 0.02
# Study events no decision of another stream depends on: enrolment places (read only by the
# decisions that take or free one, which write the study stream at the version they read)
# and the count of failed attempts (a lock is its own event). Appended meanwhile, they do not
# make a decision stale, so concurrent commands on other subjects do not conflict over them.
UNREAD_STUDY_EVENTS: Final = frozenset({
    T.ENROLMENT_PLACE_TAKEN, T.ENROLMENT_PLACE_FREED, T.AUTHENTICATION_FAILED,
    T.FAILED_ATTEMPTS_RESET,
})
# Command ids the product derives itself, so that every process derives the same one for the
# same act and it is done once: an account's lock and an admin lock's lapse (the executor's own
# appends, never a message's), a reminder issued or cancelled (by the scheduler, with that
# message). Given with any other message, such an id is refused before any work: taken first,
# it would have made the act a "repeat" of something else and silenced it (a lock never
# recorded, a reminder never issued).
ACCOUNT_LOCKED_ID: Final = "account-locked-"  # + name, the lock's number
LOCK_LAPSED_ID: Final = "lock-lapsed-"  # + name, the lock's position
REMINDER_ISSUE_ID: Final = "reminder-issue-"  # + the reminder's id (projections/scheduler.py)
REMINDER_CANCEL_ID: Final = "reminder-cancel-"  # + the reminder's id
# prefix -> the messages that may carry it (none: only the executor's own appends), and what
RESERVED_COMMAND_IDS: Final[dict[str, tuple[tuple[type[M.Message], ...], str]]] = {
    ACCOUNT_LOCKED_ID: ((), "an account locked after failed attempts"),
    LOCK_LAPSED_ID: ((), "an admin's lock lapsed"),
    REMINDER_ISSUE_ID: ((M.IssueReminder,), "the scheduler's reminders"),
    REMINDER_CANCEL_ID: ((M.CancelReminder,), "the scheduler's cancelled reminders"),
}
SUBJECTS_KEPT: Final = 1024  # subjects' streams an executor keeps folded (least recent out)
ADMIN_LOCK: Final = timedelta(minutes=15)  # an admin's lock lapses: no permanent lock-out

log = structlog.get_logger("trialflow.executor")
_UNREAD: Final = object()  # a session row not read ahead (`Executor._read_ahead`)


@dataclass(frozen=True)
class Outcome:
    result: AppendResult
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Stream:
    """A subject's stream as read, and its folds (never changed: a newer read makes another)."""

    events: tuple[RecordedEvent, ...]
    state: SubjectState
    review: MonitoringState


@dataclass(frozen=True)
class _Ahead:
    """What `Executor._read_ahead` read for a command's first try."""

    study: list[RecordedEvent]  # the study's events since the kept fold
    subject: list[RecordedEvent] | None  # a subject command's events since its kept fold
    subject_since: int  # the version of that kept fold (0: none was kept)
    session: object  # the session token's row (None: no such session), or _UNREAD


@dataclass
class _Loaded:
    context: Context
    versions: dict[str, int] = field(default_factory=dict)


class Executor:
    """The one writer. `clock` is the application's "now" (default the app's); a write decided
    at a "now" ahead of the database's clock is refused by the store."""

    def __init__(self, app: App, *, clock: Callable[[], datetime] | None = None,
                 retries: int = CONFLICT_RETRIES) -> None:
        self.app = app
        self.store = app.store
        self.engine = app.engine
        self.clock = clock or app.clock
        self.kdf = app.kdf
        self.retries = retries
        self.last_outcome: Outcome | None = None  # for a caller interrupted after the commit
        self._login: tuple[str | None] | None = None
        self._os_user: tuple[str | None] | None = None
        self._sqlite = app.engine.dialect.name == "sqlite"
        self._study: Study | None = None  # the study stream folded, at its version
        self._study_lock = threading.RLock()
        # subject -> its stream as read and folded (least recently used first)
        self._subjects: OrderedDict[str, _Stream] = OrderedDict()

    def study(self, read: Sequence[RecordedEvent] | None = None) -> Study:
        """The study as its stream stands now: the folded stream this executor keeps, brought
        up to date with the events appended since (one indexed read, usually of nothing, and
        only those events folded), so a command's cost does not grow with the study stream.
        The object is this executor's and changes with the next call (an executor serves one
        thread at a time). It is only a cache: every append it decides is refused (and
        retried on a fresh read) when the stream moved on in between (`unchanged`, checked
        under the append lock). `read`: the events since, read already (`_read_ahead`)."""
        with self._study_lock:
            if self._study is None:
                self._study = load_study(self.store)
                return self._study
            try:
                since = self._study.version
                for event in read if read is not None else self.store.read_stream(
                        STUDY_STREAM, after_version=since):
                    if event.version > self._study.version:
                        apply_study(self._study, event)
            except BaseException:
                self._study = None  # half applied: fold it afresh next time
                raise
            return self._study

    # ------------------------------------------------------------------ the door
    def execute(self, message: M.Message, credential: Credential, *,
                command_id: str | None = None) -> Outcome:
        if command_id is not None:
            _check_command_id(command_id, message)
        if isinstance(message, M.InitialiseStudy):
            return self._initialise(message, credential, command_id)
        ahead = self._read_ahead(message, credential)
        study = self.study(ahead.study if ahead is not None else None)
        actor = self._authenticate(credential, study,
                                   ahead.session if ahead is not None else _UNREAD)
        given = command_id is not None  # a new id is no repeat: nothing to look up
        command_id = command_id or self.store.new_id()
        request_hash = self._request_hash(actor.name, message)
        repeat = self._repeat(command_id, request_hash) if given else None
        if repeat is not None:
            return repeat
        hashed: dict[tuple[str, str], tuple[Statement, ...]] = {}
        ahead_box: list[_Ahead | None] = [ahead]

        def prepared(study: Study) -> tuple[LockedAppend, Decision]:
            """Load, decide and shape the append (or raise the refusal, or `_Repeated`)."""
            user = self._known(study, actor.name)
            if study.account_locked(user.name, self.clock()):  # locked by a guess meanwhile
                raise _locked(user.name)
            read, ahead_box[0] = ahead_box[0], None  # read ahead for the first try only
            loaded = self._load(message, study, user,
                                (read.subject_since, read.subject)
                                if read is not None and read.subject is not None else None)
            try:
                decision = decide(message, loaded.context, method=credential.method)
            except (RuleViolation, InvalidInput):
                # The load may show this very command, carried out by another process since
                # the check above (a scheduler racing another): that is a repeat, not a
                # refusal. Its row committed with its events, so it is visible now.
                repeat = self._repeat(command_id, request_hash) if given else None
                if repeat is None:
                    raise
                raise _Repeated(repeat) from None
            return LockedAppend(
                self._appends(decision, loaded, credential),
                AppendContext(actor=user.name, role=user.role, site=user.site,
                              command_id=command_id, request_hash=request_hash,
                              acted_at=loaded.context.now),
                self._statements(decision, loaded.context.now, hashed),
                loaded.context.last_position if decision.expects_head else None,
                # the version the decision read (taken at the load, never re-read after it)
                (Unchanged(STUDY_STREAM, loaded.versions[STUDY_STREAM], UNREAD_STUDY_EVENTS),)
            ), decision

        decided: list[Decision] = []

        def build(fresh: Study | None = None) -> LockedAppend:
            spec, decision = prepared(fresh or self.study())
            decided.append(decision)
            return spec

        for attempt in range(self.retries):
            try:
                if attempt < OPTIMISTIC_TRIES:
                    spec = build(study if attempt == 0 else None)
                    result = self.store.append_streams(
                        spec.appends, spec.context, also=spec.also,
                        expected_last_position=spec.expected_last_position,
                        unchanged=spec.unchanged)
                else:  # lost the race too often: decide again holding the append lock
                    result = self.store.append_under_lock(build)
            except _Repeated as repeated:
                return repeated.outcome
            except ConcurrencyConflict:
                if attempt == self.retries - 1:
                    raise
                if 0 < attempt < OPTIMISTIC_TRIES:
                    time.sleep(random.uniform(0, min(CONFLICT_BACKOFF_MAX_S,
                                                     2 ** attempt / 1000)))
                continue
            except ClockAhead as error:
                raise _clock_refusal(error) from None
            return self._done(Outcome(result, _summary(decided[-1], result)))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ sessions and checks
    def authenticate(self, credential: Credential) -> User:
        """The active user a credential proves (failed attempts recorded), for callers that
        check before they work (an export, a scheduler pass)."""
        study = self.study()
        user = self._known(study, self._authenticate(credential, study).name)
        if not user.active:
            raise RuleViolation(f"User {user.name} is deactivated and may not write.",
                                rule="user_deactivated", field="user")
        return user

    @staticmethod
    def may_send(user: User, kind: type[M.Message]) -> None:
        """Refuse (rule `role`) a role that may never send messages of this type."""
        roles = PERMISSIONS[kind].roles
        if user.role not in roles:
            raise RuleViolation(f"User {user.name} ({user.role}) may not run `{kind.command}`: "
                                f"only {only(roles)} may.", rule="role", field="user")

    def login(self, credential: Password, hours: float) -> tuple[str, datetime]:
        """A session token for the proven user (shown once; the database keeps its SHA-256)."""
        if not isinstance(credential, Password):
            raise RuleViolation("Logging in needs the password.", rule="authentication_required",
                                field="password")
        user = self.authenticate(credential)
        if user.service:
            raise RuleViolation(f"Service account {user.name} authenticates with its secret at "
                                "every pass; it has no sessions.", rule="role", field="user")
        study = self.study()  # again: a lock by a parallel guess holds
        if study.account_locked(user.name, self.clock()):
            raise _locked(user.name)
        if user.name in study.temporary_passwords:
            raise change_first(user.name)
        if study.failed_attempts.get(user.name):  # signed in: the count starts again
            self.store.append(STUDY_STREAM, None, [NewEvent(T.FAILED_ATTEMPTS_RESET, {
                "name": user.name, "failed_attempts": study.failed_attempts[user.name]})],
                AppendContext(actor=user.name, role=user.role, site=user.site))
        return identity.start_session(self.engine, user.name, self.clock(), hours)

    def logout(self, credential: Credential) -> int:
        """End every session of the proven user; the number ended."""
        user = self.authenticate(credential)
        return identity.end_sessions(self.engine, user.name)

    def check_clock(self, now: datetime) -> None:
        """Refuse a write's "now" ahead of the database's clock (before any work is done)."""
        from events.store import CLOCK_TOLERANCE

        store_now = self.store.database_time()
        if now > store_now + CLOCK_TOLERANCE:
            raise _clock_refusal(ClockAhead(now, store_now))

    def database_login(self) -> str | None:
        """The PostgreSQL login of this engine (`session_user`), None on SQLite; read once."""
        if self._login is None:
            login = None
            if self.engine.dialect.name == "postgresql":
                from events.translate import driver_connection

                with driver_connection(self.engine) as driver:
                    login = str(driver.execute("SELECT session_user").fetchone()[0])
                    driver.commit()
            self._login = (login,)
        return self._login[0]

    # ------------------------------------------------------------------ authentication
    def _authenticate(self, credential: Credential, study: Study,
                      session: object = _UNREAD) -> User:
        """The user `credential` proves. `session`: a session token's row as read ahead
        (`_read_ahead`: a `SessionRow`, or None when no session has that token), else
        `_UNREAD` (read it now)."""
        now = self.clock()
        login = self.database_login()
        personal = login if login is not None and login in study.users else None
        if isinstance(credential, DatabaseLogin):
            if personal is None or credential.name != personal:
                raise RuleViolation(f"The database login {login} is not the user "
                                    f"{credential.name} of this study.",
                                    rule="identity_mismatch", field="user")
            if study.account_locked(personal, now):
                raise _locked(personal)
            return study.users[personal]
        if personal is not None and credential.name != personal:
            raise RuleViolation(f"The database login is {personal}, so it may not act as "
                                f"{credential.name}.", rule="identity_mismatch", field="user")
        if personal is not None:  # the credentials are the application's to check
            raise RuleViolation(f"User {personal} is proven by the database login itself; a "
                                "signature, a password change or a session needs the password, "
                                "which only the application's database login checks: use it.",
                                rule="application_login_required", field="password")
        name = credential.name
        user = study.users.get(name)
        tries = None
        if isinstance(credential, Password):
            lapsed = study.lock_lapsed(name, now)
            if lapsed is not None:  # an admin's timed lock is over: lift it, count afresh
                study = self._lift_lapsed_lock(name, lapsed)
            # counted before it is checked: N guesses at once get at most the limit checked
            tries = identity.claim_attempt(self.engine, name)
        if user is not None and (study.account_locked(name, now) or (
                tries is not None and not user.service and tries > study.max_failed_attempts)):
            self._record_failure(study, name, credential.method, "account_locked", tries, now)
            raise _locked(name)
        if not self._verify(credential, user, session):
            reason = "unknown_user" if user is None else "wrong_" + (
                "password" if isinstance(credential, Password) else "session")
            self._record_failure(study, name, credential.method, reason, tries, now)
            what = "password" if isinstance(credential, Password) else "session token"
            raise RuleViolation(f"User {name} could not be authenticated: the user name or the "
                                f"{what} is wrong.", rule="authentication_failed",
                                field="password" if isinstance(credential, Password)
                                else "session")
        assert user is not None
        if tries is not None:
            identity.clear_attempts(self.engine, name)
        return user

    def _verify(self, credential: Password | SessionToken, user: User | None,
                session: object = _UNREAD) -> bool:
        if isinstance(credential, Password):
            stored = (identity.stored_credential(self.engine, credential.name)
                      if user is not None else None)
            return identity.matches(stored, credential.secret.value, self.kdf)
        row = identity.session_of(self.engine, credential.token.value) if session is _UNREAD \
            else session
        assert row is None or isinstance(row, identity.SessionRow)
        if row is None or row.name != credential.name or user is None:
            return False
        now = self.clock()
        if row.expires_at <= now:
            raise RuleViolation(f"The session of user {credential.name} expired at "
                                f"{row.expires_at.isoformat()}; run `trialflow login` again.",
                                rule="session_expired", field="session")
        return True

    def _record_failure(self, study: Study, name: str, method: str, reason: str,
                        tries: int | None, now: datetime) -> None:
        """`AuthenticationFailed` in the study stream (at any version: an attempt is never
        lost to a conflict); and, when the password checks counted for a person reach the
        limit, `AccountLocked` (once per lock: its command id names the lock) with the
        account's sessions ended in the same transaction. An admin's lock lapses after
        ADMIN_LOCK, so nobody can lock every admin out for good; a service account (whose
        secret is generated, not guessable) is never locked."""
        context = AppendContext(actor=UNAUTHENTICATED, role="none")
        try:
            self.store.append(STUDY_STREAM, None, [NewEvent(T.AUTHENTICATION_FAILED, {
                "name": name, "method": method, "reason": reason, "login": self._who()})],
                context)
            user = study.users.get(name)
            if user is None or user.service or tries is None or \
                    tries < study.max_failed_attempts or study.account_locked(name, now):
                return
            until = (now + ADMIN_LOCK).isoformat() if user.role == "admin" else None
            lock = NewEvent(T.ACCOUNT_LOCKED, {"name": name,
                                               "failed_attempts": study.max_failed_attempts,
                                               "until": until})
            with contextlib.suppress(IdempotencyMismatch):  # another attempt locked it first
                self.store.append_streams(
                    [StreamAppend(STUDY_STREAM, None, [lock])],
                    AppendContext(actor=UNAUTHENTICATED, role="none", command_id=(
                        f"{ACCOUNT_LOCKED_ID}{name}-{study.locks.get(name, 0)}")),
                    also=identity.end_sessions_statements(name, sqlite=self._sqlite))
        except EventStoreError as error:  # a read-only or full database: refused all the same
            log.warning("failed attempt not recorded", name=name, error=str(error))

    def _lift_lapsed_lock(self, name: str, position: int) -> Study:
        """Record that an admin's timed lock lapsed (once: the command id names the lock),
        the count of failed checks cleared with it."""
        with contextlib.suppress(IdempotencyMismatch):  # lifted by another attempt
            self.store.append_streams(
                [StreamAppend(STUDY_STREAM, None, [NewEvent(
                    T.ACCOUNT_UNLOCKED, {"name": name, "lapsed": True},
                    reason=f"the lock of {ADMIN_LOCK} was over")])],
                AppendContext(actor=UNAUTHENTICATED, role="none",
                              command_id=f"{LOCK_LAPSED_ID}{name}-{position}"),
                also=identity.clear_attempts_statements(name, sqlite=self._sqlite))
        return self.study()

    def _who(self) -> dict[str, str | None]:
        """From which login an attempt came: the operating-system account, the database's."""
        if self._os_user is None:  # looked up once (the passwd database, about 30 µs)
            self._os_user = (_os_user(),)
        try:
            database = self.database_login()
        except EventStoreError:
            database = None
        return {"os_user": self._os_user[0], "database_login": database}

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _known(study: Study, name: str) -> User:
        user = study.users.get(name)
        if user is None:
            raise RuleViolation(f"User {name} is not a user of this study.",
                                rule="unknown_user", field="user")
        return user

    def _load(self, message: M.Message, study: Study, user: User,
              read: tuple[int, Sequence[RecordedEvent]] | None = None) -> _Loaded:
        """Read what `message` needs (I/O only; the context is a pure fold of it). `read`: the
        subject's events after a version, read ahead (`_read_ahead`)."""
        now = self.clock()
        origin = self._who()
        versions = {STUDY_STREAM: study.version}
        subject = None
        if message.loads == "subject":
            subject = str(getattr(message, "subject"))  # noqa: B009 (a SubjectMessage)
        elif message.loads == "query":
            assert isinstance(message, M.QueryMessage)
            subject = self._subject_of_query(message.query_position)
        if subject is not None:
            kept = self._subject_stream(subject, read if message.loads == "subject" else None)
            versions[subject] = kept.state.version
            return _Loaded(context_for(message.loads, study, user, now, subject=subject,
                                       events=kept.events, origin=origin,
                                       folded=(kept.state, kept.review)), versions)
        if message.loads == "reminders":
            assert isinstance(message, M.ReminderMessage)
            stream = reminders_stream(message.subject)
            reminders = self.store.read_stream(stream)
            versions[stream] = reminders[-1].version if reminders else 0
            return _Loaded(context_for(message.loads, study, user, now, reminders=reminders,
                                       origin=origin),
                           versions)
        if message.loads == "amendment":
            assert isinstance(message, M.AmendProtocol)
            head = self.store.last_position()
            return _Loaded(context_for(message.loads, study, user, now,
                                       amendment=self._amendment(study, message.version, head),
                                       last_position=head, origin=origin), versions)
        if message.loads == "template":
            assert isinstance(message, M.CopySubjects)
            last = self.store.last_position()
            return _Loaded(context_for(message.loads, study, user, now,
                                       template=self.store.read_stream(message.template),
                                       last_position=last, origin=origin), versions)
        return _Loaded(context_for(message.loads, study, user, now, origin=origin), versions)

    def _amendment(self, study: Study, version: int, head: int) -> Preview | None:
        """The preview of putting `version` in force, over every subject stream at the log's
        `head` (None when the version cannot be loaded: the decision says why). The decision
        expects the log still at `head` when it appends: an event in between makes the command
        conflict and be previewed and decided again."""
        from workflow.amendment import candidate_of, preview

        try:
            candidate = candidate_of(study, version)
        except RuleViolation:
            return None
        return preview(study, candidate, subject_streams(self.store, head), head)

    def _read_ahead(self, message: M.Message, credential: Credential) -> _Ahead | None:
        """What a command's first try will read, read together (one round trip on
        PostgreSQL instead of up to three): the study's events since the kept fold, a session
        token's row, a subject command's events since its kept fold. None on the first
        command (the study is folded whole) or when there is nothing to put together."""
        if self._study is None:
            return None
        subject = str(getattr(message, "subject")) if message.loads == "subject" else None  # noqa: B009
        token = credential.token.value if isinstance(credential, SessionToken) else None
        if subject is None and token is None:
            return None
        versions = [(STUDY_STREAM, self._study.version)]
        since = 0
        if subject is not None:
            with self._study_lock:
                cached = self._subjects.get(subject)
            since = cached.state.version if cached is not None else 0
            versions.append((subject, since))
        also = [identity.session_query(self.engine, token)] if token is not None else []
        streams, rows = self.store.read_streams_since(versions, also=also)
        return _Ahead(streams[0], streams[1] if subject is not None else None, since,
                      identity.session_from(rows[0]) if token is not None else _UNREAD)

    def _subject_stream(self, subject: str,
                        read: tuple[int, Sequence[RecordedEvent]] | None = None) -> _Stream:
        """The subject's stream read and folded, from the streams this executor keeps brought
        up to date (one indexed read of the events since; a fold of those only). A cache:
        the append it leads to expects the version read, so a stream that moved on is a
        conflict, retried on a fresh read."""
        with self._study_lock:
            cached = self._subjects.get(subject)
        since = cached.state.version if cached is not None else 0
        # events read ahead after exactly the version kept now, else read again (the fold
        # moved on, or was let go, since they were read)
        newer = read[1] if read is not None and read[0] == since else None
        if cached is None:
            events = tuple(newer if newer is not None else self.store.read_stream(subject))
            stream = _Stream(events, fold_subject(subject, events),
                             fold_monitoring(subject, events))
        else:
            if newer is None:
                newer = self.store.read_stream(subject, after_version=since)
            stream = cached if not newer else _Stream(
                (*cached.events, *newer), fold_onto(cached.state, newer),
                monitoring_onto(cached.review, newer))
        with self._study_lock:
            self._subjects[subject] = stream
            self._subjects.move_to_end(subject)
            while len(self._subjects) > SUBJECTS_KEPT:
                self._subjects.popitem(last=False)
        return stream

    def _subject_of_query(self, number: int) -> str:
        found = list(self.store.read_all(after=number - 1, up_to=number))
        if not found or found[0].type != T.QUERY_OPENED:
            raise InvalidInput(f"There is no query Q-{number}; `trialflow queries` lists them.",
                               field="query")
        return found[0].stream_id

    # ------------------------------------------------------------------ appending
    def _appends(self, decision: Decision, loaded: _Loaded,
                 credential: Credential) -> list[StreamAppend]:
        study, actor = loaded.context.study, loaded.context.actor
        writes = list(decision.writes)
        if study.failed_attempts.get(actor.name) and isinstance(credential, Password):
            reset = NewEvent(T.FAILED_ATTEMPTS_RESET, {
                "name": actor.name, "failed_attempts": study.failed_attempts[actor.name]})
            writes = _with_study_event(writes, reset)
        appends = []
        for write in writes:
            if write.new:
                expected = 0
            else:
                assert write.stream in loaded.versions, f"{write.stream} was not loaded"
                expected = loaded.versions[write.stream]
            appends.append(StreamAppend(write.stream, expected, write.events))
        return appends

    def _statements(self, decision: Decision, now: datetime,
                    hashed: dict[tuple[str, str], tuple[Statement, ...]]
                    ) -> tuple[Statement, ...]:
        out: list[Statement] = []
        for change in decision.credentials:
            if isinstance(change, SetPassword):
                key = (change.name, change.secret.value)
                if key not in hashed:  # hashed once, whatever the retries
                    hashed[key] = identity.password_statements(
                        change.name, change.secret.value, now, service=change.service,
                        sqlite=self._sqlite, kdf=self.kdf)
                out.extend(hashed[key])
            elif isinstance(change, EndSessions):
                out.extend(identity.end_sessions_statements(change.name, sqlite=self._sqlite))
            elif isinstance(change, ClearAttempts):
                out.extend(identity.clear_attempts_statements(change.name, sqlite=self._sqlite))
        return tuple(out)

    # ------------------------------------------------------------------ the first write
    def _initialise(self, m: M.InitialiseStudy, credential: Credential,
                    command_id: str | None) -> Outcome:
        """The first admin is proven by the password this message sets: whoever may create
        the database creates its first admin. Refused once the study exists."""
        if not isinstance(credential, Password) or credential.name != m.admin or \
                credential.secret != m.password:
            raise RuleViolation(f"The study is initialised with the password of its first "
                                f"admin {m.admin}.", rule="authentication_required",
                                field="password")
        study = load_study(self.store)
        command_id = command_id or self.store.new_id()
        request_hash = self._request_hash(m.admin, m)
        repeat = self._repeat(command_id, request_hash)
        if repeat is not None:
            return repeat
        now = self.clock()
        admin = User(m.admin, "admin", None)
        loaded = _Loaded(context_for(m.loads, study, admin, now, origin=self._who()),
                         {STUDY_STREAM: study.version})
        decision = decide(m, loaded.context)
        try:
            result = self.store.append_streams(
                self._appends(decision, loaded, credential),
                AppendContext(actor=m.admin, role="admin", command_id=command_id,
                              request_hash=request_hash, acted_at=now),
                also=self._statements(decision, now, {}))
        except ClockAhead as error:
            raise _clock_refusal(error) from None
        return self._done(Outcome(result, _summary(decision, result)))

    # ------------------------------------------------------------------ helpers
    def _repeat(self, command_id: str, request_hash: str) -> Outcome | None:
        """The first result when this command id was carried out before (refused when the
        same id came with another request); None when it was not."""
        earlier = self.store.find_command(command_id)
        if earlier is None:
            return None
        if earlier.request_hash != request_hash:
            raise IdempotencyMismatch(command_id)
        positions = earlier.result.positions
        if positions:  # its events carry its id: a row written outside trialflow does not
            first = next(iter(self.store.read_all(after=positions[0] - 1, up_to=positions[0])),
                         None)
            if first is None or first.command_id != command_id:
                raise IntegrityFailure(
                    f"Command id {command_id} is recorded as carried out, but the event at "
                    f"position {positions[0]} is not its own: the commands table was written "
                    "outside trialflow; nothing was written.")
        return self._done(Outcome(earlier.result, {"repeated": True}))

    def _done(self, outcome: Outcome) -> Outcome:
        self.last_outcome = outcome
        return outcome

    @staticmethod
    def _request_hash(actor: str, message: M.Message) -> str:
        return hashlib.sha256(canonical_json({"actor": actor, **message.canonical()})
                              .encode("utf-8")).hexdigest()


def _check_command_id(command_id: str, message: M.Message) -> None:
    """Refuse (rule `command_id_reserved`, exit 2) a command id of RESERVED_COMMAND_IDS given
    with a message other than the one it is reserved for."""
    for prefix, (owners, what) in RESERVED_COMMAND_IDS.items():
        if command_id.startswith(prefix) and not isinstance(message, owners):
            raise InvalidInput(
                f"Command id {command_id!r} is reserved: ids beginning {prefix!r} are "
                f"trialflow's own ({what}); give another --command-id, or none.",
                rule="command_id_reserved", field="command_id")


def _os_user() -> str | None:
    """The operating-system account this process runs as (None where there is none)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        return None


def _summary(decision: Decision, result: AppendResult) -> dict[str, Any]:
    summary = dict(decision.summary)
    for key, (index, shape) in decision.positions.items():
        if index < len(result.positions):
            position = result.positions[index]
            summary[key] = position if shape == "{}" else shape.format(position)
    return summary


def _with_study_event(writes: Sequence[Write], event: NewEvent) -> list[Write]:
    out, added = [], False
    for write in writes:
        if write.stream == STUDY_STREAM and not added:
            write = Write(write.stream, (*write.events, event), write.new)
            added = True
        out.append(write)
    if not added:
        out.append(Write(STUDY_STREAM, (event,)))
    return out


class _Repeated(Exception):
    """Deciding found the command already carried out: its first outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__("repeated")
        self.outcome = outcome


def _locked(name: str) -> RuleViolation:
    return RuleViolation(f"The account of {name} is locked after failed attempts; an admin "
                         f"unlocks it with `trialflow users unlock {name}`.",
                         rule="account_locked", field="user")


def _clock_refusal(error: ClockAhead) -> RuleViolation:
    return RuleViolation(f"The clock of this command ({error.acted_at}) is ahead of the "
                         f"database's ({error.store_now}): a write may not be decided in the "
                         "future (a later --now is for reads), so nothing was written.",
                         rule="clock_ahead", field="now")

