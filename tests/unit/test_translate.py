"""Driver errors become the store's own errors with the right rule and retry advice."""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc as sa_exc

from events.translate import translate


def _wrapped(orig: Exception) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError.instance("SELECT 1", {}, orig, type(orig).__mro__[1])


def test_a_sqlite_statement_error_is_not_a_lost_connection() -> None:
    error = translate(_wrapped(sqlite3.OperationalError('near "on": syntax error')))
    assert (error.rule, error.retryable) == ("database_error", False)
    assert "syntax error" in str(error)


def test_sqlite_busy_and_full_keep_their_rules() -> None:
    busy = translate(_wrapped(sqlite3.OperationalError("database is locked")))
    full = translate(_wrapped(sqlite3.OperationalError("database or disk is full")))
    assert (busy.rule, busy.retryable) == ("database_busy", True)
    assert (full.rule, full.retryable) == ("database_full", False)


def test_a_postgres_operational_error_is_a_lost_connection() -> None:
    error = translate(_wrapped(psycopg.OperationalError("server closed the connection")))
    assert (error.rule, error.retryable) == ("connection_lost", True)
