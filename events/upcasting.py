"""Upcasting: old payloads read in the current shape of their event type.

When an event type's payload changes shape, the type gets a new schema version. Rows already
stored keep their payload text and `schema_version` for ever (the hash chain covers both, and
`audit verify` hashes the stored bytes); readers see `RecordedEvent.payload`, which is the
stored text decoded and then passed through one upcaster per version step, from the stored
version to the type's current one. So every fold, projection and export sees one shape only,
and new events are written in that shape (`NewEvent` takes its type's current version).

An upcaster is a pure function `payload -> payload` of one step (`from_version` to
`from_version + 1`): it builds a new dict, leaves its argument alone, reads nothing else (no
clock, no protocol, no database), so replaying the same row always gives the same payload.

The registry belongs to the code, not to a deployment or a store object: which versions exist
is a fact of this program, and a payload must not depend on which `EventStore` read it (tests
and tools build stores in many places). `REGISTRY` is therefore one per process, filled when
the package that owns the event types is imported (`workflow/upcasters.py`, imported by
`workflow/__init__.py`); `events/` itself declares nothing and knows no type. A type nobody
declared is read as stored, whatever its version. `Upcasters` instances of their own serve
tests.

Cost on the read path: `RecordedEvent.payload` looks the type up in `current_versions` (one
dict lookup) when it decodes the payload; only an event whose stored version differs from
the current one goes further. Nothing is done for events whose payload is never read (such as
`audit verify`, which reads only the stored text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from events.errors import IntegrityFailure

Upcaster = Callable[[Mapping[str, Any]], dict[str, Any]]


class UnknownSchemaVersion(IntegrityFailure):
    """A stored event's schema version is one this code cannot read (newer than its type's
    current version, or a step without an upcaster). Nothing is changed: an upgraded
    trialflow reads it."""


class Upcasters:
    """Event types' current schema versions and the upcasters between versions."""

    def __init__(self) -> None:
        # type -> current version; read directly (one lookup) by RecordedEvent.payload
        self.current_versions: dict[str, int] = {}
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def declare(self, event_type: str, current: int = 1) -> None:
        """`event_type`'s payloads are now written at version `current`; stored payloads of
        a later version are refused on read. Upcasters of earlier versions are registered
        with `register`."""
        if current < 1:
            raise ValueError(f"{event_type}: a schema version is a positive integer, not "
                             f"{current}.")
        known = self.current_versions.get(event_type)
        if known is not None and known != current:
            raise ValueError(f"{event_type} is already declared at schema version {known}, "
                             f"not {current}.")
        highest = max((v + 1 for (t, v) in self._steps if t == event_type), default=1)
        if current < highest:
            raise ValueError(f"{event_type}: an upcaster reaches schema version {highest}, "
                             f"past the declared current version {current}.")
        self.current_versions[event_type] = current

    def register(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        """`upcaster` turns a payload of `from_version` into one of `from_version + 1`.
        Registering the same function again is a no-op; another one for the step is refused."""
        if from_version < 1:
            raise ValueError(f"{event_type}: no schema version {from_version} to upcast from.")
        key = (event_type, from_version)
        known = self._steps.get(key)
        if known is not None and known is not upcaster:
            raise ValueError(f"{event_type} already has an upcaster from schema version "
                             f"{from_version}.")
        current = self.current_versions.get(event_type)
        if current is not None and from_version + 1 > current:
            raise ValueError(f"{event_type} is declared at schema version {current}: declare "
                             f"it at {from_version + 1} to register this upcaster.")
        self._steps[key] = upcaster

    def current_version(self, event_type: str) -> int:
        """The version new events of `event_type` are written at (1 when undeclared)."""
        return self.current_versions.get(event_type, 1)

    def check(self) -> None:
        """Every declared type's chain is complete: an upcaster for each version below its
        current one (call once the registrations are done)."""
        for event_type, current in self.current_versions.items():
            missing = [v for v in range(1, current) if (event_type, v) not in self._steps]
            if missing:
                raise ValueError(f"{event_type} (current schema version {current}) has no "
                                 f"upcaster from version {missing[0]}.")

    def upcast(self, event_type: str, schema_version: int, payload: dict[str, Any], *,
               where: str = "", stream_id: str | None = None, version: int | None = None
               ) -> dict[str, Any]:
        """`payload`, stored at `schema_version`, in the current shape of `event_type`. The
        same dict when nothing is to do; otherwise a new one (the argument is left as it is,
        by the upcasters' contract). `where` names the event in an error."""
        current = self.current_versions.get(event_type)
        if current is None or schema_version == current:
            return payload
        subject = f"{where}: " if where else ""
        if schema_version > current or schema_version < 1:
            raise UnknownSchemaVersion(
                f"{subject}{event_type} schema version {schema_version} is not one this "
                f"trialflow reads (versions 1 to {current}); the event is stored as it was, "
                "read it with the trialflow version that wrote it or a later one.",
                stream_id=stream_id, version=version,
            )
        steps = self._steps
        for step in range(schema_version, current):
            upcaster = steps.get((event_type, step))
            if upcaster is None:
                raise UnknownSchemaVersion(
                    f"{subject}{event_type} has no upcaster from schema version {step} to "
                    f"{step + 1}; the event is stored as it was, nothing was changed.",
                    stream_id=stream_id, version=version,
                )
            payload = upcaster(payload)
        return payload


REGISTRY: Final = Upcasters()
declare: Final = REGISTRY.declare
register: Final = REGISTRY.register
current_version: Final = REGISTRY.current_version
