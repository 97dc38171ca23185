"""What the user presents to prove who acts (the executor verifies it, for every write).

In order:
- a personal PostgreSQL login that is a user of the study: the database authenticated it
  (`--user` may be left out, and must be that login if given);
- a service account's secret file: `--secret-file`, `TRIALFLOW_SECRET_FILE`, or systemd's
  `$CREDENTIALS_DIRECTORY/trialflow-NAME` (docs/identity.md);
- a session token from `trialflow login` in `TRIALFLOW_SESSION` (not with --password-stdin);
- the password: the next line of stdin with `--password-stdin`, else a hidden prompt.
A signature or a credential change always takes the password itself. Reads need none.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import Env
from workflow.errors import InvalidInput, RuleViolation
from workflow.identity import Credential, DatabaseLogin, Password, Secret, SessionToken

SECRET_PREFIX = "trialflow-"  # systemd credential name: trialflow-NAME


def credential(env: Env, *, password: bool = False, prompt: str | None = None) -> Credential:
    """The acting user's credential, read before anything is written. `password`: the
    password itself is needed (a signature, a credential change)."""
    login = _personal_login(env)
    if login is not None:
        if env.user is not None and env.user != login:
            raise RuleViolation(f"The database login is {login}, so it may not act as "
                                f"{env.user}.", rule="identity_mismatch", field="user")
        env.user = login
        if not password:
            return DatabaseLogin(login)
    if not env.user:
        raise RuleViolation("Writing needs an acting user: pass --user NAME.",
                            rule="unknown_user", field="user")
    secret = _secret_file(env)
    if secret is not None:
        return Password(env.user, Secret(secret))
    token = env.environ.get("TRIALFLOW_SESSION")
    if token and not env.password_stdin and not password:
        return SessionToken(env.user, Secret(token))
    return Password(env.user, Secret(read_secret(env, prompt or f"Password for {env.user}")))


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


def _personal_login(env: Env) -> str | None:
    """The PostgreSQL login when it is a user of the study, else None (SQLite: None)."""
    if env.app.engine.dialect.name != "postgresql":
        return None
    from events.translate import translated
    from workflow.study import load_study

    with translated():  # an unreachable server: exit 3, not a crash
        login = env.executor.database_login()
        users = load_study(env.app.store).users
    return login if login in users else None


def _secret_file(env: Env) -> str | None:
    """A service account's secret, from the first file named (none: None). The environment's
    files (TRIALFLOW_SECRET_FILE, $CREDENTIALS_DIRECTORY) stand for service accounts only, so
    a person's session or password is never displaced by them; `--secret-file` is explicit."""
    named = env.secret_file
    if not named:
        folder = env.environ.get("CREDENTIALS_DIRECTORY")
        candidate = Path(folder) / f"{SECRET_PREFIX}{env.user}" if folder else None
        offered = env.environ.get("TRIALFLOW_SECRET_FILE") or (
            str(candidate) if candidate is not None and candidate.is_file() else None)
        # the study is read only when the environment offers a file (a person's write pays
        # for no extra fold of the study stream)
        if offered and _service_account(env):
            named = offered
    if not named:
        return None
    try:
        text = Path(named).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise InvalidInput(f"The secret file {named} cannot be read: "
                           f"{getattr(error, 'strerror', None) or error}.",
                           field="secret_file") from None
    secret = text.strip()
    if not secret:
        raise InvalidInput(f"The secret file {named} is empty.", field="secret_file")
    return secret


def _service_account(env: Env) -> bool:
    from workflow.study import SERVICE_ROLES, load_study

    user = load_study(env.app.store).users.get(env.user or "")
    if user is None:
        return env.user == "scheduler"  # the name `init` gives the service account
    return user.role in SERVICE_ROLES


def write_secret_file(path: Path, secret: str) -> None:
    """Create `path` readable by its owner only (0600), refusing to overwrite a file."""
    import os

    from cli.errors import output_error

    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(f"The secret file {path} exists already; name a new file (an old "
                           "secret is never overwritten).", field="secret_file") from None
    except OSError as error:
        raise output_error("--secret-file", path, error) from error
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
        handle.flush()
        os.fsync(handle.fileno())
