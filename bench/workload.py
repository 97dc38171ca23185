"""The event-store workloads, built before any clock starts: the same events for our store
(`NewEvent`s grouped into appends) and for the raw driver (finished rows of the `events` table).

Both sides get equal rows: the same columns, the same payload JSON text, hash-length hex strings
for `prev_hash`/`hash`, uuid-length command and correlation ids, fixed-width UTC times. Our
store receives the payloads as Python objects and must serialise, number and hash them itself;
that work is part of what the benchmark measures.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from events.envelope import ENVELOPE_FIELDS, GENESIS_HASH, NewEvent, canonical_json, link
from events.store import format_utc

EVENT_TYPE: Final = "VitalSignsRecorded"
ACTOR: Final = "bench.nurse"
ROLE: Final = "investigator"
SITE: Final = "SITE-01"

RawRow = tuple[Any, ...]


@dataclass(frozen=True)
class Sizes:
    batched_events: int = 100_000
    batch_size: int = 1_000
    single_events: int = 20_000
    single_streams: int = 1_000
    read_repeats: int = 3

    def scaled(self, factor: float) -> Sizes:
        """Smaller runs for a smoke test (`--scale 0.05`); the published figures use 1."""
        if factor == 1:
            return self
        batch = max(1, int(self.batch_size * min(factor * 10, 1)))
        return Sizes(
            batched_events=max(batch, int(self.batched_events * factor) // batch * batch),
            batch_size=batch,
            single_events=max(1, int(self.single_events * factor)),
            single_streams=max(1, int(self.single_streams * factor)),
            read_repeats=self.read_repeats,
        )


@dataclass(frozen=True)
class Append:
    """One call of EventStore.append: a stream, its expected version and the events."""

    stream_id: str
    expected_version: int
    events: list[NewEvent]


@dataclass(frozen=True)
class Workload:
    """The appends for our store and the equal raw rows, one list of rows per transaction."""

    appends: list[Append]
    raw_transactions: list[list[RawRow]]

    @property
    def events(self) -> int:
        return sum(len(a.events) for a in self.appends)


def payload(i: int) -> dict[str, Any]:
    """A vital-signs form of about 260 bytes of JSON, varied per event."""
    return {
        "form": "vital_signs",
        "visit": f"D{i % 90}",
        "subject_id": f"S-{i % 1000:04d}",
        "values": {
            "systolic_mmhg": 100 + i % 40,
            "diastolic_mmhg": 60 + i % 25,
            "heart_rate_bpm": 55 + i % 50,
            "temperature_c": round(36.0 + (i % 30) / 10, 1),
            "weight_kg": 50 + (i % 400) / 10,
        },
        "position": "sitting",
        "comment": "routine assessment; no adverse event reported",
    }


class _RawNumbering:
    """Positions, versions and hash-chain-shaped strings for the raw rows."""

    def __init__(self, first_position: int) -> None:
        self.position = first_position - 1
        self.heads: dict[str, tuple[int, str]] = {}
        self.recorded_at = format_utc(datetime.now(UTC))
        self.chain = GENESIS_HASH  # the global chain, as our store computes it

    def transaction(self, stream_id: str, payloads: Sequence[Mapping[str, Any]]) -> list[RawRow]:
        command_id = str(uuid.uuid4())
        version, prev_hash = self.heads.get(stream_id, (0, GENESIS_HASH))
        rows: list[RawRow] = []
        for body in payloads:
            self.position += 1
            version += 1
            digest = hashlib.sha256(f"{stream_id}/{version}".encode()).hexdigest()
            self.chain = link(self.chain, digest)
            rows.append((
                self.position, stream_id, version, EVENT_TYPE, 1, canonical_json(body),
                self.recorded_at, self.recorded_at, ACTOR, ROLE, SITE, None,
                command_id, command_id, None, prev_hash, digest, self.chain,
            ))
            prev_hash = digest
        self.heads[stream_id] = (version, prev_hash)
        return rows


def batched(sizes: Sizes) -> Workload:
    """`batched_events` events, `batch_size` per append, each append to its own new stream."""
    numbering = _RawNumbering(first_position=1)
    appends: list[Append] = []
    raw: list[list[RawRow]] = []
    for batch, start in enumerate(range(0, sizes.batched_events, sizes.batch_size)):
        bodies = [payload(i) for i in range(start, start + sizes.batch_size)]
        stream_id = f"B-{batch:05d}"
        appends.append(Append(stream_id, 0, [NewEvent(EVENT_TYPE, body) for body in bodies]))
        raw.append(numbering.transaction(stream_id, bodies))
    return Workload(appends, raw)


def single(sizes: Sizes, first_position: int) -> Workload:
    """`single_events` appends of one event each, round-robin over `single_streams` streams,
    each with the stream's current version as its expected version."""
    numbering = _RawNumbering(first_position=first_position)
    appends: list[Append] = []
    raw: list[list[RawRow]] = []
    versions: dict[str, int] = {}
    for k in range(sizes.single_events):
        stream_id = f"S-{k % sizes.single_streams:05d}"
        body = payload(first_position + k)
        expected = versions.get(stream_id, 0)
        appends.append(Append(stream_id, expected, [NewEvent(EVENT_TYPE, body)]))
        versions[stream_id] = expected + 1
        raw.append(numbering.transaction(stream_id, [body]))
    return Workload(appends, raw)


def insert_sql(mark: str) -> str:
    """The raw INSERT: the same statement our store sends, with the driver's placeholder."""
    columns = (*ENVELOPE_FIELDS, "chain_hash")
    marks = ", ".join([mark] * len(columns))
    return f"INSERT INTO events ({', '.join(columns)}) VALUES ({marks})"


SELECT_ALL: Final = f"SELECT {', '.join(ENVELOPE_FIELDS)} FROM events ORDER BY position"
PAYLOAD_COLUMN: Final = ENVELOPE_FIELDS.index("payload")
