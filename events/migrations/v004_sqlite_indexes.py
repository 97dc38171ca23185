"""SQLite: the `events` indexes its reads need, and no more.

Every index is one more page each append writes and syncs (issue 17: of the 9.7 pages a
command's commit wrote on SQLite, 1.6 were the index by type and 1.25 the index by
`recorded_at`):

- the index by type served one read, the streams that have a query opened (`trialflow
  queries`): a partial index holds only `QueryOpened` events, so only an append that opens a
  query writes it;
- the index by `recorded_at` served one read, the last position recorded at or before a moment
  (the as-of replay): `recorded_at` never goes back along the log (the insert guard of
  migration 3), so the store finds it by reading the key backwards from the head
  (`EventStore.position_at`), which an as-of replay then reads up to anyway.

PostgreSQL keeps both: its append function looks the study's users up by type, and its commits
cost it little per index.
"""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 4
NAME = "SQLite: events indexed as its reads need (QueryOpened by stream; no recorded_at)"

QUERY_OPENED_INDEX = "events_query_opened"


def upgrade(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_type")
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_recorded_at")
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS {QUERY_OPENED_INDEX} ON events (stream_id) "
        "WHERE type = 'QueryOpened'"
    )
