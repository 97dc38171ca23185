"""Stream ids of docs/design.md: a subject ID, `study`, or `reminders-SUBJECT`."""

from __future__ import annotations

import re
from typing import Final

from events.errors import InvalidStreamId

STUDY_STREAM: Final = "study"
REMINDERS_PREFIX: Final = "reminders-"
SUBJECT_ID: Final = re.compile(r"[A-Z0-9-]{1,20}")


def is_subject_id(value: str) -> bool:
    return SUBJECT_ID.fullmatch(value) is not None


def check_subject_id(value: str) -> str:
    if not is_subject_id(value):
        raise InvalidStreamId(
            f"Subject ID {value!r} is not valid: use 1 to 20 capital letters, digits or hyphens."
        )
    return value


def reminders_stream(subject_id: str) -> str:
    return REMINDERS_PREFIX + check_subject_id(subject_id)


def subject_of(stream_id: str) -> str | None:
    """The subject a stream belongs to (its own stream or its reminders), else None."""
    if stream_id.startswith(REMINDERS_PREFIX):
        rest = stream_id[len(REMINDERS_PREFIX):]
        return rest if is_subject_id(rest) else None
    return stream_id if is_subject_id(stream_id) else None


def check_stream_id(value: str) -> str:
    if value == STUDY_STREAM or subject_of(value) is not None:
        return value
    raise InvalidStreamId(
        f"Stream id {value!r} is not valid: use a subject ID (1 to 20 capital letters, digits or "
        "hyphens), 'study' or 'reminders-SUBJECT'."
    )
