"""The one place where driver errors become the store's own errors (`raise … from e`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc

from events.errors import EventStoreError, SchemaMissing, StoreUnavailable


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except EventStoreError:
        raise
    except sa_exc.DBAPIError as error:
        raise translate(error) from error


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
    if error.connection_invalidated or isinstance(
        error, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return StoreUnavailable(
            "Lost the connection to the database; nothing was confirmed written, retry the "
            "command with the same --command-id.",
            retryable=True,
            rule="connection_lost",
        )
    return StoreUnavailable(
        f"The database refused the operation: {error.orig}", retryable=False, rule="database_error"
    )
