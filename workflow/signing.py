"""Credential changes in the log, and electronic signatures bound to the exact record they
sign (21 CFR Part 11 §11.50 signature manifestation, §11.70 signature/record linking).

A signature is an event in the subject's stream naming the signed event's position and its
hash, the signer's printed name, the time and the meaning. Because the hash is that of the
signed event, the signature cannot be moved to another event, and `audit verify` detects an
edited signed record through its chain. A record corrected after it was signed keeps the
signature, shown as applying to the earlier version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, insert, select

from events.envelope import NewEvent, RecordedEvent
from events.store import StreamAppend
from events.streams import STUDY_STREAM, check_subject_id
from workflow import event_types as T
from workflow import identity
from workflow.commands import Outcome, Workflow
from workflow.errors import InvalidInput, RuleViolation
from workflow.study import Study, User

MEANINGS: Final = ("reviewed", "approved", "authored")
SIGNERS: Final[dict[str, frozenset[str]]] = {
    "authored": frozenset({"coordinator", "investigator"}),
    "reviewed": frozenset({"investigator"}),
    "approved": frozenset({"investigator"}),
}


class Signing:
    def __init__(self, flow: Workflow) -> None:
        self.flow = flow

    # ------------------------------------------------------------------ credentials
    def change_password(self, user: str | None, name: str, password: str,
                        command_id: str | None, now: datetime) -> Outcome:
        """Admins set anyone's password, users their own. The credential row is written,
        then the event; if the event cannot be appended the previous credential is put
        back, so the log and the credentials never disagree."""
        engine = self.flow.store.engine
        identity.ensure_tables(engine)
        identity.check_new_password(name, password)

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            if name not in study.users:
                raise RuleViolation(f"User {name} is not a user of this study.",
                                    rule="unknown_user", field="name")
            if actor.name != name and actor.role != "admin":
                raise RuleViolation(f"User {actor.name} ({actor.role}) may not set the "
                                    f"password of {name}; only an admin or {name} may.",
                                    rule="role", field="user")
            return [StreamAppend(STUDY_STREAM, study.version, [NewEvent(
                T.CREDENTIALS_CHANGED, {"name": name, "by": actor.name})])], {"name": name}

        with engine.begin() as conn:
            previous = conn.execute(select(identity.credentials).where(
                identity.credentials.c.name == name)).first()
            identity.set_password(conn, name, password, now)
        try:
            return self.flow._run("password", {"name": name, "at": now.isoformat()}, user,
                                  command_id, build)
        except BaseException:
            with engine.begin() as conn:
                conn.execute(delete(identity.credentials).where(
                    identity.credentials.c.name == name))
                if previous is not None:
                    conn.execute(insert(identity.credentials).values(**previous._mapping))
            raise

    # ------------------------------------------------------------------ signatures
    def sign(self, user: str | None, subject: str, position: int, meaning: str,
             command_id: str | None, now: Callable[[], datetime]) -> Outcome:
        check_subject_id(subject)
        if meaning not in MEANINGS:
            raise InvalidInput(f"--meaning {meaning!r} is not one of {', '.join(MEANINGS)}.",
                               field="meaning")
        flow = self.flow

        def body(study: Study, actor: User, state: Any, today: Any
                 ) -> tuple[list[NewEvent], dict[str, Any]]:
            if actor.role not in SIGNERS[meaning]:
                raise RuleViolation(f"User {actor.name} ({actor.role}) may not sign subject "
                                    f"{subject}'s record as {meaning}.", rule="role",
                                    subject=subject, field="meaning")
            target = _event_at(flow.store.read_stream(subject), position)
            if target is None:
                raise InvalidInput(f"Subject {subject} has no event at position {position}.",
                                   field="position", subject=subject)
            if target.type in (T.SIGNATURE_RECORDED,):
                raise InvalidInput(f"Position {position} of subject {subject} is a signature; "
                                   "sign the record itself.", field="position",
                                   subject=subject)
            payload = {"target_position": position, "target_hash": target.hash,
                       "target_type": target.type, "meaning": meaning,
                       "printed_name": actor.name, "role": actor.role,
                       "signed_at": now().isoformat()}
            return [NewEvent(T.SIGNATURE_RECORDED, payload)], payload
        roles = frozenset().union(*SIGNERS.values())
        return flow._subject_write("sign", subject, {"position": position, "meaning": meaning},
                                   user, command_id, body, roles=roles)


def _event_at(events: Iterable[RecordedEvent], position: int) -> RecordedEvent | None:
    return next((e for e in events if e.position == position), None)


def signatures(events: list[RecordedEvent]) -> list[dict[str, Any]]:
    """Each signature of a subject's stream, checked against the record it signs: `valid`,
    `earlier_version` (the record was corrected after signing) or `broken` (the signed
    event's hash no longer matches: tampering, which `audit verify` also reports)."""
    by_position = {e.position: e for e in events}
    out = []
    for event in events:
        if event.type != T.SIGNATURE_RECORDED:
            continue
        p = event.payload
        target = by_position.get(int(p["target_position"]))
        corrections = [e.position for e in events if e.type == T.FORM_CORRECTED
                       and int(e.payload["target_position"]) == int(p["target_position"])
                       and e.position > event.position]
        if target is None or target.hash != p["target_hash"]:
            state = "broken"
        elif corrections:
            state = "earlier_version"
        else:
            state = "valid"
        out.append({"subject": event.stream_id, "position": event.position,
                    "target_position": p["target_position"], "target_type": p["target_type"],
                    "target_hash": p["target_hash"], "meaning": p["meaning"],
                    "printed_name": p["printed_name"], "role": p.get("role"),
                    "signed_at": p["signed_at"], "state": state,
                    "corrected_after_signing_by": corrections,
                    "manifestation": f"Signed by {p['printed_name']} on {p['signed_at']} "
                    f"({p['meaning']})" + (" — applies to the version before the "
                                           f"correction at position {corrections[0]}"
                                           if corrections else "")})
    return out
