"""Errors the workflow raises; the CLI maps them to exit codes (cli/exit_codes.py)."""

from __future__ import annotations


class WorkflowError(Exception):
    """Base of every error raised by `workflow/`."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        rule: str | None = None,
        subject: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.rule = rule
        self.subject = subject


class InvalidInput(WorkflowError):
    """Bad input or usage: an unknown field, a value of the wrong type or range (exit 2)."""


class RuleViolation(WorkflowError):
    """A command refused by a protocol, role or phase rule; `rule` names it (exit 1)."""
