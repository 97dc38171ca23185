"""`--as-of`: "what the system showed then", as a global position bound for in-memory folds."""

from __future__ import annotations

from datetime import UTC, datetime

from events.store import EventStore
from workflow.errors import InvalidInput


def as_of_position(value: str | None, store: EventStore) -> int | None:
    """`@N` is global position N; an ISO 8601 time (no offset meaning UTC) is the last position
    recorded at or before it; None means now."""
    if value is None:
        return None
    if value.startswith("@"):
        try:
            position = int(value[1:])
        except ValueError:
            position = -1
        if position < 0:
            raise InvalidInput(f"--as-of {value} is not @N with N a position from 0.",
                               field="as_of")
        return position
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"--as-of {value!r} is neither @POSITION nor an ISO 8601 time.",
                           field="as_of") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return store.position_at(moment)
