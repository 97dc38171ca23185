"""The `commands` table: one row per command id, so a repeat appends nothing (idempotency)."""

from __future__ import annotations

from sqlalchemy import Connection

VERSION = 2
NAME = "commands table for idempotent appends"


def upgrade(conn: Connection) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE commands (
             command_id    VARCHAR(64) NOT NULL PRIMARY KEY,
             request_hash  CHAR(64)    NOT NULL,
             result        TEXT        NOT NULL,
             recorded_at   VARCHAR(40) NOT NULL
           )"""
    )
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"""CREATE TRIGGER commands_refuse_{op.lower()} BEFORE {op} ON commands
                    BEGIN SELECT RAISE(ABORT, 'commands is append-only: {op} refused'); END"""
            )
    else:
        conn.exec_driver_sql(
            """CREATE TRIGGER commands_refuse_update_delete BEFORE UPDATE OR DELETE ON commands
               FOR EACH ROW EXECUTE FUNCTION trialflow_refuse_change()"""
        )
        conn.exec_driver_sql(
            """CREATE TRIGGER commands_refuse_truncate BEFORE TRUNCATE ON commands
               FOR EACH STATEMENT EXECUTE FUNCTION trialflow_refuse_change()"""
        )
        conn.exec_driver_sql("REVOKE UPDATE, DELETE, TRUNCATE ON commands FROM PUBLIC")
