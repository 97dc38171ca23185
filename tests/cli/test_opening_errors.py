"""Opening a database that is not there (issue 16): one sentence naming it and saying how to
create it, exit 1 (`database_unreachable`, not retryable), and nothing created.

- a PostgreSQL database name the server does not have (a private name no test creates);
- a SQLite file that does not exist: no command but `init` and `demo` creates it, reads and
  writes alike; the message names the absolute file and explains relative (three slashes)
  and absolute (four slashes) URLs;
- `trialflow demo` without --db (and TRIALFLOW_DB) writes demo.db, never trialflow.db."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest

from tests.support.pg import PG_HOST, PG_PORT, PG_USER, require_server

READS = [
    ["status"],
    ["status", "S-001"],
    ["visits"],
    ["ae", "list"],
    ["audit", "log", "--all"],
    ["audit", "verify"],
    ["projections", "status"],
    ["projections", "rebuild"],
    ["reminders"],
    ["deviations"],
    ["queries"],
    ["endpoints"],
    ["export", "odm", "--out", "{out}/study.xml"],
    ["export", "csv", "--out", "{out}/csv"],
    ["report", "html", "--out", "{out}/report.html"],
]


def trialflow(argv: list[str], environ: dict[str, str] | None = None,
              stdin: str = "") -> tuple[int, str, str]:
    from cli.app import run

    out, err = io.StringIO(), io.StringIO()
    status = run(argv, stdout=out, stderr=err, stdin=io.StringIO(stdin),
                 environ=dict(environ or {}))
    return int(status), out.getvalue(), err.getvalue()


def json_error(argv: list[str], environ: dict[str, str] | None = None,
               stdin: str = "") -> tuple[int, dict[str, object]]:
    status, out, err = trialflow(["--json", *argv], environ, stdin)
    assert err == "", err
    return status, json.loads(out)


# --- PostgreSQL: a database name the server does not have ---------------------------------


@pytest.fixture
def missing_pg_url() -> str:
    require_server()  # skips, saying why, when no server answers (fails with CI=true)
    name = f"tf_missing_{uuid.uuid4().hex[:12]}"  # private: nothing creates it
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}?connect_timeout=5"


@pytest.mark.postgres
@pytest.mark.parametrize("argv", [
    ["status"],
    ["audit", "verify"],
    ["init"],
    ["--user", "ada", "--password-stdin", "consent", "S-001", "--on", "2024-09-02",
     "--consent-form-version", "2.0"],
    ["demo", "--no-reports"],
], ids=lambda argv: " ".join(a for a in argv if not a.startswith("-"))[:30])
def test_a_missing_postgresql_database_is_named_and_not_retryable(
        missing_pg_url: str, argv: list[str]) -> None:
    name = missing_pg_url.rsplit("/", 1)[1].split("?")[0]
    status, document = json_error(argv, {"TRIALFLOW_DB": missing_pg_url}, stdin="x\n")
    assert status == 1, document
    assert document["rule"] == "database_unreachable", document
    assert document["detail"] == {"retryable": False}, document
    assert document["error"] == (
        f'The database server has no database "{name}": create it (`createdb {name}`, or '
        "CREATE DATABASE in psql) and run `trialflow init` on it; nothing was written.")
    status, out, err = trialflow(argv, {"TRIALFLOW_DB": missing_pg_url}, stdin="x\n")
    assert (status, out) == (1, "")
    assert err.startswith("Error: The database server has no database") and name in err
    assert "retry" not in err and "Lost the connection" not in err


# --- SQLite: a file that does not exist -----------------------------------------------------


@pytest.mark.parametrize("argv", READS, ids=lambda argv: " ".join(argv[:2]))
def test_a_read_never_creates_a_missing_sqlite_file(tmp_path: Path, argv: list[str]) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "nowhere.db"
    url = f"sqlite:///{path}"
    argv = [a.format(out=tmp_path) for a in argv]
    status, document = json_error(["--db", url, *argv])
    assert status == 1, document
    assert document["rule"] == "database_unreachable", document
    message = str(document["error"])
    assert message.startswith(f"There is no database file {path} "), message
    assert f"trialflow init --db {url}" in message, message
    assert "absolute path" in message and "three slashes" in message, message
    assert not list(folder.iterdir()), "nothing is created, not even an empty file"


@pytest.mark.parametrize("argv", [
    ["--user", "ada", "--password-stdin", "sites", "add", "X", "--tz", "UTC"],
    ["--user", "cora", "--password-stdin", "consent", "S-001", "--on", "2024-09-02",
     "--consent-form-version", "2.0"],
    ["--user", "ada", "--password-stdin", "login"],
    ["--user", "scheduler", "scheduler", "tick"],
], ids=lambda argv: next(a for a in argv[2:] if not a.startswith("-")))
def test_a_write_never_creates_a_missing_sqlite_file(tmp_path: Path, argv: list[str]) -> None:
    path = tmp_path / "nowhere.db"
    secret = tmp_path / "secret"
    secret.write_text("not-a-real-secret\n")
    environ = {"TRIALFLOW_SECRET_FILE": str(secret)}
    status, out, err = trialflow(["--db", f"sqlite:///{path}", *argv], environ,
                                 stdin="a-password\n")
    assert (status, out) == (1, ""), err
    assert err.startswith(f"Error: There is no database file {path} "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_relative_url_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, err = trialflow(["--db", "sqlite:///study.db", "status"])
    assert (status, out) == (1, "")
    assert err == (
        f"Error: There is no database file {tmp_path / 'study.db'} (the URL sqlite:///study.db "
        f"gives a path relative to the working directory {tmp_path}; an absolute path takes "
        "four slashes, sqlite:////path/NAME.db): create it with `trialflow init --db "
        "sqlite:///study.db`, or give the URL of an existing one; nothing was read or "
        "written.\n")
    assert not list(tmp_path.iterdir())


def test_the_default_database_is_not_created_by_a_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status, _, err = trialflow(["visits"])  # no --db, no TRIALFLOW_DB: trialflow.db
    assert status == 1 and "trialflow.db" in err and "trialflow init" in err, err
    assert not (tmp_path / "trialflow.db").exists()


def test_init_creates_the_file_and_reads_then_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    status, _, err = trialflow(["--db", url, "init"])
    assert status == 0, err
    assert (tmp_path / "new.db").exists()
    status, _, err = trialflow(["--db", url, "--json", "projections", "status"])
    assert status == 0, err


def test_an_existing_file_without_schema_is_still_schema_missing(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    status, document = json_error(["--db", f"sqlite:///{path}", "status"])
    assert (status, document["rule"]) == (2, "schema_missing"), document


# --- demo: never the production default -----------------------------------------------------


def test_demo_without_db_writes_demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, err = trialflow(["--json", "demo", "--no-reports"])
    assert status == 0, out + err
    assert json.loads(out)["database"] == "sqlite:///demo.db"
    assert (tmp_path / "demo.db").exists()
    assert not (tmp_path / "trialflow.db").exists()
    status, out, err = trialflow(["--json", "demo", "--no-reports"])  # no --replace
    assert status == 1 and json.loads(out)["rule"] == "database_not_empty", out
