"""Who may send which message: the one table, checked by the executor for every message and
printed into docs/cli.md by docs/generate_cli.py.

A row gives the roles allowed, and where one field narrows them (a causality assessment is the
investigator's; a signature's meaning decides who may sign), the roles for each value. Two rules
hold beside the table, in the executor: a coordinator or investigator writes only subjects of
their own site, and a user whose password an admin set must change it before anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from workflow.commands import messages as M
from workflow.errors import RuleViolation
from workflow.study import ROLES, SITE_ROLES, Study, User
from workflow.subject import SubjectState

SITE_WRITERS: Final = frozenset({"coordinator", "investigator"})
REVIEWERS: Final = frozenset({"monitor", "data_manager"})
PEOPLE: Final = frozenset(ROLES) - {"scheduler"}
ADMIN: Final = frozenset({"admin"})


@dataclass(frozen=True)
class Permission:
    roles: frozenset[str]
    # field -> value -> roles allowed for that value (instead of `roles`)
    narrowed: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    note: str = ""

    def roles_for(self, message: M.Message) -> frozenset[str]:
        for name, by_value in self.narrowed.items():
            value = getattr(message, name, None)
            if isinstance(value, str) and value in by_value:
                return by_value[value]
        return self.roles


PERMISSIONS: Final[dict[type[M.Message], Permission]] = {
    M.InitialiseStudy: Permission(ADMIN, note="the first write; sets the admin's own password"),
    M.AddSite: Permission(ADMIN),
    M.AddUser: Permission(ADMIN, note="a person's first password is temporary"),
    M.DeactivateUser: Permission(ADMIN, note="never the last active admin"),
    M.ChangePassword: Permission(PEOPLE, note="one's own; an admin's for others is temporary"),
    M.UnlockAccount: Permission(ADMIN),
    M.SetLockoutPolicy: Permission(ADMIN),
    M.SetAmendmentReview: Permission(ADMIN),
    M.LoadProtocol: Permission(ADMIN),
    M.AmendProtocol: Permission(ADMIN),
    M.ConsentSubject: Permission(SITE_WRITERS, note="own site"),
    M.ReconsentSubject: Permission(SITE_WRITERS, note="own site"),
    M.RecordForm: Permission(SITE_WRITERS, {"form": {"causality": frozenset({"investigator"})}},
                             note="own site; causality: investigator"),
    M.CorrectRecord: Permission(SITE_WRITERS, note="own site"),
    M.VoidRecord: Permission(SITE_WRITERS, note="own site"),
    M.ConfirmEligibility: Permission(frozenset({"investigator"}), note="own site"),
    M.RecordScreenFailure: Permission(SITE_WRITERS, note="own site"),
    M.RecordLeukapheresis: Permission(SITE_WRITERS, note="own site"),
    M.ReleaseProduct: Permission(SITE_WRITERS, note="own site"),
    M.GiveLymphodepletion: Permission(SITE_WRITERS, note="own site"),
    M.Infuse: Permission(SITE_WRITERS, note="own site"),
    M.RecordVisit: Permission(SITE_WRITERS, note="own site"),
    M.CompleteStudy: Permission(SITE_WRITERS, note="own site"),
    M.TakeOffStudy: Permission(SITE_WRITERS, note="own site"),
    M.OpenQuery: Permission(REVIEWERS),
    M.AnswerQuery: Permission(SITE_WRITERS, note="own site"),
    M.CloseQuery: Permission(REVIEWERS),
    M.VerifySource: Permission(frozenset({"monitor"})),
    M.LockStudy: Permission(frozenset({"data_manager"})),
    M.UnlockStudy: Permission(ADMIN),
    M.Sign: Permission(SITE_WRITERS, {"meaning": {
        "authored": SITE_WRITERS, "reviewed": frozenset({"investigator"}),
        "approved": frozenset({"investigator"})}},
        note="own site; password at every signing; reviewed/approved: investigator"),
    M.RecordExport: Permission(PEOPLE),
    M.IssueReminder: Permission(frozenset({"scheduler"})),
    M.CancelReminder: Permission(frozenset({"scheduler"})),
    M.RecordDelivery: Permission(frozenset({"scheduler"})),
    M.RecordDeliveryFailure: Permission(frozenset({"scheduler"})),
    M.CopySubjects: Permission(ADMIN, note="demo studies only"),
}


# Messages that need the password itself, never a session (Part 11 §11.200(a)(1) for
# signatures; a stolen session must not change a credential).
NEEDS_PASSWORD: Final = (M.Sign, M.ChangePassword)


def admit(message: M.Message, study: Study, actor: User, subject: SubjectState | None,
          method: str) -> None:
    """Every rule on who may send `message`, as the executor checks it for every message:
    the actor is active; a temporary password is changed first; the role may send it (the
    table); a coordinator or investigator writes only subjects of their own site; a signature
    or a credential change brings the password (`method` is how the actor was proven)."""
    if not actor.active:
        raise RuleViolation(f"User {actor.name} is deactivated and may not write.",
                            rule="user_deactivated", field="user")
    if method != "database_login" and actor.name in study.temporary_passwords and not (
            isinstance(message, M.ChangePassword) and message.name == actor.name):
        raise change_first(actor.name)
    authorise(message, actor)
    if subject is not None and actor.role in SITE_ROLES and subject.site is not None \
            and actor.site != subject.site:
        raise RuleViolation(f"User {actor.name} of site {actor.site} may not write subject "
                            f"{subject.subject} of site {subject.site}.", rule="site",
                            subject=subject.subject, field="site")
    if isinstance(message, NEEDS_PASSWORD) and method != "password":
        what = "A signature" if isinstance(message, M.Sign) else "A credential change"
        raise RuleViolation(f"{what} needs the password of {actor.name} itself, not a session "
                            "or a database login.", rule="password_required", field="password")


def change_first(name: str) -> RuleViolation:
    return RuleViolation(f"The password of {name} was set by an admin and is temporary: change "
                         f"it with `trialflow --user {name} users passwd {name}` before any "
                         "other write or signature.", rule="password_change_required",
                         field="password")


def authorise(message: M.Message, actor: User) -> None:
    """Refuse (rule `role`) a message its actor's role may not send."""
    permission = PERMISSIONS[type(message)]
    allowed = permission.roles_for(message)
    if actor.role in allowed:
        return
    subject = getattr(message, "subject", None)
    target = f" for subject {subject}" if isinstance(subject, str) else ""
    what = message.command or type(message).__name__
    raise RuleViolation(f"User {actor.name} ({actor.role}) may not run `{what}`{target}: only "
                        f"{only(allowed)} may.", rule="role",
                        subject=subject if isinstance(subject, str) else None, field="user")


def only(roles: frozenset[str]) -> str:
    """`a coordinator or investigator`, `an admin`: who may, for a refusal."""
    who = " or ".join(sorted(roles))
    return f"{'an' if who[0] in 'aeiou' else 'a'} {who}"


def table() -> list[dict[str, str]]:
    """The table as rows (docs/cli.md): message, command, roles, note."""
    return [{"message": kind.__name__, "command": kind.command,
             "roles": ", ".join(sorted(p.roles)), "note": p.note}
            for kind, p in PERMISSIONS.items()]
