"""`--as-of`: "what the system showed then", as a global position bound for in-memory folds."""

from __future__ import annotations

from datetime import UTC, date, datetime

from events.store import EventStore
from workflow.errors import InvalidInput

# Dates and times a command takes: far enough for any trial, near enough that converting
# between time zones (±14 h) never leaves what `datetime` can hold (years 1 to 9999).
FIRST_YEAR, LAST_YEAR = 1900, 2200
MAX_POSITION = 2**63 - 1  # the largest INTEGER SQLite and PostgreSQL's BIGINT store


def in_range(moment: date) -> bool:
    """Whether a date or time lies in the years FIRST_YEAR to LAST_YEAR."""
    return FIRST_YEAR <= moment.year <= LAST_YEAR


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
        if not 0 <= position <= MAX_POSITION:
            raise InvalidInput(f"--as-of {value[:40]} is not @N with N a position from 0 to "
                               f"{MAX_POSITION}.", field="as_of")
        return position
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"--as-of {value!r} is neither @POSITION nor an ISO 8601 time.",
                           field="as_of") from None
    if not in_range(moment):
        raise InvalidInput(f"--as-of {value!r} is not a time from {FIRST_YEAR} to "
                           f"{LAST_YEAR}.", field="as_of")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return store.position_at(moment)
