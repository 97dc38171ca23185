"""Engines for the two supported databases, with the settings the event log relies on.

SQLite: WAL, synchronous=FULL (a committed clinical record survives power loss), a busy
timeout, foreign keys on, and the driver's own transaction handling switched off so that
writers open with BEGIN IMMEDIATE (they take the write lock before reading the stream head).
PostgreSQL: psycopg 3; appends serialise on a transaction-level advisory lock (store.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

DEFAULT_URL = "sqlite:///trialflow.db"
SQLITE_BUSY_TIMEOUT_MS = 5000
WRITE = {"trialflow_write": True}  # execution option: this connection's transaction writes


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def create_store_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_ms)
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    engine = create_engine(
        url,
        poolclass=NullPool,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
    )
    read_only = "mode=ro" in url

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not read_only:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        writes = conn.get_execution_options().get("trialflow_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
