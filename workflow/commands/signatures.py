"""The decision of an electronic signature (21 CFR Part 11 §11.50, §11.70): bound to the exact
event it signs by that event's hash, with the printed name, role, time and meaning. Which roles
may sign with which meaning is in the one table (workflow/commands/roles.py); the executor
accepts a signature only with the password itself, never a session (§11.200(a)(1))."""

from __future__ import annotations

from events.envelope import NewEvent
from workflow import event_types as T
from workflow.commands.decision import Context, Decision, decided
from workflow.commands.messages import Sign
from workflow.errors import InvalidInput, RuleViolation


def sign(m: Sign, c: Context) -> Decision:
    target = next((e for e in c.events if e.position == m.position), None)
    if target is None:
        raise InvalidInput(f"Subject {m.subject} has no event at position {m.position}.",
                           field="position", subject=m.subject)
    if target.type == T.SIGNATURE_RECORDED:
        raise InvalidInput(f"Position {m.position} of subject {m.subject} is a signature; sign "
                           "the record itself.", field="position", subject=m.subject)
    voided = c.require_subject().voided.get(m.position)
    if voided is not None:
        raise RuleViolation(f"Subject {m.subject}: the {voided.form} at position {m.position} "
                            f"was voided at position {voided.void_position}; a voided record "
                            "is not signed.", rule="record_voided", subject=m.subject,
                            field="position")
    payload = {"target_position": m.position, "target_hash": target.hash,
               "target_type": target.type, "meaning": m.meaning,
               "printed_name": c.actor.name, "role": c.actor.role,
               "signed_at": c.now.isoformat()}
    if c.origin:  # where it was typed: the operating-system account, the database login
        payload["origin"] = dict(c.origin)
    return decided(m.subject, [NewEvent(T.SIGNATURE_RECORDED, payload)],
                   {"subject": m.subject, **payload})
