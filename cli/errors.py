"""The one function that turns an exception into an exit status and a one-line message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from cli.exit_codes import ExitStatus
from events.errors import (
    ConcurrencyConflict,
    EventStoreError,
    IdempotencyMismatch,
    IntegrityFailure,
    InvalidStreamId,
    SchemaMissing,
    StoreUnavailable,
)
from workflow.errors import InvalidInput, RuleViolation, WorkflowError


@dataclass(frozen=True)
class Failure:
    status: ExitStatus
    message: str
    rule: str | None = None
    detail: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "rule": self.rule, "detail": self.detail or {}}


def failure_of(error: BaseException) -> Failure | None:
    """Map a known error to its exit status; None for a bug (shown with a traceback)."""
    if isinstance(error, RuleViolation):
        return Failure(ExitStatus.REFUSED, error.message, error.rule, _detail(error))
    if isinstance(error, InvalidInput):
        return Failure(ExitStatus.BAD_INPUT, error.message, error.rule or "invalid_input",
                       _detail(error))
    if isinstance(error, WorkflowError):
        return Failure(ExitStatus.REFUSED, error.message, error.rule, _detail(error))
    if isinstance(error, ConcurrencyConflict):
        return Failure(ExitStatus.CONFLICT, str(error), "concurrency_conflict",
                       {"stream": error.stream_id, "expected_version": error.expected,
                        "actual_version": error.actual})
    if isinstance(error, IdempotencyMismatch):
        return Failure(ExitStatus.BAD_INPUT, str(error), "command_id_reused",
                       {"command_id": error.command_id})
    if isinstance(error, IntegrityFailure):
        return Failure(ExitStatus.INTEGRITY, str(error), "integrity",
                       {"stream": error.stream_id, "version": error.version})
    if isinstance(error, InvalidStreamId):
        return Failure(ExitStatus.BAD_INPUT, str(error), "invalid_stream_id")
    if isinstance(error, SchemaMissing):
        return Failure(ExitStatus.BAD_INPUT, str(error), "schema_missing")
    if isinstance(error, StoreUnavailable):
        status = ExitStatus.CONFLICT if error.retryable else ExitStatus.REFUSED
        return Failure(status, str(error), error.rule, {"retryable": error.retryable})
    if isinstance(error, EventStoreError):
        return Failure(ExitStatus.REFUSED, str(error), "event_store")
    if isinstance(error, click.UsageError):
        return Failure(ExitStatus.BAD_INPUT, _usage_message(error), "usage")
    if isinstance(error, click.ClickException):
        return Failure(ExitStatus.BAD_INPUT, error.format_message(), "usage")
    return None


def _detail(error: WorkflowError) -> dict[str, Any]:
    return {k: v for k, v in (("subject", error.subject), ("field", error.field)) if v}


def _usage_message(error: click.UsageError) -> str:
    message = error.format_message().rstrip(".") + "."
    if error.ctx is not None:
        message += f" See `{error.ctx.command_path} --help`."
    return message
