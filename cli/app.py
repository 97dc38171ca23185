"""`trialflow`: global options anywhere on the line, lazily imported command groups, and one
wrapper that maps errors to exit codes (cli/errors.py)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import click

from cli.context import Env
from cli.exit_codes import ExitStatus

VERSION = "0.1.0"
DEFAULT_DB = "sqlite:///trialflow.db"
# Global options: name -> takes a value. Accepted before or after the command.
GLOBAL_OPTIONS = {"--db": True, "--user": True, "--log-level": True, "--json": False,
                  "--password-stdin": False, "--secret-file": True,
                  "--version": False}
# Command name -> (module:attribute, one-line help); imported only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("cli.init_cmd:init", "Create or upgrade the database schema (idempotent)."),
    "audit": ("cli.audit:audit", "Audit trail, integrity verification and seals."),
    "calc": ("cli.calc:calc", "Run a clinical instrument (SLEDAI-2K, CRS, BSA, …)."),
    "sites": ("cli.admin:sites", "Sites and their time zones (admin)."),
    "users": ("cli.admin:users", "Users and roles (admin)."),
    "protocol": ("cli.admin:protocol", "Protocol versions: load, amend, show, diagram."),
    "forms": ("cli.admin:forms", "Forms (CRFs) and their fields; --codes: drugs, reasons."),
    "consent": ("cli.subjects:consent", "Register a candidate in screening."),
    "reconsent": ("cli.subjects:reconsent", "Record re-consent after an amendment."),
    "record": ("cli.subjects:record", "Record a form for a subject."),
    "correct": ("cli.subjects:correct", "Correct an earlier record, with a reason."),
    "void": ("cli.subjects:void", "Mark a record entered in error, with a reason."),
    "confirm-eligibility": ("cli.subjects:confirm_eligibility",
                            "Investigator: confirm eligibility and enrol."),
    "screen-fail": ("cli.subjects:screen_fail", "Record a screen failure."),
    "leukapheresis": ("cli.subjects:leukapheresis", "Record cell collection (coi id)."),
    "release": ("cli.subjects:release", "Record product release or failure."),
    "lymphodepletion": ("cli.subjects:lymphodepletion", "Record a lymphodepletion day."),
    "infuse": ("cli.subjects:infuse", "Record the CAR-T infusion (D0)."),
    "visit": ("cli.subjects:visit", "Record a follow-up visit done or missed."),
    "complete": ("cli.subjects:complete", "Complete the study after D360."),
    "off-study": ("cli.subjects:off_study", "Take a subject off study."),
    "query": ("cli.monitoring:query", "Data queries: open (monitor), answer (site), close."),
    "queries": ("cli.monitoring:queries", "List data queries and their state."),
    "sdv": ("cli.monitoring:sdv", "Monitor: mark a form source-verified."),
    "sdv-status": ("cli.monitoring:sdv_status", "Forms and whether they are source-verified."),
    "study": ("cli.monitoring:study", "Study lock (data manager) and unlock (admin)."),
    "status": ("cli.queries:status", "The study, or a subject's phase and next step."),
    "casebook": ("cli.casebook_cmd:casebook", "A subject's record, form by form, with history."),
    "todo": ("cli.worklist:todo", "Every open task across subjects, most urgent first."),
    "subjects": ("cli.worklist:subjects", "One row per subject with its next task."),
    "eligibility": ("cli.queries:eligibility", "Inclusion criteria and exclusions, with "
                    "evidence."),
    "visits": ("cli.queries:visits", "Planned visits, windows, status, reminders due."),
    "deviations": ("cli.queries:deviations", "Protocol deviations."),
    "endpoints": ("cli.queries:endpoints", "SLEDAI-2K, LLDAS, renal response, persistence."),
    "ae": ("cli.queries:ae", "Adverse events, safety windows, SAE clocks."),
    "projections": ("cli.projections_cmd:projections", "Read models: status and rebuild."),
    "login": ("cli.identity_cmd:login", "Start a session (password once, token after)."),
    "logout": ("cli.identity_cmd:logout", "End your sessions."),
    "sign": ("cli.identity_cmd:sign", "Sign a record electronically (password again)."),
    "signatures": ("cli.identity_cmd:signatures", "A subject's signatures, checked."),
    "demo": ("cli.demo_cmd:demo", "A fresh database running the IM19-SLE study story."),
    "report": ("cli.report_cmd:report", "Plots (swimmer, SLEDAI-2K, persistence) and the "
               "monitoring page (HTML)."),
    "scheduler": ("cli.scheduler_cmd:scheduler", "Reminders: run the scheduler or one tick."),
    "reminders": ("cli.scheduler_cmd:reminders", "Issued, delivered, failed, upcoming "
                  "reminders."),
    "export": ("cli.export_cmd:export", "Exports: CDISC ODM, FHIR R5, CSV, visit calendar."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute = entry[0].split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        from cli.discover import prepare  # global options in --help, shell completion

        return prepare(command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


GLOBAL_HELP = """Event-sourced workflow for the IM19 CAR-T study in refractory SLE.

\b
Global options (before or after the command):
  --db URL          database (env TRIALFLOW_DB; default sqlite:///trialflow.db)
  --user NAME       acting user, required to write (env TRIALFLOW_USER)
  --password-stdin  read passwords from stdin, one per line (else a prompt,
                    or the session in TRIALFLOW_SESSION from `login`)
  --secret-file F   a service account's secret (env TRIALFLOW_SECRET_FILE;
                    systemd: $CREDENTIALS_DIRECTORY/trialflow-NAME)
  --json            print exactly one JSON document on stdout
  --log-level LVL   debug, info, warning (default), error
  --version         print the version

\b
Exit codes: 0 done, 1 refused by a rule, 2 bad input or usage,
3 conflict or busy database (retry), 4 integrity failure,
70 internal error, 130 interrupted.
"""


@click.group(cls=LazyGroup, help=GLOBAL_HELP,
             context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    pass


def split_globals(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Take the global options out of argv wherever they stand (up to a bare `--`)."""
    found: dict[str, Any] = {}
    rest: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            rest.extend(items[i:])
            break
        name, eq, value = token.partition("=")
        if name in GLOBAL_OPTIONS:
            if GLOBAL_OPTIONS[name]:
                if not eq:
                    if i + 1 >= len(items):
                        raise click.UsageError(f"Option {name} needs a value.")
                    i += 1
                    value = items[i]
                found[name] = value
            else:
                found[name] = True
        else:
            rest.append(token)
        i += 1
    return found, rest


def run(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
    environ: dict[str, str] | None = None,
    interruptible: bool = False,
) -> int:
    """Run one command line; return its exit status. Tests call this in-process.
    `interruptible` (the console script): Ctrl-C raises KeyboardInterrupt from here on, and
    is reported (exit 130) with what a write did before it."""
    environ = dict(os.environ) if environ is None else environ
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in (argv[:argv.index("--")] if "--" in argv else argv)
    from cli.logging_setup import LEVELS, configure

    configure("warning", err)  # until --log-level is known: never structlog's default stdout
    env: Env | None = None
    level = "warning"
    if interruptible:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_utf8(argv, environ)
        options, rest = split_globals(argv)
        level = str(options.get("--log-level", "warning")).lower()
        if level not in LEVELS:
            raise click.UsageError(f"--log-level must be one of {', '.join(LEVELS)}, not {level}")
        configure(level, err)
        if options.get("--version"):
            out.write(f"trialflow {VERSION}\n")
            return ExitStatus.OK
        db_option = options.get("--db")
        if db_option is not None:
            refuse_password_in_argv(str(db_option))
        env = Env(
            db_url=password_out_of_query(
                str(db_option or environ.get("TRIALFLOW_DB") or DEFAULT_DB)),
            user=options.get("--user") or environ.get("TRIALFLOW_USER") or None,
            json=bool(options.get("--json")),
            log_level=level,
            stdout=out,
            stderr=err,
            stdin=stdin or sys.stdin,
            environ=environ,
            password_stdin=bool(options.get("--password-stdin")),
            secret_file=options.get("--secret-file"),
            db_defaulted=db_option is None and not environ.get("TRIALFLOW_DB"),
        )
        json_mode = env.json
        from cli.render import configure as configure_output

        configure_output(env)  # width and colour of human output
        if "_TRIALFLOW_COMPLETE" in os.environ:  # shell completion: Click knows no globals
            from cli.completion import strip_global_options

            strip_global_options()
        with _redirected(out, err):
            cli.main(args=rest, prog_name="trialflow", standalone_mode=False, obj=env)
        return ExitStatus.OK
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):  # Abort: Ctrl-C at a prompt
        return _interrupted(env, json_mode, out, err)
    except Exception as error:  # mapped below; anything else is an internal error (exit 70)
        return _report(error, json_mode, out, err, level)


PASSWORD_IN_ARGV = (
    "The --db URL carries a password, which every user of this machine can read in the "
    "process list: leave it out and give it with PGPASSFILE, PGPASSWORD or a service file "
    "(postgresql:///?service=NAME), or put the whole URL in the TRIALFLOW_DB environment "
    "variable instead.")


def refuse_password_in_argv(url: str) -> None:
    """A password on the command line is visible to every user of the machine (`ps`,
    /proc/PID/cmdline) for as long as the command runs: refused (exit 2) before anything
    connects."""
    from events.engine import url_has_password
    from workflow.errors import InvalidInput

    if url_has_password(url):
        raise InvalidInput(PASSWORD_IN_ARGV, rule="password_on_command_line", field="db")


def password_out_of_query(url: str) -> str:
    """A URL whose password is a `?password=` setting (libpq's spelling) with it moved into
    the URL's `user:password@`, the place every printer of a URL hides (`init`, `demo`)."""
    from urllib.parse import unquote

    if "password" not in unquote(url).lower():  # nothing to move: SQLAlchemy not needed yet
        return url
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return url  # refused later, with the password hidden (events/engine.py)
    found = [value for key, value in parsed.query.items() if key.lower() == "password"]
    if len(found) != 1 or not isinstance(found[0], str) or parsed.password:
        return url
    keys = [key for key in parsed.query if key.lower() == "password"]
    moved = parsed.difference_update_query(keys).set(username=parsed.username or "",
                                                      password=found[0])
    return moved.render_as_string(hide_password=False)


def check_utf8(argv: Sequence[str], environ: dict[str, str]) -> None:
    """Refuse (exit 2) an argument or a TRIALFLOW_* variable that is not valid UTF-8: Python
    hands such bytes over as surrogate escapes, which no database, hash or JSON takes."""
    from workflow.errors import InvalidInput

    for i, word in enumerate(argv):
        if not is_utf8(word):
            previous = argv[i - 1] if i else ""
            name, equals, _ = word.partition("=")
            if previous.startswith("--") and "=" not in previous:
                what = f"The value of {previous}"
            elif equals and name.startswith("--") and is_utf8(name):
                what = f"The value of {name}"
            elif equals and name.isidentifier():
                what = f"The value of field {name}"
            else:
                what = f"Argument {i + 1}"
            from events.engine import hide_passwords

            raise InvalidInput(f"{what} is not valid UTF-8: {shown_bytes(hide_passwords(word))}.",
                               rule="invalid_utf8", field="argv")
    for name in sorted(environ):
        if name.startswith("TRIALFLOW_") and not is_utf8(environ[name]):
            raise InvalidInput(f"The environment variable {shown_bytes(name)} is not valid "
                               f"UTF-8: {shown_bytes(environ[name])}.", rule="invalid_utf8",
                               field=name if is_utf8(name) else "environment")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_bytes(text: str, limit: int = 200) -> str:
    """`text` for a one-line message: undecodable bytes as \\xNN, control characters escaped,
    cut at `limit` characters."""
    from cli.errors import one_line

    parts = [f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else one_line(c)
             for c in text]
    shown = "".join(parts)
    if len(shown) <= limit:
        return shown
    kept, length = [], 0
    for part in parts:  # cut between characters, never inside an escape
        if length + len(part) > limit:
            break
        kept.append(part)
        length += len(part)
    return "".join(kept) + "…"


def _report(error: Exception, json_mode: bool, out: TextIO, err: TextIO, level: str) -> int:
    from dataclasses import replace

    from cli.errors import Failure, failure_of, one_line
    from cli.render import to_json

    failure = failure_of(error)
    if failure is None:  # a bug: one sentence, the traceback only with --log-level debug
        if level == "debug":
            import traceback

            err.write("".join(traceback.format_exception(error)))
        shown = one_line(str(error))[:300]
        failure = Failure(ExitStatus.INTERNAL_ERROR,
                          f"Internal error ({type(error).__name__}{': ' + shown if shown else ''})"
                          "; run again with --log-level debug for the traceback, and report "
                          "it.", "internal_error")
    from events.engine import hide_passwords

    failure = replace(failure, message=one_line(hide_passwords(failure.message)))
    if json_mode:  # no lone surrogate reaches stdout: a script reads bytes
        document = to_json(failure.to_json())
        out.write(document.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
    else:
        err.write(f"Error: {failure.message}\n")
    import structlog

    structlog.get_logger("trialflow.cli").debug(
        "command failed", rule=failure.rule, exc_info=error
    )
    return int(failure.status)


def _interrupted(env: Env | None, json_mode: bool, out: TextIO, err: TextIO) -> int:
    """Ctrl-C: exit 130 without a traceback. A write that committed before it is reported;
    one that was under way may or may not have committed: its command id says how to find
    out (a repeat with the same id appends nothing and shows the first result)."""
    from cli.render import to_json

    outcome = env.committed() if env is not None else None
    command_id = env.command_id if env is not None else None
    data: dict[str, Any] = {"error": "interrupted", "rule": "interrupted", "detail": {}}
    if outcome is not None:
        result = outcome.result
        message = (f"Interrupted after the command was recorded (command id "
                   f"{result.command_id}, positions "
                   f"{', '.join(map(str, result.positions)) or 'none'}).")
        data["detail"] = {"recorded": True, **result.to_json()}
    elif command_id is not None:
        message = (f"Interrupted while the command was being recorded: it may or may not be; "
                   f"repeat it with --command-id {command_id} to see (a repeat appends "
                   "nothing).")
        data["detail"] = {"recorded": None, "command_id": command_id}
    else:
        message = "Interrupted before any record was written."
    data["error"] = message
    try:
        if json_mode:
            out.write(to_json(data) + "\n")
        else:
            err.write(message + "\n")
    except (OSError, ValueError):
        pass
    return ExitStatus.INTERRUPTED


class _redirected:
    """Point click's own echo (help, usage) at the given streams."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err

    def __enter__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.out, self.err

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self.saved


def main() -> None:
    """The console script (kept here for callers of `cli.app:main`)."""
    from cli import main as entry

    entry()
