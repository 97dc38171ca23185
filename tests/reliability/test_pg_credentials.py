"""PostgreSQL passwords (docs/reliability.md, "Passwords"): they come from libpq's own sources
(PGPASSWORD, PGPASSFILE, a service file named in the URL or by PGSERVICE) or from the
TRIALFLOW_DB variable, never from the command line (every user of the machine can read a
process's arguments: `ps`, /proc/PID/cmdline), and no output, log line or error message shows
one.

Against a private server (tests/reliability/pg_server.py) that really asks for passwords:
`scram-sha-256` in pg_hba.conf for the test's login on 127.0.0.1, so a wrong or missing
password really fails. Every command is a real `trialflow` process.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.app import PASSWORD_IN_ARGV, run
from events.engine import hide_passwords, url_has_password
from tests.reliability.pg_server import PrivateServer, free_port, private_server

ROOT = Path(__file__).resolve().parents[2]
TRIALFLOW = str(Path(sys.executable).with_name("trialflow"))
LOGIN = "tf_site"
SECRET = "Zq7-sEcret-pw-42"  # the login's password: must never be shown
WRONG = "Wr0ng-guess-pw-17"  # a wrong one: must never be shown either
ADMIN_PASSWORD = "admin-password-for-tests-1"  # trialflow's own admin (not a database secret)
LOGIN_REFUSED = ("The database server refused the login (an unknown database user, or a wrong "
                 "or missing password: give it with PGPASSFILE, PGPASSWORD, a service file or "
                 "TRIALFLOW_DB); nothing was written.")
SERVER_AWAY = ("Cannot connect to the database server (it is down or restarting); nothing was "
               "written, try again once it is back.")

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    """A private server where LOGIN must prove its password (scram-sha-256) on 127.0.0.1; the
    superuser keeps trust (the test's own setup) and every connection is logged."""
    for found in private_server():
        hba = found.data / "pg_hba.conf"
        hba.write_text("local all all trust\n"
                       "host all postgres 127.0.0.1/32 trust\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
        _admin(found, "ALTER SYSTEM SET password_encryption = 'scram-sha-256'",
               "ALTER SYSTEM SET log_connections = on", "SELECT pg_reload_conf()")
        _admin(found, f"CREATE ROLE {LOGIN} LOGIN PASSWORD '{SECRET}'")
        yield found


def _admin(server: PrivateServer, *statements: str) -> None:
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def database(server: PrivateServer) -> str:
    """A new database owned by LOGIN; its name."""
    name = f"tf_{uuid.uuid4().hex[:10]}"
    _admin(server, f'CREATE DATABASE "{name}" OWNER {LOGIN}')
    return name


def clean_environ(tmp_path: Path) -> dict[str, str]:
    """The environment without any libpq or trialflow setting of the test's own process; no
    password file unless a test names one (HOME is an empty folder: no ~/.pgpass)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "TRIALFLOW_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    env["PGPASSFILE"] = str(tmp_path / "no-such-passfile")
    env["PGSERVICEFILE"] = str(tmp_path / "no-such-servicefile")
    return env


def trialflow(argv: list[str], env: dict[str, str], stdin: str | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRIALFLOW, *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False, input=stdin)


def error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0].removeprefix("Error: ")


def shown(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def url(server: PrivateServer, database: str, *, password: str | None = None,
        port: int | None = None) -> str:
    secret = f":{password}" if password is not None else ""
    return f"postgresql://{LOGIN}{secret}@127.0.0.1:{port or server.port}/{database}"


def write_passfile(tmp_path: Path, server: PrivateServer, database: str, password: str
                   ) -> Path:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{server.port}:{database}:{LOGIN}:{password}\n",
                        encoding="utf-8")
    passfile.chmod(0o600)  # libpq ignores a password file others may read
    return passfile


def write_servicefile(tmp_path: Path, server: PrivateServer, database: str, password: str
                      ) -> Path:
    servicefile = tmp_path / "pg_service.conf"
    servicefile.write_text(f"[trialsite]\nhost=127.0.0.1\nport={server.port}\n"
                           f"dbname={database}\nuser={LOGIN}\npassword={password}\n",
                           encoding="utf-8")
    servicefile.chmod(0o600)
    return servicefile


def source_environ(source: str, server: PrivateServer, database: str, tmp_path: Path,
                   password: str) -> dict[str, str]:
    """The environment of a user who gives `password` through `source`."""
    env = clean_environ(tmp_path)
    if source == "PGPASSWORD":
        env["PGPASSWORD"] = password
        env["TRIALFLOW_DB"] = url(server, database)
    elif source == "PGPASSFILE":
        env["PGPASSFILE"] = str(write_passfile(tmp_path, server, database, password))
        env["TRIALFLOW_DB"] = url(server, database)
    elif source == "service URL":
        env["PGSERVICEFILE"] = str(write_servicefile(tmp_path, server, database, password))
        env["TRIALFLOW_DB"] = "postgresql:///?service=trialsite"
    elif source == "PGSERVICE":
        env["PGSERVICEFILE"] = str(write_servicefile(tmp_path, server, database, password))
        env["PGSERVICE"] = "trialsite"
        env["TRIALFLOW_DB"] = "postgresql://"
    elif source == "TRIALFLOW_DB":
        env["TRIALFLOW_DB"] = url(server, database, password=password)
    elif source == "TRIALFLOW_DB ?password=":
        env["TRIALFLOW_DB"] = url(server, database) + f"?password={password}"
    else:
        raise AssertionError(source)
    return env


SOURCES = ["PGPASSWORD", "PGPASSFILE", "service URL", "PGSERVICE", "TRIALFLOW_DB",
           "TRIALFLOW_DB ?password="]


@pytest.mark.parametrize("source", SOURCES)
def test_each_password_source_logs_in(server: PrivateServer, database: str, tmp_path: Path,
                                      source: str) -> None:
    """`init --admin` (the first write), `audit verify` and a scheduler pass (a write proven by
    the scheduler's secret), and for two sources a person's login and write too, with the
    password from `source`; nothing any of them prints shows it."""
    env = source_environ(source, server, database, tmp_path, SECRET)
    secret_file = tmp_path / "scheduler.secret"
    init = trialflow(["init", "--admin", "ada", "--password-stdin",
                      "--scheduler-secret-file", str(secret_file)], env,
                     stdin=f"{ADMIN_PASSWORD}\n")
    assert init.returncode == 0, shown(init)
    assert init.stdout.startswith("Database postgresql"), init.stdout
    runs = [init]
    if source in ("TRIALFLOW_DB", "PGSERVICE"):
        login = trialflow(["--user", "ada", "--json", "login", "--password-stdin"], env,
                          stdin=f"{ADMIN_PASSWORD}\n")
        assert login.returncode == 0, shown(login)
        session = {**env, "TRIALFLOW_SESSION": json.loads(login.stdout)["token"]}
        write = trialflow(["--user", "ada", "sites", "add", "PKU3", "--tz", "Asia/Shanghai"],
                          session)
        assert write.returncode == 0, shown(write)
        runs += [login, write]
    if source.startswith("TRIALFLOW_DB"):  # `demo` names the database it refuses
        demo = trialflow(["--json", "demo", "--replace", "--no-reports"], env)
        assert demo.returncode == 1, shown(demo)
        body = json.loads(demo.stdout)
        assert body["rule"] == "not_a_demo_database" and f"{LOGIN}:***@" in body["error"]
        runs.append(demo)
    verify = trialflow(["--log-level", "debug", "audit", "verify"], env)
    assert verify.returncode == 0 and verify.stdout.startswith("OK: "), shown(verify)
    tick = trialflow(["--log-level", "debug", "--user", "scheduler", "--secret-file",
                      str(secret_file), "scheduler", "tick"], env)
    assert tick.returncode == 0, shown(tick)
    for done in [*runs, verify, tick]:
        assert SECRET not in shown(done), (source, shown(done))
    assert SECRET not in json.dumps(json.loads(trialflow(
        ["--json", "init"], env).stdout))  # init's JSON names the database too


@pytest.mark.parametrize("source", SOURCES)
def test_a_wrong_password_is_refused_and_never_shown(server: PrivateServer, database: str,
                                                     tmp_path: Path, source: str) -> None:
    env = source_environ(source, server, database, tmp_path, WRONG)  # the only password
    for argv in (["audit", "verify"], ["--json", "status"],
                 ["--log-level", "debug", "--user", "ada", "consent", "S-001", "--on",
                  "2024-09-02", "--consent-form-version", "2.0"]):
        done = trialflow(argv, env)
        assert done.returncode == 1, (argv, shown(done))
        assert WRONG not in shown(done) and SECRET not in shown(done), (argv, shown(done))
        if "--json" in argv:
            body = json.loads(done.stdout)
            assert (body["error"], body["rule"]) == (LOGIN_REFUSED, "database_login_failed")
        elif "debug" in argv:  # the debug log line of the failure comes with it
            assert LOGIN_REFUSED in done.stderr, (argv, shown(done))
        else:
            assert error_line(done.stderr) == LOGIN_REFUSED


def test_a_missing_password_is_refused(server: PrivateServer, database: str,
                                       tmp_path: Path) -> None:
    env = clean_environ(tmp_path)  # no PGPASSWORD, an absent password file, no service
    env["TRIALFLOW_DB"] = url(server, database)
    done = trialflow(["audit", "verify"], env)
    assert done.returncode == 1 and error_line(done.stderr) == LOGIN_REFUSED, shown(done)
    # the right password, a database that is not there: not a lost connection either
    env["PGPASSWORD"] = SECRET
    env["TRIALFLOW_DB"] = url(server, f"{database}_missing")
    done = trialflow(["audit", "verify"], env)
    assert done.returncode == 1, shown(done)
    assert error_line(done.stderr) == (
        f'The database server has no database "{database}_missing": create it (`createdb '
        f'{database}_missing`, or CREATE DATABASE in psql) and run `trialflow init` on it; '
        "nothing was written.")


def test_an_unreachable_server_never_shows_the_password(tmp_path: Path) -> None:
    """Nothing listens on the port: exit 3, and the password is in no line printed."""
    env = clean_environ(tmp_path)
    env["TRIALFLOW_DB"] = (f"postgresql://{LOGIN}:{SECRET}@127.0.0.1:{free_port()}/db"
                           "?connect_timeout=3")
    for argv in (["audit", "verify"], ["--log-level", "debug", "status"],
                 ["--log-level", "debug", "--json", "--user", "ada", "consent", "S-001",
                  "--on", "2024-09-02", "--consent-form-version", "2.0"],
                 ["--log-level", "debug", "--user", "scheduler", "scheduler", "tick"]):
        done = trialflow(argv, env)
        assert done.returncode == 3, (argv, shown(done))
        assert SECRET not in shown(done), (argv, shown(done))
        if "--json" in argv:
            assert json.loads(done.stdout)["error"] == SERVER_AWAY
        else:
            assert SERVER_AWAY in done.stderr, shown(done)


def _connections(server: PrivateServer) -> int:
    """Connections the server has logged so far (log_connections)."""
    return server.log.read_text(errors="replace").count("connection received")


@pytest.mark.parametrize("form", ["--db URL", "--db=URL", "?password=", "after the command"])
def test_a_password_on_the_command_line_is_refused_before_connecting(
        server: PrivateServer, database: str, tmp_path: Path, form: str) -> None:
    """Exit 2 with one sentence naming the ways to give it instead; the server sees no
    connection at all; the password is not printed."""
    with_password = url(server, database, password=SECRET)
    if form == "?password=":
        with_password = url(server, database) + f"?sslmode=disable&password={SECRET}"
    argv = {"--db URL": ["--db", with_password, "audit", "verify"],
            "--db=URL": [f"--db={with_password}", "audit", "verify"],
            "?password=": ["--db", with_password, "--json", "status"],
            "after the command": ["status", "--db", with_password]}[form]
    env = clean_environ(tmp_path)
    before = _connections(server)
    done = trialflow(argv, env)
    assert done.returncode == 2, shown(done)
    assert SECRET not in shown(done)
    if "--json" in argv:
        body = json.loads(done.stdout)
        assert (body["error"], body["rule"]) == (PASSWORD_IN_ARGV, "password_on_command_line")
    else:
        assert error_line(done.stderr) == PASSWORD_IN_ARGV
    # a run that does connect is logged, so the count would have moved
    probe = trialflow(["init"], {**env, "TRIALFLOW_DB": with_password})
    assert probe.returncode == 0, shown(probe)  # (the password itself is right)
    after = _connections(server)
    assert after > before, "the server log does not count connections"
    assert trialflow(argv, env).returncode == 2 and _connections(server) == after


def test_the_refusal_of_a_password_in_argv_needs_no_server() -> None:
    """In process (cli.app.run), for URL forms that do not even parse: exit 2 before any
    engine is built, and the message never holds the password."""
    for with_password in (f"postgresql://u:{SECRET}@127.0.0.1:notaport/x",
                          f"postgres://u:{SECRET}@[::1/x", f"postgresql://h/db?password={SECRET}",
                          f"postgresql+psycopg://u:{SECRET}@h/db"):
        for argv in (["--db", with_password, "status"],
                     ["--json", "--db", with_password, "status"]):
            out, err = io.StringIO(), io.StringIO()
            status = run(argv, stdout=out, stderr=err, environ={})
            assert status == 2, (argv, out.getvalue(), err.getvalue())
            assert SECRET not in out.getvalue() + err.getvalue()
            assert PASSWORD_IN_ARGV in out.getvalue() + err.getvalue()
    for without in ("postgresql://u@h/db", "postgresql:///?service=x", "postgresql://",
                    "sqlite:///trialflow.db", "postgresql://u:@h/db"):
        assert not url_has_password(without), without


def test_no_message_form_shows_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hide_passwords`, the filter every error message passes (cli/app.py) and the one of
    `_shown` (events/engine.py): a URL's `user:password@`, libpq's `password=` (quoted or
    not), and PGPASSWORD's value."""
    cases = {
        f"postgresql://u:{SECRET}@h/db": "postgresql://u:***@h/db",
        f"x postgresql+psycopg://u:{SECRET}@h:5/db?a=1 y":
            "x postgresql+psycopg://u:***@h:5/db?a=1 y",
        f"host=h password={SECRET} user=u": "host=h password=*** user=u",
        f"host=h password='{SECRET} x' user=u": "host=h password=*** user=u",
        f"postgresql://h/db?sslmode=require&password={SECRET}&a=b":
            "postgresql://h/db?sslmode=require&password=***&a=b",
    }
    for text, expected in cases.items():
        assert hide_passwords(text) == expected, text
    monkeypatch.setenv("PGPASSWORD", "env-only-Secret-1")
    assert hide_passwords("it was env-only-Secret-1") == "it was ***"
