"""Electronic signatures as they stand, bound to the exact record they sign (21 CFR Part 11
§11.50 signature manifestation, §11.70 signature/record linking); the decision that makes one
is workflow/commands/signatures.py.

A signature is an event in the subject's stream naming the signed event's position and its
hash, the signer's printed name, the time and the meaning. Because the hash is that of the
signed event, the signature cannot be moved to another event, and `audit verify` detects an
edited signed record through its chain. A signature signs one *version* of a record: the
original entry or a correction of it. Once any later event corrects, voids or supersedes that
record (`superseded_by`, the one rule, used by every listing of signatures), the signature is
shown as applying to the earlier version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from events.envelope import RecordedEvent
from workflow import event_types as T

MEANINGS: Final = ("reviewed", "approved", "authored")  # what a signature means (§11.50)

# Events that replace a version of the record they name by `target_position`: a correction
# (of a form or a procedure, or a query answered with one) and a void (entered in error).
# Queries and source verifications also name a `target_position` but change no value, so they
# leave a signature as it is.
SUPERSEDING: Final = frozenset({T.FORM_CORRECTED, T.RECORD_VOIDED})


def record_of(position: int, by_position: Mapping[int, RecordedEvent]) -> int:
    """The record the event at `position` is a version of: the position of the original entry.
    A correction names the record it corrects (followed back if it named another correction);
    any other event is its own record. Only earlier events are followed, so the walk ends."""
    event = by_position.get(position)
    while event is not None and event.type in SUPERSEDING:
        target = int(event.payload["target_position"])
        if target >= event.position:
            break
        position, event = target, by_position.get(target)
    return position


def superseded_by(events: Iterable[RecordedEvent], position: int) -> list[int]:
    """The rule for a signed version: the positions, in log order, of every event after
    `position` that corrects, voids or supersedes the same record in the same stream — a
    correction of the original entry or of any of its corrections, whatever field it changes.
    Empty while the version at `position` is the current one. Pure: reads only `events`."""
    events = list(events)
    by_position = {e.position: e for e in events}
    signed = by_position.get(position)
    if signed is None:
        return []
    record = record_of(position, by_position)
    return sorted(e.position for e in events
                  if e.type in SUPERSEDING and e.position > position
                  and e.stream_id == signed.stream_id
                  and record_of(e.position, by_position) == record)


def signatures(events: list[RecordedEvent]) -> list[dict[str, Any]]:
    """Each signature of a subject's stream, checked against the record it signs: `valid`,
    `earlier_version` (a later event corrected, voided or superseded the signed version:
    `superseded_by`) or `broken` (the signed event's hash no longer matches: tampering, which
    `audit verify` also reports; or the printed name and role are not those of the user who
    recorded the signature)."""
    events = list(events)
    by_position = {e.position: e for e in events}
    out: list[dict[str, Any]] = []
    for event in events:
        if event.type != T.SIGNATURE_RECORDED:
            continue
        p = event.payload
        try:
            target = by_position.get(int(p["target_position"]))
            str(p["target_hash"]), str(p["meaning"]), str(p["printed_name"])
        except (KeyError, TypeError, ValueError):  # not a signature's shape: broken
            out.append({"subject": event.stream_id, "position": event.position,
                        "target_position": p.get("target_position"),
                        "target_type": p.get("target_type"),
                        "target_hash": p.get("target_hash"), "meaning": p.get("meaning"),
                        "printed_name": p.get("printed_name"), "role": p.get("role"),
                        "signed_at": p.get("signed_at"), "state": "broken",
                        "corrected_after_signing_by": [], "superseded_by": None,
                        "manifestation": "not a signature's shape (written outside trialflow)"})
            continue
        later = [] if target is None else superseded_by(events, target.position)
        if target is None or target.hash != p["target_hash"] or (
                p["printed_name"], p.get("role")) != (event.actor, event.role):
            state = "broken"  # tampered, or a name that is not its recorder's (§11.50, 11.70)
        elif later:
            state = "earlier_version"
        else:
            state = "valid"
        newer = later[0] if state == "earlier_version" else None
        mend = "void" if newer is not None and any(
            e.position == newer and e.type == T.RECORD_VOIDED for e in events) else "correction"
        out.append({"subject": event.stream_id, "position": event.position,
                    "target_position": p["target_position"], "target_type": p["target_type"],
                    "target_hash": p["target_hash"], "meaning": p["meaning"],
                    "printed_name": p["printed_name"], "role": p.get("role"),
                    "signed_at": p["signed_at"], "state": state,
                    "corrected_after_signing_by": later, "superseded_by": newer,
                    "manifestation": f"Signed by {p['printed_name']} on {p['signed_at']} "
                    f"({p['meaning']})" + (" — applies to the version before the "
                                           f"{mend} at position {newer}"
                                           if newer is not None else "")})
    return out
