"""Authenticated CLI runs for tests: every person acts with a live session started through the
executor (`login`), passed as TRIALFLOW_SESSION the way `trialflow login` users do; the
scheduler presents its secret file; passwords go on stdin where a command asks for one.

A user whose password an admin set (temporary) changes it to the same test password first, as
that user would at their first login (through the executor, like every credential change)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from events.engine import create_store_engine
from tests.support.study import PASSWORD, SCHEDULER, SCHEDULER_SECRET, TEST_KDF
from workflow import identity

_tokens: dict[tuple[str, str], str] = {}
_secret_files: dict[str, Path] = {}
_folder = Path(tempfile.mkdtemp(prefix="trialflow-test-secrets-"))


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


def _executor(url: str) -> object:
    from workflow.bootstrap import build_app
    from workflow.commands.executor import Executor

    return Executor(build_app(url, kdf=TEST_KDF))


def session_for(url: str, user: str) -> str:
    """A live session of `user` on `url` (a cached one is checked first)."""
    from workflow.commands.executor import Executor
    from workflow.commands.messages import ChangePassword
    from workflow.identity import Password, Secret
    from workflow.study import load_study

    key = (url, user)
    token = _tokens.get(key)
    if token is not None:
        engine = create_store_engine(url)
        try:
            row = identity.session_of(engine, token)
        finally:
            engine.dispose()
        if row is not None and row.name == user:
            return token
    executor = _executor(url)
    assert isinstance(executor, Executor)
    try:
        if user not in load_study(executor.store).users:
            raise LookupError(f"{user} is not a user of the study: no session to start")
        proof = Password(user, Secret(PASSWORD))
        if user in load_study(executor.store).temporary_passwords:
            executor.execute(ChangePassword(user, Secret(PASSWORD)), proof)
        _tokens[key], _ = executor.login(proof, 24)
    finally:
        executor.engine.dispose()
    return _tokens[key]


def secret_file_for(url: str) -> Path:
    """The scheduler's secret file: the one `init` wrote for this database when the test ran
    `init --admin` through `run_cli`, else one holding the secret `new_study` gives it."""
    found = _secret_files.get(url)
    if found is not None and found.exists():
        return found
    path = _folder / "new-study-scheduler.secret"
    if not path.exists():
        path.write_text(SCHEDULER_SECRET + "\n", encoding="utf-8")
    return path


def login_environ(argv: Sequence[str], environ: Mapping[str, str] | None = None,
                  url: str | None = None) -> dict[str, str]:
    """`environ` plus the acting user's proof: a live session for a person, the secret file
    for the scheduler (none when no user acts or the database is not known)."""
    env = dict(environ or {})
    user = acting_user(argv)
    db = url or database_of(argv) or env.get("TRIALFLOW_DB")
    if not db:
        return env
    if user == SCHEDULER or (user is None and "scheduler" in argv):
        if "--secret-file" not in argv and "TRIALFLOW_SECRET_FILE" not in env:
            env["TRIALFLOW_SECRET_FILE"] = str(secret_file_for(db))
    elif user:
        with suppress(Exception):  # a database a test means to be unusable: no session
            env["TRIALFLOW_SESSION"] = session_for(db, user)
    return env


def run_cli(argv: Sequence[str], *, stdout: object = None, stderr: object = None,
            stdin: object = None, environ: Mapping[str, str] | None = None) -> int:
    """`cli.app.run` as an authenticated user would call it: a live session for writes, and
    passwords on stdin where a command asks for one (`init --admin`, `users add|passwd`,
    `sign`, `login`) unless the test gives its own stdin. `init --admin` writes the
    scheduler's secret to a file of its own per database."""
    import io

    from cli.app import run

    args = list(argv)
    db = database_of(args)
    if "init" in args and "--admin" in args and "--scheduler-secret-file" not in args and db:
        target = _folder / f"scheduler-{len(_secret_files)}.secret"
        target.unlink(missing_ok=True)
        _secret_files[db] = target
        args += ["--scheduler-secret-file", str(target)]
    env = login_environ(args, environ)
    asks = _passwords_asked(args)
    if asks and stdin is None and "--password-stdin" not in args:
        args.append("--password-stdin")
        stdin = io.StringIO(f"{PASSWORD}\n" * asks)
    status = int(run(args, stdout=stdout, stderr=stderr, stdin=stdin,  # type: ignore[arg-type]
                     environ=env))
    added = _added_person(args)
    if status == 0 and added and db:
        session_for(db, added)  # the new user's first login: they set their own password
    return status


def _added_person(args: Sequence[str]) -> str | None:
    """NAME of `users add NAME` (a person: no --secret-out), else None."""
    if "--secret-out" in args:
        return None
    for i in range(len(args) - 2):
        if args[i] == "users" and args[i + 1] == "add":
            return args[i + 2]
    return None


def _passwords_asked(args: Sequence[str]) -> int:
    if "init" in args and "--admin" in args:
        return 1
    if "users" in args and ("add" in args or "passwd" in args):
        return 1 if "--secret-out" in args else 2  # the acting user's, then the new one
    if "sign" in args or "login" in args:
        return 1
    return 0
