"""What makes a command discoverable, applied once when `LazyGroup` loads it: the global
options in its `--help` (they are taken out of the line before Click sees it, so Click would
not list them) and shell completion of its SUBJECT, FORM and field arguments
(cli/completion.py)."""

from __future__ import annotations

import click

from cli.completion import attach_completions

GLOBAL_OPTIONS_HELP = """\b
Global options (before or after the command):
  --db URL          database (env TRIALFLOW_DB; default sqlite:///trialflow.db)
  --user NAME       acting user, required to write (env TRIALFLOW_USER)
  --password-stdin  read passwords from stdin, one per line (else a prompt,
                    or the session in TRIALFLOW_SESSION from `login`)
  --secret-file F   a service account's secret (env TRIALFLOW_SECRET_FILE)
  --json            print exactly one JSON document on stdout
  --log-level LVL   debug, info, warning (default), error
  --version         print the version"""


def with_global_options(command: click.Command) -> click.Command:
    """`command` (and its subcommands) listing the global options after its own in --help."""
    if GLOBAL_OPTIONS_HELP not in (command.epilog or ""):
        command.epilog = (f"{command.epilog}\n\n" if command.epilog else "") + GLOBAL_OPTIONS_HELP
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_global_options(sub)
    return command


def prepare(command: click.Command) -> click.Command:
    """`command` ready to be shown and completed (idempotent)."""
    return with_global_options(attach_completions(command))
