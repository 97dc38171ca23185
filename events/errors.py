"""The event store's own error family; driver errors are translated into it in store.py."""

from __future__ import annotations


class EventStoreError(Exception):
    """Base of every error raised by `events/`."""


class InvalidStreamId(EventStoreError):
    """A stream id outside the forms of docs/design.md (bad input)."""


class ConcurrencyConflict(EventStoreError):
    """The stream moved since the caller loaded it; nothing was written (retryable)."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"Stream {stream_id} is at version {actual}, not the expected {expected}; "
            "nothing was written, reload and retry."
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class IdempotencyMismatch(EventStoreError):
    """A command id was reused with other arguments; nothing was written (bad input)."""

    def __init__(self, command_id: str) -> None:
        super().__init__(
            f"Command id {command_id} was already used for a different command; "
            "use a new --command-id."
        )
        self.command_id = command_id


class IntegrityFailure(EventStoreError):
    """The hash chain, a seal or the stored order does not verify."""

    def __init__(self, message: str, *, stream_id: str | None = None, version: int | None = None):
        super().__init__(message)
        self.stream_id = stream_id
        self.version = version


class SchemaMissing(EventStoreError):
    """The database has no trialflow schema yet, or an older one (run `trialflow init`)."""


class StoreUnavailable(EventStoreError):
    """The database refused or could not do the work (locked, read-only, full, gone).

    `retryable` is true when the same call may succeed later (lock timeout, lost connection).
    """

    def __init__(self, message: str, *, retryable: bool, rule: str) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.rule = rule


class InvalidDatabaseUrl(EventStoreError):
    """A database URL that cannot be parsed or names a database other than SQLite and
    PostgreSQL (bad input)."""


class ClockAhead(EventStoreError):
    """A writer's "now" is ahead of the store's clock: a write may not be decided in the
    future (a future `--now` is for reads); nothing was written."""

    def __init__(self, acted_at: object, store_now: object) -> None:
        super().__init__(
            f"The writer's clock ({acted_at}) is ahead of the database's clock ({store_now}); "
            "a write may not be decided in the future, so nothing was written."
        )
        self.acted_at = acted_at
        self.store_now = store_now


def database_full() -> StoreUnavailable:
    """The database or the filesystem holding it has no room left (exit 1)."""
    return StoreUnavailable("The database or its disk is full; nothing was written.",
                            retryable=False, rule="database_full")


def database_read_only() -> StoreUnavailable:
    """A write on a database that is open read-only (exit 1)."""
    return StoreUnavailable("The database is open read-only; nothing was written.",
                            retryable=False, rule="database_read_only")
