"""Authenticated CLI runs for tests: every non-service user gets a password and a live
session, passed as TRIALFLOW_SESSION the way `trialflow login` users do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from events.engine import create_store_engine
from workflow import identity

PASSWORD = "correct-horse-battery"
_engines: dict[str, Engine] = {}
_tokens: dict[tuple[str, str], str] = {}


def acting_user(argv: Sequence[str]) -> str | None:
    for i, token in enumerate(argv):
        if token == "--user" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--user="):
            return token.split("=", 1)[1]
    return None


def database_of(argv: Sequence[str]) -> str | None:
    for i, token in enumerate(argv):
        if token == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--db="):
            return token.split("=", 1)[1]
    return None


def ensure_password(url: str, user: str, password: str = PASSWORD) -> None:
    engine = _engine(url)
    identity.ensure_tables(engine)
    with engine.begin() as conn:
        found = conn.execute(select(identity.credentials.c.name).where(
            identity.credentials.c.name == user)).first()
        if found is None:
            identity.set_password(conn, user, password, datetime.now(UTC))


def session_for(url: str, user: str) -> str:
    key = (url, user)
    if key not in _tokens:
        ensure_password(url, user)
        _tokens[key], _ = identity.create_session(_engine(url), user, datetime.now(UTC), 24)
    return _tokens[key]


def login_environ(argv: Sequence[str], environ: Mapping[str, str] | None = None,
                  url: str | None = None) -> dict[str, str]:
    """`environ` plus a live session of the acting user of `argv` (none for the scheduler,
    nor when no user acts or the database is not known)."""
    env = dict(environ or {})
    user = acting_user(argv)
    db = url or database_of(argv) or env.get("TRIALFLOW_DB")
    if user and user != "scheduler" and db:
        with suppress(Exception):  # a database a test means to be unusable: no session
            env["TRIALFLOW_SESSION"] = session_for(db, user)
    return env


def _engine(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = create_store_engine(url)
    return _engines[url]


def run_cli(argv: Sequence[str], *, stdout: object = None, stderr: object = None,
            stdin: object = None, environ: Mapping[str, str] | None = None) -> int:
    """`cli.app.run` as an authenticated user would call it: a live session for writes, and
    passwords on stdin where a command asks for one (`init --admin`, `users add|passwd`,
    `sign`, `login`) unless the test gives its own stdin."""
    import io

    from cli.app import run

    args = list(argv)
    db = database_of(args)
    env = login_environ(args, environ)
    asks = _passwords_asked(args)
    if asks and stdin is None and "--password-stdin" not in args:
        user = acting_user(args)
        if user and db and "init" not in args:
            with suppress(Exception):
                ensure_password(db, user)
        args.append("--password-stdin")
        stdin = io.StringIO(f"{PASSWORD}\n" * asks)
    return int(run(args, stdout=stdout, stderr=stderr, stdin=stdin,  # type: ignore[arg-type]
                   environ=env))


def _passwords_asked(args: Sequence[str]) -> int:
    if "init" in args and "--admin" in args:
        return 1
    if "users" in args and ("add" in args or "passwd" in args):
        return 2  # the acting admin's, then the new one
    if "sign" in args or "login" in args:
        return 1
    return 0
