"""The one place where driver errors become the store's own errors (`raise … from e`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from events.engine import hide_passwords, out_of_room
from events.engine import unpinged as skip_ping
from events.errors import (
    EventStoreError,
    SchemaMissing,
    StoreUnavailable,
    database_full,
    database_read_only,
)


def _not_the_pipeline_echo(record: logging.LogRecord) -> bool:
    """psycopg logs a warning when a pipeline block ends with an error and the connection is
    gone ("error ignored terminating <Pipeline>: the connection is lost"). The store raises
    that block's own error, translated into one sentence, so the echo is dropped: it would
    be a second, raw line on the user's stderr."""
    return not str(record.msg).startswith("error ignored terminating")


logging.getLogger("psycopg").addFilter(_not_the_pipeline_echo)

# Why a connection to PostgreSQL could not be opened, when the server is away for a while
_SERVER_AWAY = ("connection refused", "the database system is starting up",
                "the database system is shutting down", "the database system is in recovery",
                "the database system is not yet accepting connections")


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except EventStoreError:
        raise
    except sa_exc.DBAPIError as error:
        raise translate(error) from error


def lost_connection(error: BaseException) -> bool:
    """Whether a translated error came from a connection found dead (and invalidated)."""
    cause = error.__cause__
    return isinstance(cause, sa_exc.DBAPIError) and bool(cause.connection_invalidated)


@contextmanager
def driver_connection(engine: Engine, *, unpinged: bool = False) -> Iterator[Any]:
    """A pooled connection as the driver's own object (`sqlite3` / `psycopg`), for the store's
    hot paths, which need no SQL construction or result processing from SQLAlchemy.

    It comes from the engine's pool (with its connect-time settings and, unless `unpinged`, its
    checkout ping) and goes back to it afterwards, where the pool rolls back whatever is still
    open. A driver error is wrapped exactly as SQLAlchemy would wrap it (`DBAPIError.instance`)
    and then translated like any other; a connection the dialect finds dead is invalidated so
    the pool replaces it (`lost_connection` tells the caller, who may then retry).
    """
    dialect = engine.dialect
    dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
    fairy = None
    try:
        if unpinged:
            with skip_ping():
                fairy = engine.raw_connection()
        else:
            fairy = engine.raw_connection()
        yield fairy.driver_connection
    except EventStoreError:
        raise
    except sa_exc.DBAPIError as error:
        raise translate(error, engine) from error
    except dbapi_error as error:
        driver = fairy.driver_connection if fairy is not None else None
        lost = bool(dialect.is_disconnect(error, driver, None))  # type: ignore[arg-type]
        if lost and fairy is not None:
            fairy.invalidate(error)
        wrapped = sa_exc.DBAPIError.instance(
            None, None, error, dbapi_error, connection_invalidated=lost, dialect=dialect
        )
        if not isinstance(wrapped, sa_exc.DBAPIError):  # pragma: no cover - never for DB-API
            raise wrapped from error
        raise translate(wrapped, engine) from wrapped
    finally:
        if fairy is not None:
            fairy.close()


# SQLSTATE of a lock not granted within lock_timeout (or at once, NOWAIT): psycopg's
# LockNotAvailable
LOCK_NOT_AVAILABLE = "55P03"
# Why PostgreSQL refused to log in (libpq's and the server's wording)
_LOGIN_REFUSED = ("password authentication failed", "no password supplied",
                  "no pg_hba.conf entry", "pg_hba.conf rejects connection",
                  "authentication failed for user")


def missing_database(text: str) -> StoreUnavailable:
    """A PostgreSQL database that does not exist: its name and how to create it (exit 1,
    not retryable: waiting does not make it)."""
    import re
    import shlex

    found = re.search(r'database "(.*)" does not exist', text)
    if found is None:
        return StoreUnavailable(
            "The database server has no database of the name the URL gives: create it "
            "(createdb NAME) and run `trialflow init` on it; nothing was written.",
            retryable=False, rule="database_unreachable")
    name = found.group(1)
    return StoreUnavailable(
        f'The database server has no database "{name}": create it (`createdb '
        f'{shlex.quote(name)}`, or CREATE DATABASE in psql) and run `trialflow init` on it; '
        "nothing was written.", retryable=False, rule="database_unreachable")


def translate(error: sa_exc.DBAPIError, engine: Engine | None = None) -> EventStoreError:
    """The store's own error for a driver error. `engine`, when the caller knows it, is the
    one whose database failed (for a SQLite I/O error: is its filesystem full?)."""
    text = str(error.orig).lower() if error.orig is not None else str(error).lower()
    sqlite_code = str(getattr(error.orig, "sqlite_errorname", "") or "")
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return SchemaMissing("The database has no trialflow schema yet: run `trialflow init`.")
    if text.startswith("identity_mismatch:"):  # the append function (migration 3)
        detail = str(error.orig).split(":", 1)[1].strip().split("\n", 1)[0].rstrip(".")
        return StoreUnavailable(
            f"The database refused the write: {detail}; nothing was written.",
            retryable=False,
            rule="identity_mismatch",
        )
    if getattr(error.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        return StoreUnavailable(
            "Another database session held a lock this command needs past the lock timeout; "
            "nothing was written, try again.",
            retryable=True,
            rule="database_busy",
        )
    if "database is locked" in text or "database table is locked" in text:
        return StoreUnavailable(
            "The database file is locked by another process and stayed locked past the busy "
            "timeout; nothing was written, try again.",
            retryable=True,
            rule="database_busy",
        )
    if "readonly database" in text or "read-only" in text or "read only" in text:
        return database_read_only()
    if "database or disk is full" in text or "no space left" in text or "disk full" in text:
        return database_full()
    # SQLite says "disk I/O error" (SQLITE_IOERR_*: its WAL index, -shm, cannot grow; a sync
    # fails) or "unable to open database file" (its -wal cannot be created) where the real
    # cause is a full filesystem: that is how it is reported when the database's filesystem
    # has no room left
    io_error = sqlite_code.startswith("SQLITE_IOERR") or "disk i/o error" in text
    cannot_open = sqlite_code == "SQLITE_CANTOPEN" or "unable to open database" in text
    if (io_error or cannot_open) and out_of_room(engine):
        return database_full()
    if io_error:
        return StoreUnavailable(
            "The database file could not be read or written (a disk I/O error); nothing was "
            "confirmed written, check the disk and try again.",
            retryable=False,
            rule="database_io_error",
        )
    if any(reason in text for reason in _LOGIN_REFUSED) or (
            'role "' in text and "does not exist" in text):
        return StoreUnavailable(
            "The database server refused the login (an unknown database user, or a wrong or "
            "missing password: give it with PGPASSFILE, PGPASSWORD, a service file or "
            "TRIALFLOW_DB); nothing was written.",
            retryable=False,
            rule="database_login_failed",
        )
    if 'database "' in text and "does not exist" in text:
        return missing_database(str(error.orig) if error.orig is not None else str(error))
    if "permission denied" in text or "insufficient_privilege" in text:
        return StoreUnavailable(
            "The database login is not allowed to do this; nothing was written.",
            retryable=False,
            rule="permission_denied",
        )
    if cannot_open:
        return StoreUnavailable(
            "The database file cannot be opened.", retryable=False, rule="database_unreachable"
        )
    if any(reason in text for reason in _SERVER_AWAY):
        return StoreUnavailable(
            "Cannot connect to the database server (it is down or restarting); nothing was "
            "written, try again once it is back.",
            retryable=True,
            rule="connection_lost",
        )
    # A file database has no connection to lose: SQLite's other OperationalErrors (a bad
    # statement, a disk I/O error) are refusals, never "retry the same command".
    embedded = type(error.orig).__module__.startswith("sqlite3")
    if error.connection_invalidated or (not embedded and isinstance(
        error, sa_exc.OperationalError | sa_exc.InterfaceError
    )):
        return StoreUnavailable(
            "Lost the connection to the database; nothing was confirmed written, retry the "
            "command with the same --command-id.",
            retryable=True,
            rule="connection_lost",
        )
    return StoreUnavailable(
        hide_passwords(f"The database refused the operation: {error.orig}"), retryable=False,
        rule="database_error",
    )
