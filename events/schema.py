"""Create or upgrade the database schema: `trialflow init` calls `upgrade`, idempotently."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine

from events.engine import WRITE
from events.errors import SchemaMissing
from events.migrations import all_migrations
from events.translate import translated

MIGRATIONS_LOCK_KEY = 7_320_001  # advisory lock id serialising concurrent `init` on PostgreSQL


def upgrade(engine: Engine) -> list[str]:
    """Apply every migration not yet applied; return the names of those applied now."""
    applied_now: list[str] = []
    with translated(), engine.connect().execution_options(**WRITE) as conn, conn.begin():
        _lock(conn)
        conn.exec_driver_sql(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER NOT NULL PRIMARY KEY,
                 name VARCHAR(200) NOT NULL,
                 applied_at VARCHAR(40) NOT NULL)"""
        )
        done = {row[0] for row in conn.exec_driver_sql("SELECT version FROM schema_migrations")}
        for migration in all_migrations():
            if migration.version in done:
                continue
            migration.upgrade(conn)
            conn.exec_driver_sql(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES "
                + ("(?, ?, ?)" if conn.dialect.name == "sqlite" else "(%s, %s, %s)"),
                (migration.version, migration.name, datetime.now(UTC).isoformat()),
            )
            applied_now.append(f"{migration.version:03d} {migration.name}")
    return applied_now


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATIONS_LOCK_KEY})")


def current_version(engine: Engine) -> int:
    """The highest applied migration, 0 on an empty database."""
    with translated(), engine.connect() as conn:
        try:
            value = conn.exec_driver_sql("SELECT max(version) FROM schema_migrations").scalar()
        except SchemaMissing:
            return 0
    return int(value or 0)


def latest_version() -> int:
    return max(m.version for m in all_migrations())
