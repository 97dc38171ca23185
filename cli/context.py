"""What every command receives: global options, output streams and the lazily built app."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from workflow.bootstrap import App
    from workflow.commands.executor import Executor, Outcome


@dataclass
class Env:
    db_url: str
    user: str | None = None
    json: bool = False
    log_level: str = "warning"
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    environ: dict[str, str] = field(default_factory=dict)  # the environment run() was given
    password_stdin: bool = False  # passwords are read from stdin, one per line
    secret_file: str | None = None  # --secret-file: a service account's secret
    command_id: str | None = None  # of the write under way (reported if interrupted)
    db_defaulted: bool = False  # neither --db nor TRIALFLOW_DB: db_url is the default
    creates_database: bool = False  # `init`: a missing SQLite file is created, not refused

    @property
    def stdout_is_terminal(self) -> bool:
        return bool(getattr(self.stdout, "isatty", lambda: False)())

    @cached_property
    def app(self) -> App:
        from workflow.bootstrap import build_app

        return build_app(self.db_url, create=self.creates_database)

    @cached_property
    def executor(self) -> Executor:
        """The one door for writes (workflow/commands/executor.py)."""
        from workflow.commands.executor import Executor

        return Executor(self.app)

    def committed(self) -> Outcome | None:
        """The outcome of a write this command committed, if any."""
        executor = self.__dict__.get("executor")
        return None if executor is None else executor.last_outcome
