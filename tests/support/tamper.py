"""What an attacker with full write access does: rewrite an event, then rehash its stream and
the global chain so that the log is consistent again (tests of what only seals and roots
catch). The append-only triggers must be disabled first."""

from __future__ import annotations

from sqlalchemy import text

from events.envelope import ENVELOPE_FIELDS, GENESIS_HASH, event_hash, link
from events.store import EventStore


def rechain_with_payload(store: EventStore, stream: str, version: int, payload: str) -> None:
    columns = ", ".join(ENVELOPE_FIELDS)
    with store.engine.begin() as conn:
        rows = [dict(zip(ENVELOPE_FIELDS, r, strict=True)) for r in conn.execute(
            text(f"SELECT {columns} FROM events ORDER BY position"))]
        prev: dict[str, str] = {}
        chain = GENESIS_HASH
        for row in rows:
            if row["stream_id"] == stream and row["version"] == version:
                row["payload"] = payload
            row["prev_hash"] = prev.get(row["stream_id"], GENESIS_HASH)
            row["hash"] = event_hash(row)
            prev[row["stream_id"]] = row["hash"]
            chain = link(chain, row["hash"])
            conn.execute(text("UPDATE events SET payload = :payload, prev_hash = :prev_hash, "
                              "hash = :hash, chain_hash = :chain WHERE position = :position"),
                         {**row, "chain": chain})
