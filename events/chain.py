"""Verify every stream's hash chain and produce or check a seal (`trialflow audit …`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from events.envelope import GENESIS_HASH, canonical_json
from events.errors import IntegrityFailure
from events.store import EventStore, format_utc


@dataclass(frozen=True)
class Verification:
    events: int
    streams: int
    position: int
    heads: dict[str, tuple[int, str]]


def verify(store: EventStore) -> Verification:
    """Recompute every chain in one ordered pass; raise IntegrityFailure at the first break.

    Detects a changed payload or field (hash), a removed or reordered event (version gap,
    prev_hash), and recorded times that go backwards along the global order. Memory grows
    with the number of streams, not events.
    """
    heads: dict[str, tuple[int, str]] = {}
    count = 0
    last_position = 0
    last_recorded = ""
    for event in store.read_all(batch_size=5000):
        version, prev = heads.get(event.stream_id, (0, GENESIS_HASH))
        where = f"stream {event.stream_id} version {event.version} (position {event.position})"
        if event.version != version + 1:
            raise IntegrityFailure(
                f"Integrity failure in stream {event.stream_id}: version {version + 1} is "
                f"missing or out of order (found version {event.version} at position "
                f"{event.position}).",
                stream_id=event.stream_id, version=version + 1,
            )
        if event.prev_hash != prev:
            raise IntegrityFailure(
                f"Integrity failure in {where}: it does not link to the previous event's hash.",
                stream_id=event.stream_id, version=event.version,
            )
        if event.computed_hash() != event.hash:
            raise IntegrityFailure(
                f"Integrity failure in {where}: its content does not match its hash "
                "(a field or the payload was changed).",
                stream_id=event.stream_id, version=event.version,
            )
        if event.recorded_at < last_recorded:
            raise IntegrityFailure(
                f"Integrity failure in {where}: recorded_at goes back in time.",
                stream_id=event.stream_id, version=event.version,
            )
        heads[event.stream_id] = (event.version, event.hash)
        last_position, last_recorded = event.position, event.recorded_at
        count += 1
    return Verification(count, len(heads), last_position, heads)


def seal_root(position: int, streams: Mapping[str, Mapping[str, Any]]) -> str:
    body = canonical_json({"position": position, "streams": streams})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def make_seal(store: EventStore, *, now: datetime | None = None) -> dict[str, Any]:
    """Verify, then describe every stream's head; the root hashes position and heads."""
    result = verify(store)
    streams = {
        stream: {"version": version, "hash": digest}
        for stream, (version, digest) in sorted(result.heads.items())
    }
    return {
        "root": seal_root(result.position, streams),
        "streams": streams,
        "position": result.position,
        "sealed_at": format_utc(now or datetime.now(UTC)),
    }


def parse_seal(text: str, source: str) -> dict[str, Any]:
    """Read a seal file; a truncated or edited one is refused (IntegrityFailure)."""
    try:
        seal = json.loads(text, parse_constant=_no_constant)
        streams = seal["streams"]
        position = seal["position"]
        root = str(seal["root"])
        ok = _whole(position, 0) and isinstance(streams, dict) and all(
            isinstance(v, dict) and _whole(v.get("version"), 1)
            and isinstance(v.get("hash"), str)
            for v in streams.values()
        )
    except (ValueError, KeyError, TypeError) as error:
        raise IntegrityFailure(f"Seal file {source} is not a readable seal: {error}.") from error
    if not ok:
        raise IntegrityFailure(f"Seal file {source} is not a readable seal: a position or "
                               "version is not a whole number in range.")
    if seal_root(position, streams) != root:
        raise IntegrityFailure(
            f"Seal file {source} was altered: its root does not match its content."
        )
    return dict(seal)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a seal holds")


def _whole(value: object, minimum: int) -> bool:
    """A seal's position (from 0) or version (from 1): an int in SQLite's INTEGER range."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and minimum <= value <= 2**63 - 1)


def verify_against_seal(store: EventStore, seal: Mapping[str, Any]) -> Verification:
    """Verify the chains, then check that every sealed stream still reaches its sealed head."""
    result = verify(store)
    for stream, sealed in seal["streams"].items():
        version, digest = int(sealed["version"]), str(sealed["hash"])
        current = result.heads.get(stream)
        if current is None or current[0] < version:
            have = 0 if current is None else current[0]
            raise IntegrityFailure(
                f"Integrity failure in stream {stream}: the seal records version {version} but "
                f"the stream ends at version {have} (events were removed from its end).",
                stream_id=stream, version=version,
            )
        stored = store.read_stream(stream, up_to_version=version)[-1]
        if stored.hash != digest:
            raise IntegrityFailure(
                f"Integrity failure in stream {stream} version {version}: it differs from the "
                "sealed event (the stream was rewritten).",
                stream_id=stream, version=version,
            )
    if result.position < int(seal["position"]):
        raise IntegrityFailure(
            f"Integrity failure: the log ends at position {result.position}, before the sealed "
            f"position {seal['position']}."
        )
    return result
