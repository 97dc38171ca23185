"""Engines for the two supported databases, with the settings the event log relies on.

SQLite: WAL, synchronous=FULL (a committed clinical record survives power loss), a busy
timeout, foreign keys on, and the driver's own transaction handling switched off so that
writers open with BEGIN IMMEDIATE (they take the write lock before reading the stream head).
The connections of a file database are pooled (SQLAlchemy's QueuePool, as for any file
database): each is opened and configured once, not per command; closing the last connection
of a WAL database checkpoints and removes the WAL, which NullPool did on every command. The
pool never makes a caller wait (its overflow is unbounded, as NullPool's was); SQLite's own
locks, not the pool, serialise writers across threads and processes. An in-memory database
keeps SQLAlchemy's default (one connection per thread).
The busy timeout is 5 s unless the URL sets another with `?timeout=SECONDS` (the sqlite3
driver's own spelling, e.g. `sqlite:///trialflow.db?timeout=0.5`).
PostgreSQL: psycopg 3; appends serialise on a transaction-level advisory lock (store.py).
Connections are pinged on checkout like `pool_pre_ping`, by a listener the event store can
switch off for its own checkouts (see `_postgres_engine`).

Pooled connections must not cross a fork: a child process starts with empty pools (the
parent's connections are left to the parent), see `_forget_pools_after_fork`.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from events.errors import InvalidDatabaseUrl

DEFAULT_URL = "sqlite:///trialflow.db"
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_POOL_SIZE = 5  # connections kept open per engine (more are opened, then closed, on demand)
WRITE = {"trialflow_write": True}  # execution option: this connection's transaction writes

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_FRESH = "trialflow_fresh"  # connection-record info key: not yet checked out
_UNPINGED: ContextVar[bool] = ContextVar("trialflow_unpinged", default=False)


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def create_store_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise InvalidDatabaseUrl(f"The database URL {_shown(url)} is not a URL such as "
                                 "sqlite:///trialflow.db or postgresql://host/db.") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise InvalidDatabaseUrl(f"The database URL {_shown(url)} names {_shown(backend)}; "
                                 "only SQLite (sqlite:///FILE) and PostgreSQL "
                                 "(postgresql://…) are supported.")
    try:
        if backend == "sqlite":
            timeout = parsed.query.get("timeout")  # seconds, as sqlite3 and SQLAlchemy spell it
            if isinstance(timeout, str):
                busy_timeout_ms = _busy_timeout_ms(timeout)
            engine = _sqlite_engine(url, busy_timeout_ms)
        else:
            engine = _postgres_engine(url)
    except (sa_exc.ArgumentError, ImportError, ValueError, OverflowError) as error:
        raise InvalidDatabaseUrl(f"The database URL {_shown(url)} cannot be used: "
                                 f"{str(error).rstrip('.') or type(error).__name__}."
                                 ) from error
    _ENGINES.add(engine)
    return engine


def _busy_timeout_ms(seconds: str) -> int:
    """The busy timeout a SQLite URL asks for (`?timeout=0.5`: half a second); a value that
    is no number raises ValueError, as SQLAlchemy's own parsing of it does."""
    return max(0, int(float(seconds) * 1000))


def _shown(text: str) -> str:
    """A URL for a message: its password hidden (also in a URL that does not parse), at most
    80 characters."""
    try:
        text = make_url(text).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        text = _USERINFO.sub(r"\1:***@", text)
    return repr(text if len(text) <= 80 else text[:80] + "…")


_USERINFO = re.compile(r"(//[^/:@]*):[^/@]*@")  # `//user:password@` of a URL


def _postgres_engine(url: str) -> Engine:
    """A pool whose connections are pinged on checkout, exactly as `pool_pre_ping=True` does
    (a dead one is replaced, and the connections older than it are recycled), except for a
    checkout made inside `unpinged()`: the event store proves a connection alive with its own
    first round trip instead, and retries on a fresh one when that trip finds it dead
    (events/store.py), which saves a round trip per command."""
    engine = create_engine(url, pool_size=2, max_overflow=4)
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True  # a new connection needs no ping (nor does pre-ping)

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop(_FRESH, False) or _UNPINGED.get():
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if not dialect.is_disconnect(error, dbapi_connection, None):
                raise
            alive = False
        if not alive:  # the pool reconnects, and recycles the connections older than this
            raise sa_exc.InvalidatePoolError("the connection failed its ping")

    return engine


@contextmanager
def unpinged() -> Iterator[None]:
    """Checkouts in this block skip the ping: the caller's first round trip is the check."""
    token = _UNPINGED.set(True)
    try:
        yield
    finally:
        _UNPINGED.reset(token)


def _is_file_database(url: str) -> bool:
    parsed = make_url(url)
    return bool(parsed.database) and parsed.database != ":memory:" and (
        parsed.query.get("mode") != "memory"
    )


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    pool_args: dict[str, Any] = {}
    if _is_file_database(url):  # QueuePool, SQLAlchemy's choice for file databases
        pool_args = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": -1}
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        **pool_args,
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


def _forget_pools_after_fork() -> None:
    """In a forked child, drop the pools' references to the parent's connections without
    closing them (SQLAlchemy's `dispose(close=False)` recipe): a SQLite or PostgreSQL
    connection must never be used by two processes."""
    for engine in list(_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)
