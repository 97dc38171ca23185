"""SQLite: the `events` indexes its reads need, and no more.

Every index is one more page each append writes and syncs (issue 17: of the 9.7 pages a
command's commit wrote on SQLite, 1.6 were the index by type, 1.6 the index by `command_id` and
1.25 the index by `recorded_at`):

- the index by type served one read, the streams that have a query opened (`trialflow
  queries`): a partial index holds only `QueryOpened` events, so only an append that opens a
  query writes it;
- the index by `recorded_at` was to serve one read, the last position recorded at or before a
  moment (the as-of replay), and SQLite's plan for it did not use it: it read the key
  backwards from the head, as `EventStore.position_at` now asks it to;
- the index by `command_id` served one read, the insert guard of `commands` (a command's row
  only with its command's events): the store inserts a command's row right after its events,
  in their transaction, so the guard now asks the log's last event, by the key, and refuses
  more than before (a row for an older command's events too);
- the `commands` table kept a rowid beside its key, two b-trees for one row: it is made again
  `WITHOUT ROWID` (its rows copied, its other triggers made again as they stood).

PostgreSQL keeps its indexes and tables as they are: its append function looks the study's
users up by type, and its commit does not write a page per index the way SQLite's does.
"""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 4
NAME = ("SQLite: events indexed as its reads need (QueryOpened by stream; no recorded_at or "
        "command_id), commands without rowid")

QUERY_OPENED_INDEX = "events_query_opened"

# As migration 3's guard, but the events of a new command's row are the log's last ones: it
# asks the key for the last event instead of an index of every event's command id.
_GUARD_INSERT = """CREATE TRIGGER commands_guard_insert BEFORE INSERT ON commands
    BEGIN
      SELECT RAISE(ABORT, 'commands is append-only: a command id is recorded once')
       WHERE EXISTS (SELECT 1 FROM commands WHERE command_id = NEW.command_id);
      SELECT RAISE(ABORT, 'commands: a command row needs the events of its command')
       WHERE NEW.command_id IS NOT (SELECT command_id FROM events
                                    ORDER BY position DESC LIMIT 1);
    END"""


def upgrade(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_type")
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_recorded_at")
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS {QUERY_OPENED_INDEX} ON events (stream_id) "
        "WHERE type = 'QueryOpened'"
    )
    # the guards of `commands` (append-only, a row only with its events), as they stand
    triggers = conn.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'commands' "
        "ORDER BY name").all()
    conn.exec_driver_sql(
        """CREATE TABLE commands_v4 (
             command_id    VARCHAR(64) NOT NULL PRIMARY KEY,
             request_hash  CHAR(64)    NOT NULL,
             result        TEXT        NOT NULL,
             recorded_at   VARCHAR(40) NOT NULL
           ) WITHOUT ROWID"""
    )
    conn.exec_driver_sql(
        "INSERT INTO commands_v4 (command_id, request_hash, result, recorded_at) "
        "SELECT command_id, request_hash, result, recorded_at FROM commands ORDER BY rowid"
    )
    conn.exec_driver_sql("DROP TABLE commands")  # its triggers with it (no trigger fires)
    conn.exec_driver_sql("ALTER TABLE commands_v4 RENAME TO commands")
    for name, sql in triggers:
        conn.exec_driver_sql(_GUARD_INSERT if name == "commands_guard_insert" else sql)
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_command_id")
