"""Electronic signatures as they stand, bound to the exact record they sign (21 CFR Part 11
§11.50 signature manifestation, §11.70 signature/record linking); the decision that makes one
is workflow/commands/signatures.py.

A signature is an event in the subject's stream naming the signed event's position and its
hash, the signer's printed name, the time and the meaning. Because the hash is that of the
signed event, the signature cannot be moved to another event, and `audit verify` detects an
edited signed record through its chain. A record corrected after it was signed keeps the
signature, shown as applying to the earlier version.
"""

from __future__ import annotations

from typing import Any, Final

from events.envelope import RecordedEvent
from workflow import event_types as T

MEANINGS: Final = ("reviewed", "approved", "authored")  # what a signature means (§11.50)


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
