"""The append-only `events` table, its indexes and the triggers that refuse change."""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 1
NAME = "events table with append-only triggers"

_COLUMNS = """
    stream_id       VARCHAR(64)  NOT NULL,
    version         INTEGER      NOT NULL,
    type            VARCHAR(100) NOT NULL,
    schema_version  INTEGER      NOT NULL,
    payload         TEXT         NOT NULL,
    occurred_at     VARCHAR(40)  NOT NULL,
    recorded_at     VARCHAR(40)  NOT NULL,
    actor           VARCHAR(100) NOT NULL,
    role            VARCHAR(40)  NOT NULL,
    site            VARCHAR(40),
    reason          TEXT,
    command_id      VARCHAR(64)  NOT NULL,
    correlation_id  VARCHAR(64)  NOT NULL,
    causation_id    VARCHAR(64),
    prev_hash       CHAR(64)     NOT NULL,
    hash            CHAR(64)     NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_version_positive CHECK (version >= 1)
"""

_INDEXES = (
    "CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at)",
    "CREATE INDEX IF NOT EXISTS events_command_id ON events (command_id)",
    "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
)

_SQLITE_TRIGGERS = tuple(
    f"""CREATE TRIGGER IF NOT EXISTS events_refuse_{op.lower()} BEFORE {op} ON events
        BEGIN SELECT RAISE(ABORT, 'events is append-only: {op} refused'); END"""
    for op in ("UPDATE", "DELETE")
)

_POSTGRES_TRIGGERS = (
    """CREATE OR REPLACE FUNCTION trialflow_refuse_change() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION USING
           MESSAGE = TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused',
           ERRCODE = 'insufficient_privilege';
       END $$""",
    """CREATE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
       FOR EACH ROW EXECUTE FUNCTION trialflow_refuse_change()""",
    """CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
       FOR EACH STATEMENT EXECUTE FUNCTION trialflow_refuse_change()""",
    "REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC",
)


def upgrade(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"CREATE TABLE events (position INTEGER NOT NULL PRIMARY KEY, {_COLUMNS})"
        )
        statements = _INDEXES + _SQLITE_TRIGGERS
    else:
        conn.exec_driver_sql(
            f"CREATE TABLE events (position BIGINT NOT NULL PRIMARY KEY, {_COLUMNS})"
        )
        statements = _INDEXES + _POSTGRES_TRIGGERS
    for statement in statements:
        conn.exec_driver_sql(statement)
