"""The event envelope: new events, recorded rows, canonical bytes and the chain hash.

The hash of an event is SHA-256 over the canonical serialisation of every envelope field
except `hash` itself: a JSON object with sorted keys, compact separators, UTF-8, no NaN.
`payload` enters as the stored JSON text (the exact bytes kept in the table), so verification
hashes what is stored, never an upcast or re-serialised payload. `position` is assigned by the
appender under the append lock before hashing, so it is covered by the hash as well.

Schema versions (events/upcasting.py): `RecordedEvent.payload` is the stored text decoded and
upcast to its type's current schema version; `payload_text` and `schema_version` stay as
stored. A `NewEvent` is written at its type's current version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, overload

from events.errors import IntegrityFailure
from events.upcasting import REGISTRY

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


# json.dumps with these arguments builds a new encoder on every call; one shared encoder gives
# the same text (`encode` keeps no state between calls and is safe across threads).
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> str:
    """Sorted keys, compact separators, no NaN or infinity (RFC 8785 for our value types)."""
    return _CANONICAL.encode(value)


_encode_string: Final = json.encoder.encode_basestring  # what the encoder above uses for str


def canonical_value(value: Any) -> str:
    """`canonical_json(value)`, faster for the envelope's usual types (str, int, None): the
    same text, since for them the encoder does exactly this; anything else goes to it."""
    cls = value.__class__
    if cls is str:
        text: str = _encode_string(value)
        return text
    if value is None:
        return "null"
    if cls is int:
        return int.__repr__(value)
    return canonical_json(value)


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The bytes hashed for one event: every envelope field but `hash`."""
    return canonical_json({name: fields[name] for name in HASHED_FIELDS}).encode("utf-8")


def event_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


def link(previous: str, digest: str) -> str:
    """The global chain: `chain_hash` of position p is SHA-256 of the ASCII text of the chain
    hash of position p-1 (GENESIS_HASH before position 1) followed by the hash of event p. The
    chain hash of the last position commits to the whole log in order (the log's root)."""
    return hashlib.sha256((previous + digest).encode("ascii")).hexdigest()


def unreadable_payload(event: RecordedEvent) -> IntegrityFailure:
    """A stored payload that is not a JSON object: only a write outside trialflow makes one."""
    return IntegrityFailure(
        f"Integrity failure in stream {event.stream_id} version {event.version} (position "
        f"{event.position}): its stored payload is not a JSON object (written outside "
        "trialflow); run `trialflow audit verify`.",
        stream_id=event.stream_id, version=event.version)


@dataclass(frozen=True)
class NewEvent:
    """An event a command wants to append; the store fills in the rest of the envelope.

    `schema_version` left out (0) is the type's current version (events/upcasting.py). For a
    declared type no other version may be written: old shapes are read, never written."""

    type: str
    payload: Mapping[str, Any]
    schema_version: int = 0
    occurred_at: str | None = None  # ISO 8601 with offset; defaults to the recorded time
    reason: str | None = None
    causation_id: str | None = None

    def __post_init__(self) -> None:
        current = _CURRENT_VERSIONS.get(self.type)
        if self.schema_version == 0:
            object.__setattr__(self, "schema_version", 1 if current is None else current)
        elif current is not None and self.schema_version != current:
            raise ValueError(
                f"{self.type} payloads are written at schema version {current}, not "
                f"{self.schema_version}: build the current shape (old ones are only read).")


_CURRENT_VERSIONS: Final = REGISTRY.current_versions  # type -> current schema version
_upcast: Final = REGISTRY.upcast
_raw_decode: Final = json.JSONDecoder().raw_decode  # the decoder json.loads uses by default


def _loads(text: Any) -> Any:
    """`json.loads` of a stored payload, calling the decoder's scanner directly when the text
    is an object with nothing around it, as the store writes every payload (a third less
    time per event than `json.loads`, which looks for whitespace before and after); any other
    text goes to `json.loads` itself, so the result, and the error, are always its own."""
    if text.__class__ is str and text[:1] == "{":
        value, end = _raw_decode(text)
        if end == len(text):
            return value
    return json.loads(text)


class _DecodedPayload:
    """`RecordedEvent.payload`: the stored JSON text decoded on first access, upcast to its
    type's current schema version when stored at another, then kept in the instance (like
    `functools.cached_property`, without its lock, which on Python 3.11 is one lock shared by
    every instance). An event that is current costs one dict lookup more than the decoding."""

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> _DecodedPayload: ...
    @overload
    def __get__(self, instance: RecordedEvent, owner: type[Any]) -> dict[str, Any]: ...
    def __get__(
        self, instance: RecordedEvent | None, owner: type[Any]
    ) -> dict[str, Any] | _DecodedPayload:
        if instance is None:
            return self
        attributes = instance.__dict__  # the fields, read directly: this runs once per event
        try:
            value: dict[str, Any] = _loads(attributes["payload_text"])
        except (TypeError, ValueError):
            value = None  # type: ignore[assignment]
        if value.__class__ is not dict:
            raise unreadable_payload(instance)
        stored = attributes["schema_version"]
        if _CURRENT_VERSIONS.get(attributes["type"], stored) != stored:
            value = _upcast(
                instance.type, stored, value, stream_id=instance.stream_id,
                version=instance.version,
                where=f"Event at position {instance.position} (stream {instance.stream_id} "
                      f"version {instance.version})",
            )
        attributes["payload"] = value  # found first from now on (a non-data descriptor)
        return value


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

    payload = _DecodedPayload()  # not a dataclass field: no annotation

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


_RECORDED_FIELDS: Final = tuple(f.name for f in fields(RecordedEvent))
_new_object = object.__new__
_set_attribute = object.__setattr__


def from_row(row: Sequence[Any]) -> RecordedEvent:
    """Build a RecordedEvent from a row in ENVELOPE_FIELDS order."""
    return RecordedEvent(*row)


def from_rows(rows: Iterable[Sequence[Any]]) -> list[RecordedEvent]:
    """`from_row` for many rows at once, filling each instance's attributes in one step (the
    generated `__init__` of a frozen dataclass sets them one by one through
    `object.__setattr__`). The result is the same: equal, hashable, frozen instances."""
    names, new, set_attribute = _RECORDED_FIELDS, _new_object, _set_attribute
    events = []
    for row in rows:  # rows come from a SELECT of exactly these columns
        event = new(RecordedEvent)
        set_attribute(event, "__dict__", dict(zip(names, row)))  # noqa: B905
        events.append(event)
    return events
