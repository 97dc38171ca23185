"""The event envelope: new events, recorded rows, canonical bytes and the chain hash.

The hash of an event is SHA-256 over the canonical serialisation of every envelope field
except `hash` itself: a JSON object with sorted keys, compact separators, UTF-8, no NaN.
`payload` enters as the stored JSON text (the exact bytes kept in the table), so verification
hashes what is stored, never an upcast or re-serialised payload. `position` is assigned by the
appender under the append lock before hashing, so it is covered by the hash as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

GENESIS_HASH: Final = "0" * 64

# The envelope, in the column order of the `events` table.
ENVELOPE_FIELDS: Final[tuple[str, ...]] = (
    "position",
    "stream_id",
    "version",
    "type",
    "schema_version",
    "payload",
    "occurred_at",
    "recorded_at",
    "actor",
    "role",
    "site",
    "reason",
    "command_id",
    "correlation_id",
    "causation_id",
    "prev_hash",
    "hash",
)
HASHED_FIELDS: Final[tuple[str, ...]] = ENVELOPE_FIELDS[:-1]


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, no NaN or infinity (RFC 8785 for our value types)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The bytes hashed for one event: every envelope field but `hash`."""
    return canonical_json({name: fields[name] for name in HASHED_FIELDS}).encode("utf-8")


def event_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


@dataclass(frozen=True)
class NewEvent:
    """An event a command wants to append; the store fills in the rest of the envelope."""

    type: str
    payload: Mapping[str, Any]
    schema_version: int = 1
    occurred_at: str | None = None  # ISO 8601 with offset; defaults to the recorded time
    reason: str | None = None
    causation_id: str | None = None


@dataclass(frozen=True)
class RecordedEvent:
    """One stored row of the `events` table."""

    position: int
    stream_id: str
    version: int
    type: str
    schema_version: int
    payload_text: str
    occurred_at: str
    recorded_at: str
    actor: str
    role: str
    site: str | None
    reason: str | None
    command_id: str
    correlation_id: str
    causation_id: str | None
    prev_hash: str
    hash: str

    @cached_property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.payload_text)
        return value

    def envelope(self) -> dict[str, Any]:
        """The row as stored, with the envelope's names (`payload` as its JSON text)."""
        return {
            "position": self.position,
            "stream_id": self.stream_id,
            "version": self.version,
            "type": self.type,
            "schema_version": self.schema_version,
            "payload": self.payload_text,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "actor": self.actor,
            "role": self.role,
            "site": self.site,
            "reason": self.reason,
            "command_id": self.command_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def computed_hash(self) -> str:
        return event_hash(self.envelope())


def from_row(row: Any) -> RecordedEvent:
    """Build a RecordedEvent from a row in ENVELOPE_FIELDS order."""
    return RecordedEvent(*row)
