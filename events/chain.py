"""Verify the whole log and make or check a signed seal (`trialflow audit verify|seal`).

What `verify` checks, in one ordered pass over the log (memory grows with the number of
streams and commands, not events):
- positions run from 1 to the head without a gap;
- each stream's chain: versions 1, 2, … and each event's `prev_hash` is the hash of the one
  before it in its stream;
- each event's hash is the hash of its stored fields (a changed field or payload);
- the global chain: each event's `chain_hash` links the chain hash of the position before it
  to its own hash (events.envelope.link), so removing any event, even a whole stream, or
  reordering the log breaks it; the chain hash of the head is the log's **root**;
- every payload is a JSON object;
- recorded times never go back along the positions;
- every row of the command table names positions that hold that command's own events, in the
  streams and versions it names (a removed stream is named through its commands).

A seal (format 2) is the root, the head position, every stream's head and the time, signed
with an Ed25519 key held outside the database (events/seals.py). A root (`POSITION:HASH`) is
the same commitment in one line, to publish or e-mail: `verify --root` recomputes the chain
from position 1 and refuses a log whose chain does not pass through it, which detects a
consistent rewrite by someone with full write access as long as one earlier root or seal is
kept outside the database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from events.envelope import GENESIS_HASH, canonical_json, link
from events.errors import IntegrityFailure
from events.seals import SealKey, check_signature, key_id
from events.store import EventStore, format_utc

SEAL_FORMAT = "trialflow-seal/2"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Root:
    """The global chain hash at a position (None: at whichever position it occurs)."""

    hash: str
    position: int | None = None

    def __str__(self) -> str:
        return self.hash if self.position is None else f"{self.position}:{self.hash}"


def parse_root(text: str) -> Root:
    """`POSITION:HASH` as `audit seal` prints it, or a bare HASH; ValueError otherwise."""
    value = text.strip().lower()
    position: int | None = None
    if ":" in value:
        head, _, value = value.partition(":")
        if not head.isdigit() or not 1 <= int(head) <= 2**62:
            raise ValueError(f"{text!r} is not POSITION:HASH (a position from 1)")
        position = int(head)
    if not _HEX64.fullmatch(value):
        raise ValueError(f"{text!r} is not a root: 64 hexadecimal digits, optionally "
                         "preceded by POSITION:")
    return Root(value, position)


@dataclass(frozen=True)
class Verification:
    events: int
    streams: int
    position: int
    heads: dict[str, tuple[int, str]]
    root: str = GENESIS_HASH  # the global chain hash at `position`, recomputed from position 1
    commands: int = 0
    root_checked: Root | None = None


@dataclass
class _Command:
    first: int
    last: int
    count: int = 0
    versions: dict[str, int] = field(default_factory=dict)


@dataclass
class _Findings:
    gap: tuple[int, int] | None = None  # (first missing position, next present position)
    broken: IntegrityFailure | None = None

    def note(self, failure: IntegrityFailure) -> None:
        if self.broken is None:
            self.broken = failure


def verify(store: EventStore, *, root: Root | None = None,
           progress: Callable[[int, int], None] | None = None) -> Verification:
    """Check the whole log (see the module's docstring); raise IntegrityFailure naming the
    first gap, the streams missing and the first broken link, whichever are found.
    `progress(position, head)` is called after each batch read."""
    heads: dict[str, tuple[int, str]] = {}
    commands: dict[str, _Command] = {}
    found = _Findings()
    count, last_position, last_recorded = 0, 0, ""
    stored_chain = chain = GENESIS_HASH
    root_seen: Root | None = None
    loads = json.loads
    head = store.last_position() if progress is not None else 0
    for batch in store.read_chained(batch_size=5000):
        for event, chain_hash in batch:
            position = event.position
            if position != last_position + 1 and found.gap is None:
                found.gap = (last_position + 1, position)
            _check_event(event, heads, last_recorded, found)
            try:
                payload_ok = isinstance(loads(event.payload_text), dict)
            except (TypeError, ValueError):
                payload_ok = False
            if not payload_ok:
                found.note(IntegrityFailure(
                    f"Integrity failure in stream {event.stream_id} version {event.version} "
                    f"(position {position}): its stored payload is not a JSON object.",
                    stream_id=event.stream_id, version=event.version))
            expected = link(stored_chain, event.hash)
            if chain_hash != expected:
                found.note(IntegrityFailure(
                    f"Integrity failure at position {position} (stream {event.stream_id} "
                    f"version {event.version}): the global chain does not link it to position "
                    f"{last_position} (an event before it was removed, inserted or moved).",
                    stream_id=event.stream_id, version=event.version))
            stored_chain = chain_hash
            chain = link(chain, event.hash)
            if root is not None and root_seen is None and chain == root.hash and (
                    root.position in (None, position)):
                root_seen = Root(chain, position)
            command = commands.get(event.command_id)
            if command is None:
                command = commands[event.command_id] = _Command(position, position)
            command.last = position
            command.count += 1
            command.versions[event.stream_id] = event.version
            heads[event.stream_id] = (event.version, event.hash)
            last_position, last_recorded = position, max(last_recorded, event.recorded_at)
            count += 1
        if progress is not None:
            progress(last_position, max(head, last_position))
    missing, checked = _check_commands(store, commands, heads, found)
    _raise(found, missing)
    if root is not None and root_seen is None:
        raise _root_failure(root, last_position)
    return Verification(count, len(heads), last_position, heads, chain, checked, root_seen)


def _check_event(event: Any, heads: dict[str, tuple[int, str]], last_recorded: str,
                 found: _Findings) -> None:
    version, prev = heads.get(event.stream_id, (0, GENESIS_HASH))
    where = f"stream {event.stream_id} version {event.version} (position {event.position})"
    if event.version != version + 1:
        found.note(IntegrityFailure(
            f"Integrity failure in stream {event.stream_id}: version {version + 1} is "
            f"missing or out of order (found version {event.version} at position "
            f"{event.position}).", stream_id=event.stream_id, version=version + 1))
    elif event.prev_hash != prev:
        found.note(IntegrityFailure(
            f"Integrity failure in {where}: it does not link to the previous event's hash.",
            stream_id=event.stream_id, version=event.version))
    if event.computed_hash() != event.hash:
        found.note(IntegrityFailure(
            f"Integrity failure in {where}: its content does not match its hash "
            "(a field or the payload was changed).",
            stream_id=event.stream_id, version=event.version))
    if event.recorded_at < last_recorded:
        found.note(IntegrityFailure(
            f"Integrity failure in {where}: recorded_at goes back in time.",
            stream_id=event.stream_id, version=event.version))


def _check_commands(store: EventStore, commands: dict[str, _Command],
                    heads: dict[str, tuple[int, str]], found: _Findings
                    ) -> tuple[list[str], int]:
    """Each command row against the events that carry its id; the streams a row names whose
    events are gone are the missing streams."""
    missing: dict[str, None] = {}
    checked = 0
    for command_id, text in store.read_commands():
        checked += 1
        try:
            result = json.loads(text)
            positions = [int(p) for p in result["positions"]]
            versions = {str(k): int(v) for k, v in dict(result["versions"]).items()}
        except (TypeError, ValueError, KeyError, AttributeError):
            found.note(IntegrityFailure(
                f"Integrity failure: the command row {command_id} does not hold a readable "
                "result (written outside trialflow)."))
            continue
        seen = commands.get(command_id)
        matches = seen is not None and positions == list(range(seen.first, seen.last + 1)) \
            and seen.count == len(positions) and seen.versions == versions
        if matches:
            continue
        gone = [s for s, v in versions.items() if heads.get(s, (0, ""))[0] < v]
        for stream in gone:
            missing[stream] = None
        if not gone:
            found.note(IntegrityFailure(
                f"Integrity failure: the command row {command_id} names positions "
                f"{_span(positions)} that do not hold its events (the row was written outside "
                "trialflow, or its events were changed)."))
    return list(missing), checked


def _span(positions: list[int]) -> str:
    if not positions:
        return "none"
    return str(positions[0]) if len(positions) == 1 else f"{positions[0]}–{positions[-1]}"


def _raise(found: _Findings, missing: list[str]) -> None:
    if found.gap is None and not missing:
        if found.broken is not None:
            raise found.broken
        return
    parts = []
    if found.gap is not None:
        first, after = found.gap
        parts.append(f"positions {first}–{after - 1} are missing" if after - 1 > first
                     else f"position {first} is missing")
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                           if len(missing) > 10 else "")
        parts.append(f"events of stream{'s' if len(missing) > 1 else ''} {shown} are missing "
                     "(named by their commands)")
    if found.broken is not None:
        parts.append("the first broken link: " + str(found.broken).removeprefix(
            "Integrity failure ").rstrip("."))
    broken = found.broken
    raise IntegrityFailure("Integrity failure: " + "; ".join(parts) + ".",
                           stream_id=broken.stream_id if broken else
                           (missing[0] if missing else None),
                           version=broken.version if broken else None)


def _root_failure(root: Root, head: int) -> IntegrityFailure:
    if root.position is not None and root.position > head:
        return IntegrityFailure(
            f"Integrity failure: the log ends at position {head}, before position "
            f"{root.position} of the root {root.hash[:16]}… (events were removed from its end).")
    where = f"at position {root.position}" if root.position is not None else "at any position"
    return IntegrityFailure(
        f"Integrity failure: the log's chain does not pass through the root {root.hash[:16]}… "
        f"{where}: the log was rewritten up to that point, or the root is from another "
        "database.")


# ---------------------------------------------------------------------------- seals
def seal_body(seal: Mapping[str, Any]) -> bytes:
    """The signed bytes: the canonical JSON of the seal without its signature."""
    return canonical_json({k: v for k, v in seal.items() if k != "signature"}).encode("utf-8")


def make_seal(store: EventStore, key: SealKey, *, now: datetime | None = None) -> dict[str, Any]:
    """Verify, then sign the log's root, head position, every stream's head and the time."""
    result = verify(store)
    seal: dict[str, Any] = {
        "format": SEAL_FORMAT,
        "position": result.position,
        "root": result.root,
        "streams": {stream: {"version": version, "hash": digest}
                    for stream, (version, digest) in sorted(result.heads.items())},
        "sealed_at": format_utc(now or datetime.now(UTC)),
        "key_id": key_id(key.public),
    }
    seal["signature"] = key.sign(seal_body(seal))
    return seal


def parse_seal(text: str, source: str, public: Ed25519PublicKey) -> dict[str, Any]:
    """Read a seal file and check its signature with the auditor's public key; a truncated,
    edited, unsigned or foreign one is refused (IntegrityFailure)."""
    try:
        seal = json.loads(text, parse_constant=_no_constant)
        streams = seal["streams"]
        position = seal["position"]
        root = seal.get("root")
        signature = seal.get("signature")
        ok = isinstance(seal, dict) and _whole(position, 0) and isinstance(streams, dict) and all(
            isinstance(v, dict) and _whole(v.get("version"), 1)
            and isinstance(v.get("hash"), str)
            for v in streams.values()
        )
    except (ValueError, KeyError, TypeError) as error:
        raise IntegrityFailure(f"Seal file {source} is not a readable seal: {error}.") from error
    except RecursionError:  # JSON nested deeper than any seal
        raise IntegrityFailure(f"Seal file {source} is not a readable seal: it is nested "
                               "too deeply.") from None
    if not ok:
        raise IntegrityFailure(f"Seal file {source} is not a readable seal: a position or "
                               "version is not a whole number in range.")
    if seal.get("format") != SEAL_FORMAT or not isinstance(signature, str):
        raise IntegrityFailure(
            f"Seal file {source} carries no signature (an unsigned seal of an earlier "
            "version proves nothing): make a signed one with `trialflow audit seal --key`.")
    check_signature(public, signature, seal_body(seal), source)
    if not isinstance(root, str) or not _HEX64.fullmatch(root):
        raise IntegrityFailure(f"Seal file {source} is not a readable seal: no root.")
    return dict(seal)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a seal holds")


def _whole(value: object, minimum: int) -> bool:
    """A seal's position (from 0) or version (from 1): an int in SQLite's INTEGER range."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and minimum <= value <= 2**63 - 1)


def verify_against_seal(store: EventStore, seal: Mapping[str, Any],
                        progress: Callable[[int, int], None] | None = None) -> Verification:
    """Verify the log, that its chain passes through the sealed root at the sealed position,
    and that every sealed stream still reaches its sealed head."""
    position = int(seal["position"])
    root = Root(str(seal["root"]), position) if position > 0 else None
    result = verify(store, root=root, progress=progress)
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
    return result
