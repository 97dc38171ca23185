"""Authentication of writes (21 CFR Part 11 §11.10(d), §11.300): who is `--user`?

A write is accepted when one of these proves the acting user:
- PostgreSQL with a personal login: the database authenticated it, and the acting user must
  be that login (`session_user`); nobody can write as someone else (docs/identity.md);
- a live session token from `trialflow login` in `TRIALFLOW_SESSION`;
- the password, from `--password-stdin` (first line of stdin) or a prompt on a terminal.
The `scheduler` service user needs none and may append only reminder events.
Reads need no password: whoever can open the database can read it.
"""

from __future__ import annotations

from datetime import datetime

import click

from cli.context import Env
from workflow import identity
from workflow.errors import InvalidInput, RuleViolation


def read_secret(env: Env, prompt: str) -> str:
    """The next line of stdin with --password-stdin, else a hidden prompt on a terminal."""
    if env.password_stdin:
        try:
            line = env.stdin.readline()
            line.encode("utf-8")
        except UnicodeError:  # bytes that are not UTF-8 (decoded strictly or as surrogates)
            raise InvalidInput(f"{prompt} on stdin (--password-stdin) is not valid UTF-8.",
                               rule="invalid_utf8", field="password") from None
        if not line:
            raise RuleViolation(f"{prompt} was expected on stdin (--password-stdin) but stdin "
                                "ended.", rule="authentication_required", field="password")
        return line.rstrip("\r\n")
    if getattr(env.stdin, "isatty", lambda: False)():
        return str(click.prompt(prompt, hide_input=True, err=True))
    raise RuleViolation(f"{prompt} is needed: pass --password-stdin (one line per password) "
                        "or run on a terminal.", rule="authentication_required",
                        field="password")


def database_login(env: Env) -> str | None:
    """The PostgreSQL login when it is a user of the study (a personal login), else None."""
    engine = env.app.engine
    if engine.dialect.name != "postgresql":
        return None
    from events.translate import translated

    with translated(), engine.connect() as conn:  # an unreachable server: exit 3, not a crash
        login = str(conn.exec_driver_sql("SELECT session_user").scalar_one())
    from events.streams import STUDY_STREAM
    from workflow.study import fold_study

    study = fold_study(env.app.store.read_stream(STUDY_STREAM))
    return login if login in study.users else None


def authenticate(env: Env, *, now: datetime | None = None) -> str:
    """The authenticated acting user, or RuleViolation (exit 1) saying how to authenticate."""
    login = database_login(env)
    if login is not None:
        if env.user is not None and env.user != login:
            raise RuleViolation(f"The database login is {login}, so it may not write as "
                                f"{env.user}.", rule="identity_mismatch", field="user")
        env.user = login
        return login
    if not env.user:
        raise RuleViolation("Writing needs an acting user: pass --user NAME.",
                            rule="unknown_user", field="user")
    if env.user == "scheduler":
        return env.user  # the service user: only reminder events, checked by the workflow
    moment = now or env.app.clock()
    token = env.environ.get("TRIALFLOW_SESSION")
    if token and not env.password_stdin:
        identity.check_session(env.app.engine, env.user, token, moment)
        return env.user
    identity.verify_password(env.app.engine, env.user,
                             read_secret(env, f"Password for {env.user}"))
    return env.user
