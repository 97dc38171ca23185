"""Exit codes of every `trialflow` command (docs/cli.md lists them)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    REFUSED = 1  # refused by a rule; the message names the rule
    BAD_INPUT = 2  # bad input or usage; also a command id reused with other arguments
    CONFLICT = 3  # retryable: the stream moved, the database was busy or the connection lost
    INTEGRITY = 4  # integrity failure: a chain, seal or stored order does not verify
    INTERNAL_ERROR = 70  # an unexpected error (a bug): one sentence; traceback with debug logs
    INTERRUPTED = 130  # Ctrl-C (SIGINT): what a write did before it is reported
