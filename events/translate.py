"""The one place where driver errors become the store's own errors (`raise … from e`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from events.engine import unpinged as skip_ping
from events.errors import EventStoreError, SchemaMissing, StoreUnavailable


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
        raise translate(error) from error
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
        raise translate(wrapped) from wrapped
    finally:
        if fairy is not None:
            fairy.close()


def translate(error: sa_exc.DBAPIError) -> EventStoreError:
    text = str(error.orig).lower() if error.orig is not None else str(error).lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return SchemaMissing("The database has no trialflow schema yet: run `trialflow init`.")
    if "database is locked" in text or "database table is locked" in text:
        return StoreUnavailable(
            "The database file is locked by another process and stayed locked past the busy "
            "timeout; nothing was written, try again.",
            retryable=True,
            rule="database_busy",
        )
    if "readonly database" in text or "read-only" in text or "read only" in text:
        return StoreUnavailable(
            "The database is open read-only; nothing was written.",
            retryable=False,
            rule="database_read_only",
        )
    if "database or disk is full" in text or "no space left" in text or "disk full" in text:
        return StoreUnavailable(
            "The database or its disk is full; nothing was written.",
            retryable=False,
            rule="database_full",
        )
    if "permission denied" in text or "insufficient_privilege" in text:
        return StoreUnavailable(
            "The database login is not allowed to do this; nothing was written.",
            retryable=False,
            rule="permission_denied",
        )
    if "unable to open database" in text:
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
        f"The database refused the operation: {error.orig}", retryable=False, rule="database_error"
    )
