"""SQLite: the `events` index by type kept for the one type looked up by it (`QueryOpened`).

Every append wrote a leaf of `events_type` (1.6 of the 9.7 pages a command's commit wrote and
synced on SQLite, issue 17), for one read: the streams that have a query opened
(`trialflow queries`). A partial index holds only those events, so only an append that opens a
query writes it. PostgreSQL keeps `events_type`: its append function looks the study's users up
by type.
"""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 4
NAME = "SQLite: index events by type only for QueryOpened"

QUERY_OPENED_INDEX = "events_query_opened"


def upgrade(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_type")
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS {QUERY_OPENED_INDEX} ON events (stream_id) "
        "WHERE type = 'QueryOpened'"
    )
