"""The one function that turns an exception into an exit status and a one-line message."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import click
from sqlalchemy import exc as sa_exc

from cli.exit_codes import ExitStatus
from events.errors import (
    ConcurrencyConflict,
    EventStoreError,
    IdempotencyMismatch,
    IntegrityFailure,
    InvalidDatabaseUrl,
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
    if isinstance(error, InvalidDatabaseUrl):
        return Failure(ExitStatus.BAD_INPUT, str(error), "invalid_database_url",
                       {"field": "db"})
    if isinstance(error, SchemaMissing):
        return Failure(ExitStatus.BAD_INPUT, str(error), "schema_missing")
    if isinstance(error, StoreUnavailable):
        status = ExitStatus.CONFLICT if error.retryable else ExitStatus.REFUSED
        return Failure(status, str(error), error.rule, {"retryable": error.retryable})
    if isinstance(error, EventStoreError):
        return Failure(ExitStatus.REFUSED, str(error), "event_store")
    if isinstance(error, click.exceptions.NoArgsIsHelpError):
        return Failure(ExitStatus.BAD_INPUT, _missing_command(error.ctx), "usage")
    if isinstance(error, click.UsageError):
        return Failure(ExitStatus.BAD_INPUT, _usage_message(error), "usage")
    if isinstance(error, click.FileError):
        return Failure(ExitStatus.BAD_INPUT, f"Could not open the file {error.ui_filename}: "
                       f"{_sentence(error.message)}", "file_error")
    if isinstance(error, click.ClickException):
        return Failure(ExitStatus.BAD_INPUT, _sentence(error.format_message()), "usage")
    if isinstance(error, sa_exc.DBAPIError):  # a driver error that escaped the store's mapping
        from events.translate import translate

        return failure_of(translate(error))
    return None


def one_line(text: str) -> str:
    """`text` with every control character, line or paragraph separator escaped (`\\n`,
    `\\x1b`, …): a value echoed into a message cannot break it into lines or recolour a
    terminal."""
    if text.isprintable():
        return text
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in _ESCAPED else c for c in text)


_ESCAPED = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _sentence(text: str) -> str:
    text = " ".join(text.split()) or "no reason given"
    return text if text.endswith((".", "!", "?")) else text + "."


def _missing_command(ctx: click.Context) -> str:
    command = ctx.command
    names = (command.list_commands(ctx) if isinstance(command, click.Group) else [])
    return (f"`{ctx.command_path}` needs a command: {', '.join(names)}. See "
            f"`{ctx.command_path} --help`.")


def _detail(error: WorkflowError) -> dict[str, Any]:
    return {k: v for k, v in (("subject", error.subject), ("field", error.field)) if v}


def _usage_message(error: click.UsageError) -> str:
    # click lists a Choice's values one per line ("Choose from:\n\ta,\n\tb"): one line here
    message = error.format_message().replace(":\n\t", ": ").replace(",\n\t", ", ")
    message = message.rstrip(".") + "."
    if error.ctx is not None:
        message += f" See `{error.ctx.command_path} --help`."
    return message


def output_error(option: str, path: object, error: OSError) -> Exception:
    """An OSError writing an output (--out, --reports) as one sentence: exit 1 when the
    system refuses the write (permissions, a read-only or full disk), else exit 2 (a name
    that is a folder, too long, in a missing folder, …)."""
    import errno

    from workflow.errors import InvalidInput, RuleViolation

    name = str(path) or "''"
    shown = name if len(name) <= 80 else name[:80] + "…"
    reason = (error.strerror or type(error).__name__).rstrip(".")
    message = f"{option} {shown}: {reason}; nothing was written."
    refused = {errno.EACCES: "permission_denied", errno.EPERM: "permission_denied",
               errno.EROFS: "read_only", errno.ENOSPC: "disk_full",
               errno.EDQUOT: "disk_full"}.get(error.errno or 0)
    field = option.lstrip("-")
    if refused is not None:
        return RuleViolation(message, rule=refused, field=field)
    return InvalidInput(message, rule="bad_output_path", field=field)
