"""Decisions of study administration: the study itself, sites, users and their credentials,
account lockout, protocol versions. All write to the `study` stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.envelope import NewEvent
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.commands.decision import (
    ClearAttempts,
    Context,
    Decision,
    EndSessions,
    SetPassword,
    Write,
    decided,
)
from workflow.commands.messages import (
    AddSite,
    AddUser,
    AmendProtocol,
    ChangePassword,
    DeactivateUser,
    InitialiseStudy,
    LoadProtocol,
    SetAmendmentReview,
    SetLockoutPolicy,
    UnlockAccount,
)
from workflow.errors import InvalidInput, RuleViolation
from workflow.identity import check_new_password, check_service_secret
from workflow.protocol import builtin_protocol_text, load_protocol_text, protocol_hash
from workflow.study import SERVICE_ROLES, SITE_ROLES, User

if TYPE_CHECKING:
    from workflow.amendment import Preview

SCHEDULER = "scheduler"  # the service account every study starts with


def initialise(m: InitialiseStudy, c: Context) -> Decision:
    if c.study.version:
        raise RuleViolation("The study is already initialised; add users with `trialflow "
                            "users add`.", rule="already_initialised")
    check_new_password(m.admin, m.password.value)
    check_service_secret(SCHEDULER, m.scheduler_secret.value)
    if m.admin == SCHEDULER:
        raise InvalidInput(f"The first admin may not be named {SCHEDULER}, the service "
                           "account's name.", field="admin")
    text = builtin_protocol_text(m.protocol_version)
    protocol = load_protocol_text(text, f"builtin protocol version {m.protocol_version}")
    events = [
        NewEvent(T.STUDY_INITIALISED, {"name": m.admin, "role": "admin", "site": None,
                                       "purpose": m.purpose}),
        NewEvent(T.USER_ADDED, {"name": SCHEDULER, "role": "scheduler", "site": None}),
        NewEvent(T.CREDENTIALS_CHANGED, {"name": m.admin, "by": m.admin, "temporary": False,
                                          **_origin(c)}),
        NewEvent(T.CREDENTIALS_CHANGED, {"name": SCHEDULER, "by": m.admin, "temporary": False,
                                          **_origin(c)}),
        NewEvent(T.PROTOCOL_LOADED, {"version": protocol.version, "hash": protocol_hash(text),
                                     "content": text, "source": "builtin"}),
    ]
    return decided(STUDY_STREAM, events, {"admin": m.admin, "protocol_version": protocol.version,
                                          "purpose": m.purpose},
                   credentials=[SetPassword(m.admin, m.password),
                                SetPassword(SCHEDULER, m.scheduler_secret, service=True)])


def add_site(m: AddSite, c: Context) -> Decision:
    if m.site in c.study.sites:
        raise RuleViolation(f"Site {m.site} already exists.", rule="site_exists", field="site")
    return decided(STUDY_STREAM, [NewEvent(T.SITE_ADDED, {"site": m.site, "tz": m.tz})],
                   {"site": m.site, "tz": m.tz})


def add_user(m: AddUser, c: Context) -> Decision:
    if m.name in c.study.users:
        raise RuleViolation(f"User {m.name} already exists.", rule="user_exists", field="name")
    if m.role in SITE_ROLES and m.site is None:
        raise InvalidInput(f"A {m.role} needs --site.", field="site")
    if m.site is not None and m.site not in c.study.sites:
        raise RuleViolation(f"Site {m.site} does not exist; add it with `trialflow sites add`.",
                            rule="unknown_site", field="site")
    service = m.role in SERVICE_ROLES
    if service:
        check_service_secret(m.name, m.password.value)
    else:
        check_new_password(m.name, m.password.value)
    payload = {"name": m.name, "role": m.role, "site": m.site}
    changed = NewEvent(T.CREDENTIALS_CHANGED, {"name": m.name, "by": c.actor.name,
                                               "temporary": not service, **_origin(c)})
    return decided(STUDY_STREAM, [NewEvent(T.USER_ADDED, payload), changed],
                   {**payload, "temporary_password": not service},
                   credentials=[SetPassword(m.name, m.password, service=service)])


def deactivate_user(m: DeactivateUser, c: Context) -> Decision:
    user = _existing(c, m.name)
    if not user.active:
        raise RuleViolation(f"User {m.name} is already deactivated.", rule="user_deactivated",
                            field="name")
    if user.role == "admin" and c.study.active_admins() == [m.name]:
        raise RuleViolation(f"User {m.name} is the last active admin and may not be "
                            "deactivated; add another admin first.", rule="last_admin",
                            field="name")
    return decided(STUDY_STREAM, [NewEvent(T.USER_DEACTIVATED, {"name": m.name})],
                   {"name": m.name}, credentials=[])


def change_password(m: ChangePassword, c: Context) -> Decision:
    """Users set their own; an admin sets a person's, which is then temporary (its user must
    change it before any other write). Authorised before anything is touched: the credential
    row changes only with its event, in the executor's one transaction."""
    user = _existing(c, m.name)
    own = c.actor.name == m.name
    if not own and c.actor.role != "admin":
        raise RuleViolation(f"User {c.actor.name} ({c.actor.role}) may not set the password of "
                            f"{m.name}; only an admin or {m.name} may.", rule="role",
                            field="user")
    if user.service:
        if own:
            raise RuleViolation(f"Service account {m.name} may not change its own secret; an "
                                "admin sets a new one.", rule="role", field="user")
        check_service_secret(m.name, m.password.value)
    else:
        check_new_password(m.name, m.password.value)
    temporary = not own and not user.service
    return decided(STUDY_STREAM, [NewEvent(T.CREDENTIALS_CHANGED, {
        "name": m.name, "by": c.actor.name, "temporary": temporary, **_origin(c)})],
        {"name": m.name, "temporary": temporary},
        credentials=[SetPassword(m.name, m.password, service=user.service)])


def unlock_account(m: UnlockAccount, c: Context) -> Decision:
    """The count starts again and the account's sessions end (one started by a guess that
    raced the lock must not outlive it)."""
    _existing(c, m.name)
    study = c.study
    if not study.account_locked(m.name, c.now) and \
            study.failed_attempts.get(m.name, 0) < study.max_failed_attempts:
        raise RuleViolation(f"The account of {m.name} is not locked.", rule="not_locked",
                            field="name")
    return decided(STUDY_STREAM, [NewEvent(T.ACCOUNT_UNLOCKED, {"name": m.name,
                                                                "lapsed": False},
                                           reason=m.reason)],
                   {"name": m.name, "locked": False},
                   credentials=[ClearAttempts(m.name), EndSessions(m.name)])


def set_lockout_policy(m: SetLockoutPolicy, c: Context) -> Decision:
    return decided(STUDY_STREAM, [NewEvent(T.LOCKOUT_POLICY_SET, {
        "max_failed_attempts": m.max_failed_attempts})],
        {"max_failed_attempts": m.max_failed_attempts,
         "previous": c.study.max_failed_attempts})


def load_protocol(m: LoadProtocol, c: Context) -> Decision:
    protocol = load_protocol_text(m.text, m.source)
    digest = protocol_hash(m.text)
    known = c.study.protocol_texts.get(protocol.version)
    if known is not None and protocol_hash(known) != digest:
        raise RuleViolation(f"Protocol version {protocol.version} is already loaded with other "
                            "content; give the new file a new version.",
                            rule="protocol_version_exists", field="version")
    summary = {"version": protocol.version, "hash": digest}
    if known is not None:
        return decided(STUDY_STREAM, [], summary)
    return decided(STUDY_STREAM, [NewEvent(T.PROTOCOL_LOADED, {
        "version": protocol.version, "hash": digest, "content": m.text, "source": m.source})],
        summary)


def amend_protocol(m: AmendProtocol, c: Context) -> Decision:
    study = c.study
    if study.protocol_version == m.version:
        raise RuleViolation(f"Protocol version {m.version} is already in force.",
                            rule="protocol_in_force", field="version")
    events = []
    if m.version not in study.protocol_texts:
        try:
            text = builtin_protocol_text(m.version)
        except InvalidInput:
            raise RuleViolation(f"Protocol version {m.version} is not loaded; load it with "
                                "`trialflow protocol load FILE` first.",
                                rule="protocol_not_loaded", field="version") from None
        events.append(NewEvent(T.PROTOCOL_LOADED, {"version": m.version,
                                                   "hash": protocol_hash(text), "content": text,
                                                   "source": "builtin"}))
    preview = c.amendment
    assert preview is not None, "the executor previews every loadable version"
    digest = preview.digest
    if m.reviewed is not None and m.reviewed != digest:
        raise RuleViolation(
            f"The reviewed preview {m.reviewed[:12]}… is not the preview of protocol version "
            f"{m.version} now ({digest[:12]}…, log position {preview.position}): the log or the "
            f"protocol changed since; run `trialflow protocol preview {m.version}` again.",
            rule="preview_changed", field="reviewed")
    if m.reviewed is None and preview.change_count and study.amendment_review_required:
        raise RuleViolation(
            f"Protocol version {m.version} would change {preview.change_count} item(s) "
            f"({_subjects_changed(preview)} subject(s)): review them with `trialflow protocol "
            f"preview {m.version}` and amend with --reviewed DIGEST (the digest it prints).",
            rule="preview_not_reviewed", field="reviewed")
    reviewed = {"digest": digest, "position": preview.position,
                "changes": preview.change_count, "subjects_changed": _subjects_changed(preview),
                "reviewed": m.reviewed is not None}
    events.append(NewEvent(T.PROTOCOL_AMENDED, {"version": m.version,
                                                "from_version": study.protocol_version,
                                                "preview": reviewed}))
    # the log must still be where the preview read it: an event since makes the command
    # conflict, and the executor previews and decides again
    return Decision((Write(STUDY_STREAM, tuple(events)),),
                    {"version": m.version, "from_version": study.protocol_version,
                     "preview": reviewed}, expects_head=True)


def _subjects_changed(preview: Preview) -> int:
    return sum(1 for s in preview.subjects if s["changes"])


def set_amendment_review(m: SetAmendmentReview, c: Context) -> Decision:
    return decided(STUDY_STREAM, [NewEvent(T.AMENDMENT_REVIEW_SET, {"required": m.required})],
                   {"required": m.required,
                    "previous": c.study.amendment_review_required})


def _origin(c: Context) -> dict[str, object]:
    """Where a credential change came from, when the executor knows it."""
    return {"origin": dict(c.origin)} if c.origin else {}


def _existing(c: Context, name: str) -> User:
    user = c.study.users.get(name)
    if user is None:
        raise RuleViolation(f"User {name} is not a user of this study.", rule="unknown_user",
                            field="name")
    return user
