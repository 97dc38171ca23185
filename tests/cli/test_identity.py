"""Identity and signatures (21 CFR Part 11) through the CLI: every write proves who acts, the
side doors an attacker with nothing but the CLI would try are shut, a signature is bound to the
exact record it signs. Runs `cli.app.run` in-process with explicit stdin and environment (no
test helper logs anyone in)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cli.app import run
from workflow import identity
from workflow.bootstrap import build_app

GOOD = "correct-horse-battery"  # ada's
PASSWORDS = {"cora": "blue-lantern-4821", "ivan": "quiet-harbor-7305"}
ROOT = Path(__file__).resolve().parents[2]


def call(db: str, *argv: str, stdin: str | None = None,
         environ: dict[str, str] | None = None) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    args = ["--db", db, "--json", *argv]
    if stdin is not None:
        args.append("--password-stdin")
    status = run(args, stdout=out, stderr=err, stdin=io.StringIO(stdin or ""),
                 environ=environ or {})
    body = out.getvalue()
    return status, (json.loads(body) if body.strip() else ""), err.getvalue()


def last_position(db: str) -> int:
    return build_app(db).store.last_position()


def types_after(db: str, position: int) -> list[str]:
    return [e.type for e in build_app(db).store.read_all(after=position)]


def credential_of(db: str, name: str) -> tuple[str, str] | None:
    stored = identity.stored_credential(build_app(db).engine, name)
    return None if stored is None else (stored.salt, stored.hash)


def login(db: str, user: str) -> dict[str, str]:
    status, data, err = call(db, "--user", user, "login", stdin=f"{PASSWORDS[user]}\n")
    assert status == 0, (data, err)
    return {"TRIALFLOW_SESSION": data["token"]}


@pytest.fixture
def study(tmp_path: Path) -> str:
    """ada (admin) and the scheduler from `init`; cora and ivan added by ada with a first
    password, which each then changes (to the same, here) as a new user must."""
    db = f"sqlite:///{tmp_path / 'trialflow.db'}"
    status, data, err = call(db, "init", "--admin", "ada", stdin=f"{GOOD}\n")
    assert status == 0, (data, err)
    assert Path(data["scheduler_secret_file"]) == tmp_path / "trialflow.scheduler-secret"
    assert call(db, "--user", "ada", "sites", "add", "PKU3", "--tz", "Asia/Shanghai",
                stdin=f"{GOOD}\n")[0] == 0
    for name, role in (("cora", "coordinator"), ("ivan", "investigator")):
        status, data, err = call(db, "--user", "ada", "users", "add", name, "--role", role,
                                 "--site", "PKU3", stdin=f"{GOOD}\n{PASSWORDS[name]}\n")
        assert status == 0, (data, err)
        status, data, err = call(db, "--user", name, "users", "passwd", name,
                                 stdin=f"{PASSWORDS[name]}\n{PASSWORDS[name]}\n")
        assert status == 0, (data, err)
    return db


def consent(db: str, user: str = "cora", subject: str = "S-001", **kw: Any
            ) -> tuple[int, Any, str]:
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    return call(db, "--user", user, "consent", subject, "--on", on, "--consent-form-version",
                "2.0", **kw)


# ---------------------------------------------------------------------- credentials in the log
def test_the_log_records_that_credentials_changed_never_the_hash(study: str) -> None:
    events = list(build_app(study).store.read_all())
    changed = [e for e in events if e.type == "CredentialsChanged"]
    assert [(e.payload["name"], e.payload["by"], e.payload["temporary"]) for e in changed] == [
        ("ada", "ada", False), ("scheduler", "ada", False), ("cora", "ada", True),
        ("cora", "cora", False), ("ivan", "ada", True), ("ivan", "ivan", False)]
    with build_app(study).engine.connect() as conn:
        hashes = [r[0] for r in conn.execute(text("SELECT hash FROM credentials"))]
    assert len(hashes) == 4
    log = " ".join(e.payload_text for e in events)
    assert not any(h in log for h in hashes) and "scrypt" not in log


def test_a_write_without_authentication_is_refused_and_writes_nothing(study: str) -> None:
    before = last_position(study)
    status, data, _ = consent(study)
    assert status == 1 and data["rule"] == "authentication_required"
    assert "--password-stdin" in data["error"]
    assert last_position(study) == before
    status, data, _ = consent(study, stdin="wrong-password-000\n")
    assert status == 1 and data["rule"] == "authentication_failed" and "cora" in data["error"]
    assert types_after(study, before) == ["AuthenticationFailed"]  # the attempt, nothing else
    status, data, _ = consent(study, stdin=f"{PASSWORDS['cora']}\n")
    assert status == 0 and build_app(study).store.read_stream("S-001")[0].actor == "cora"


def test_login_session_spoofing_expiry_and_logout(study: str) -> None:
    session = login(study, "cora")
    before = last_position(study)
    # another user's name with cora's session: refused, recorded as a failed attempt
    status, data, _ = consent(study, user="ivan", environ=session)
    assert status == 1 and data["rule"] == "authentication_failed"
    assert types_after(study, before) == ["AuthenticationFailed"]
    assert consent(study, environ=session)[0] == 0
    # an expired session (made through the executor: the store keeps only the token's hash)
    from workflow.commands.executor import Executor
    from workflow.identity import Password, Secret

    old_clock = datetime.now(UTC) - timedelta(hours=9)
    app = build_app(study, clock=lambda: old_clock)
    old, _ = Executor(app).login(Password("ivan", Secret(PASSWORDS["ivan"])), 8)
    status, data, _ = call(study, "--user", "ivan", "record", "S-001", "vitals",
                           "weight_kg=60", environ={"TRIALFLOW_SESSION": old})
    assert status == 1 and data["rule"] == "session_expired"
    # logout needs the user's credential: no credential, a wrong password, someone's name
    status, data, _ = call(study, "--user", "cora", "logout")
    assert status == 1 and data["rule"] == "authentication_required"
    status, data, _ = call(study, "--user", "cora", "logout", stdin="not-her-password\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    status, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                           "weight_kg=60", environ=session)
    assert status == 0  # her session survived both attempts
    status, data, _ = call(study, "--user", "cora", "logout", environ=session)
    assert status == 0 and data["ended"] == 1
    status, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                           "weight_kg=61", environ=session)
    assert status == 1 and data["rule"] == "authentication_failed"


def test_a_deactivated_user_cannot_write_even_with_the_right_password(study: str) -> None:
    assert call(study, "--user", "ada", "users", "deactivate", "cora",
                stdin=f"{GOOD}\n")[0] == 0
    before = last_position(study)
    status, data, _ = consent(study, stdin=f"{PASSWORDS['cora']}\n")
    assert status == 1 and data["rule"] == "user_deactivated"
    status, data, _ = call(study, "--user", "cora", "login", stdin=f"{PASSWORDS['cora']}\n")
    assert status == 1 and data["rule"] == "user_deactivated"
    assert last_position(study) == before


def test_passwords_are_set_by_admins_or_their_owner(study: str) -> None:
    status, data, _ = call(study, "--user", "cora", "users", "passwd", "ivan",
                           stdin=f"{PASSWORDS['cora']}\nsilver-comet-5512\n")
    assert status == 1 and data["rule"] == "role"
    assert call(study, "--user", "cora", "users", "passwd", "cora",
                stdin=f"{PASSWORDS['cora']}\namber-meadow-2290\n")[0] == 0
    status, data, _ = consent(study, stdin=f"{PASSWORDS['cora']}\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    assert consent(study, stdin="amber-meadow-2290\n")[0] == 0
    status, data, _ = call(study, "--user", "ada", "users", "passwd", "ivan",
                           stdin=f"{GOOD}\nshort\n")
    assert status == 2 and "at least" in data["error"]


# ---------------------------------------------------------------------- the side doors
def test_the_service_account_cannot_take_over_an_account(study: str, tmp_path: Path) -> None:
    """`--user scheduler users passwd ada`: refused before anything is touched, with or
    without the scheduler's own secret; ada's credential, sessions and log stay as they were."""
    secret_file = tmp_path / "trialflow.scheduler-secret"
    status, data, _ = call(study, "--user", "ada", "login", stdin=f"{GOOD}\n")
    ada_session = {"TRIALFLOW_SESSION": data["token"]}
    before, row = last_position(study), credential_of(study, "ada")
    status, data, _ = call(study, "--user", "scheduler", "users", "passwd", "ada",
                           stdin="attacker-password-1\nattacker-password-1\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    status, data, _ = call(study, "--user", "scheduler", "--secret-file", str(secret_file),
                           "users", "passwd", "ada", stdin="attacker-password-1\n")
    assert status == 1 and data["rule"] == "role"
    assert credential_of(study, "ada") == row
    assert "CredentialsChanged" not in types_after(study, before)
    assert call(study, "--user", "ada", "sites", "add", "X", "--tz", "UTC",
                environ=ada_session)[0] == 0  # ada's session still works
    # nor can it write anything but reminders
    status, data, _ = call(study, "--user", "scheduler", "--secret-file", str(secret_file),
                           "consent", "S-009", "--on", "2024-09-02", "--consent-form-version",
                           "2")
    assert status == 1 and data["rule"] == "role"


def test_an_admin_cannot_act_as_someone_else(study: str) -> None:
    """An admin may reset ivan's password, but it is temporary: with it, nothing can be
    written or signed as ivan until ivan (or whoever holds it) changes it, which the log
    shows; the last admin cannot be deactivated."""
    assert consent(study, stdin=f"{PASSWORDS['cora']}\n")[0] == 0
    position = build_app(study).store.read_stream("S-001")[0].position
    status, data, _ = call(study, "--user", "ada", "users", "passwd", "ivan",
                           stdin=f"{GOOD}\nada-chose-this-1\n")
    assert status == 0 and data["temporary"] is True
    before = last_position(study)
    for argv in (("sign", "S-001", str(position), "--meaning", "approved"),
                 ("confirm-eligibility", "S-001"), ("login",)):
        status, data, _ = call(study, "--user", "ivan", *argv, stdin="ada-chose-this-1\n")
        assert status == 1 and data["rule"] == "password_change_required", argv
    assert last_position(study) == before
    status, data, _ = call(study, "--user", "ada", "users", "deactivate", "ada",
                           stdin=f"{GOOD}\n")
    assert status == 1 and data["rule"] == "last_admin"


def test_exports_are_recorded_only_in_a_proven_name(study: str, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    before = last_position(study)
    status, data, _ = call(study, "--user", "ivan", "export", "fhir", "--out", str(out))
    assert status == 1 and data["rule"] == "authentication_required"
    status, data, _ = call(study, "--user", "ivan", "export", "fhir", "--out", str(out),
                           stdin="not-his-password\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    assert not out.exists()  # nothing exported in an unproven name
    assert "ExportRecorded" not in types_after(study, before)
    status, data, _ = call(study, "--user", "ivan", "export", "fhir", "--out", str(out),
                           environ=login(study, "ivan"))
    assert status == 0 and data["recorded"] is True and out.exists()
    recorded = build_app(study).store.read_all(after=data["record_position"] - 1)
    assert next((e.type, e.actor) for e in recorded) == ("ExportRecorded", "ivan")
    status, data, _ = call(study, "export", "fhir", "--out", str(tmp_path / "y.json"))
    assert status == 0 and data["recorded"] is False  # no --user: written, not recorded


def test_guessing_locks_the_account(study: str) -> None:
    """21 CFR 11.300(d): 30 wrong passwords, then the right one: refused; every attempt is in
    `audit log study` and counted in `status`; an admin unlocks."""
    for _ in range(30):
        status, data, _ = consent(study, stdin="a-wrong-guess-1\n")
        assert status == 1 and data["rule"] in ("authentication_failed", "account_locked")
    status, data, _ = consent(study, stdin=f"{PASSWORDS['cora']}\n")
    assert status == 1 and data["rule"] == "account_locked"
    assert build_app(study).store.read_stream("S-001") == []
    _, trail, _ = call(study, "audit", "log", "study")
    kinds = [e["type"] for e in trail["events"]]
    assert kinds.count("AuthenticationFailed") == 31 and kinds.count("AccountLocked") == 1
    failed = next(e for e in trail["events"] if e["type"] == "AuthenticationFailed")
    assert failed["payload"]["name"] == "cora" and failed["actor"] == "unauthenticated"
    _, status_data, _ = call(study, "status")
    assert status_data["failed_authentications"] == 31
    assert status_data["locked_accounts"] == ["cora"]
    assert call(study, "--user", "ada", "users", "unlock", "cora", "--reason",
                "called the site", stdin=f"{GOOD}\n")[0] == 0
    assert consent(study, stdin=f"{PASSWORDS['cora']}\n")[0] == 0


def test_demo_never_replaces_a_study_it_did_not_make(study: str) -> None:
    before = last_position(study)
    status, data, _ = call(study, "demo", "--replace", "--no-reports")
    assert status == 1 and data["rule"] == "not_a_demo_database"
    assert last_position(study) == before


@pytest.mark.postgres
def test_demo_refuses_a_postgres_database_holding_a_study(postgres_url: str) -> None:
    from tests.support.clock import FakeClock
    from tests.support.study import new_study

    new_study(postgres_url, FakeClock(datetime.now(UTC)))
    before = last_position(postgres_url)
    with_password = postgres_url.replace("//postgres@", "//postgres:hunter2secret@")
    status, data, err = call(with_password, "demo", "--replace", "--no-reports")
    assert status == 2 and data["rule"] == "password_on_command_line"  # seen in `ps`
    assert "hunter2secret" not in json.dumps(data) + err
    out, err_out = io.StringIO(), io.StringIO()
    status = run(["--json", "demo", "--replace", "--no-reports"], stdout=out, stderr=err_out,
                 environ={"TRIALFLOW_DB": with_password})
    data, err = json.loads(out.getvalue()), err_out.getvalue()
    assert status == 1 and data["rule"] == "not_a_demo_database"
    assert "hunter2secret" not in json.dumps(data) + err  # never a password on screen
    assert last_position(postgres_url) == before


# ---------------------------------------------------------------------- exit codes
def test_an_unexpected_error_exits_70_in_one_sentence(study: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import projections.queries

    def broken(*_: Any, **__: Any) -> Any:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(projections.queries, "study_status", broken)
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", study, "status"], stdout=out, stderr=err, environ={}) == 70
    (line,) = err.getvalue().splitlines()
    assert line.startswith("Error: Internal error (ZeroDivisionError: simulated bug)")
    assert "Traceback" not in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", study, "--json", "status"], stdout=out, stderr=err, environ={}) == 70
    assert json.loads(out.getvalue())["rule"] == "internal_error"
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", study, "--log-level", "debug", "status"], stdout=out, stderr=err,
               environ={}) == 70
    assert "Traceback" in err.getvalue() and "ZeroDivisionError" in err.getvalue()


def test_ctrl_c_after_the_commit_reports_the_result(study: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.subjects

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.subjects, "show", interrupted)
    out, err = io.StringIO(), io.StringIO()
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    status = run(["--db", study, "--user", "cora", "--password-stdin", "consent", "S-001",
                  "--on", on, "--consent-form-version", "2.0", "--command-id", "c-1"],
                 stdout=out, stderr=err, stdin=io.StringIO(f"{PASSWORDS['cora']}\n"),
                 environ={})
    assert status == 130
    [event] = build_app(study).store.read_stream("S-001")
    # (click starts a new line after ^C on a terminal)
    assert err.getvalue().strip() == (f"Interrupted after the command was recorded (command id "
                                      f"c-1, positions {event.position}).")


def test_ctrl_c_during_the_write_names_the_command_id(study: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from events.store import EventStore

    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(EventStore, "append_streams", interrupted)
    out, err = io.StringIO(), io.StringIO()
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    status = run(["--db", study, "--user", "cora", "--password-stdin", "--json", "consent",
                  "S-001", "--on", on, "--consent-form-version", "2.0", "--command-id", "c-2"],
                 stdout=out, stderr=err, stdin=io.StringIO(f"{PASSWORDS['cora']}\n"),
                 environ={})
    assert status == 130 and "Traceback" not in err.getvalue()
    body = json.loads(out.getvalue())
    assert body["rule"] == "interrupted" and body["detail"]["command_id"] == "c-2"
    assert "--command-id c-2" in body["error"]


def test_ctrl_c_at_a_prompt_exits_130_and_writes_nothing(study: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    def aborted(*_: Any, **__: Any) -> str:
        raise click.exceptions.Abort

    monkeypatch.setattr(click, "prompt", aborted)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    before = last_position(study)
    out, err = io.StringIO(), io.StringIO()
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    status = run(["--db", study, "--user", "cora", "consent", "S-001", "--on", on,
                  "--consent-form-version", "2.0"], stdout=out, stderr=err, stdin=Terminal(),
                 environ={})
    assert (status, err.getvalue().strip()) == (130, "Interrupted before any record was written.")
    assert last_position(study) == before


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """The console script's first act is to take Ctrl-C over; an interrupt while the heavy
    modules import (made slow here, and announced, so the signal lands there) ends the
    process with exit 130 and one line."""
    script = (
        "import importlib.abc, sys, time\n"
        "class Slow(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'cli.app':\n"
        "            print('importing', flush=True); time.sleep(30)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Slow())\n"
        "sys.argv = ['trialflow', '--version']\n"
        "import cli\n"
        "cli.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "importing"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip() == "Interrupted; nothing was done."


# ---------------------------------------------------------------------- signatures
def test_a_signature_is_bound_to_the_record_it_signs(study: str) -> None:
    assert consent(study, stdin=f"{PASSWORDS['cora']}\n")[0] == 0
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    status, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                           "weight_kg=58", "--on", on, stdin=f"{PASSWORDS['cora']}\n")
    assert status == 0
    vitals = data["positions"][0]
    # a session is not enough to sign: the password is asked again
    session = login(study, "ivan")
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "reviewed", environ=session)
    assert status == 1 and data["rule"] == "authentication_required"
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "approved", stdin="wrong-password-000\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    command = str(uuid.uuid4())
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "approved", "--command-id", command,
                           stdin=f"{PASSWORDS['ivan']}\n")
    assert status == 0
    # a replay of the same signing appends nothing
    before = last_position(study)
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "approved", "--command-id", command,
                           stdin=f"{PASSWORDS['ivan']}\n")
    assert status == 0 and data["repeated"]
    assert last_position(study) == before
    store = build_app(study).store
    target = next(e for e in store.read_stream("S-001") if e.position == vitals)
    status, rows, _ = call(study, "signatures", "S-001")
    assert len(rows) == 1
    assert (rows[0]["state"], rows[0]["target_hash"], rows[0]["printed_name"],
            rows[0]["meaning"]) == ("valid", target.hash, "ivan", "approved")
    # corrected after signing: the signature applies to the earlier version
    assert call(study, "--user", "cora", "correct", "S-001", str(vitals), "weight_kg=58.5",
                "--reason", "transcription error", stdin=f"{PASSWORDS['cora']}\n")[0] == 0
    _, rows, _ = call(study, "signatures", "S-001")
    assert rows[0]["state"] == "earlier_version"
    assert "before the correction" in rows[0]["manifestation"]
    first = last_position(study)
    assert rows[0]["superseded_by"] == first
    # a signed correction is stale once the same form is corrected again, naming the newer one
    assert call(study, "--user", "ivan", "sign", "S-001", str(first), "--meaning", "approved",
                stdin=f"{PASSWORDS['ivan']}\n")[0] == 0
    _, rows, _ = call(study, "signatures", "S-001")
    assert [r["state"] for r in rows] == ["earlier_version", "valid"]
    assert call(study, "--user", "cora", "correct", "S-001", str(vitals), "height_cm=163",
                "--reason", "measured again", stdin=f"{PASSWORDS['cora']}\n")[0] == 0
    second = last_position(study)
    _, rows, _ = call(study, "signatures", "S-001")
    assert [(r["state"], r["superseded_by"]) for r in rows] == [
        ("earlier_version", first), ("earlier_version", second)]
    assert rows[1]["manifestation"].endswith(f"correction at position {second}")
    # signing the newest correction shows valid
    assert call(study, "--user", "ivan", "sign", "S-001", str(second), "--meaning", "approved",
                stdin=f"{PASSWORDS['ivan']}\n")[0] == 0
    _, rows, _ = call(study, "signatures", "S-001")
    assert [r["state"] for r in rows] == ["earlier_version", "earlier_version", "valid"]


def test_a_signature_cannot_be_moved_to_another_event(study: str) -> None:
    assert consent(study, stdin=f"{PASSWORDS['cora']}\n")[0] == 0
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    positions = []
    for weight in ("58", "59"):
        _, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                          f"weight_kg={weight}", "--on", on, stdin=f"{PASSWORDS['cora']}\n")
        positions.append(data["positions"][0])
    assert call(study, "--user", "ivan", "sign", "S-001", str(positions[0]), "--meaning",
                "approved", stdin=f"{PASSWORDS['ivan']}\n")[0] == 0
    engine = build_app(study).engine
    with engine.begin() as conn:  # a forger moves the signature to the other record
        conn.execute(text("DROP TRIGGER IF EXISTS events_refuse_update"))
        row = conn.execute(text("SELECT position, payload FROM events WHERE type = "
                                "'SignatureRecorded'")).one()
        payload = json.loads(row.payload)
        payload["target_position"] = positions[1]
        conn.execute(text("UPDATE events SET payload = :p WHERE position = :n"),
                     {"p": json.dumps(payload, separators=(",", ":"), sort_keys=True),
                      "n": row.position})
    _, rows, _ = call(study, "signatures", "S-001")
    assert rows[0]["state"] == "broken"
    status, data, _ = call(study, "audit", "verify")
    assert status == 4


@pytest.mark.postgres
def test_a_personal_postgres_login_is_the_acting_user(postgres_url: str) -> None:
    import psycopg

    from tests.support.clock import FakeClock
    from tests.support.study import new_study

    login_name = f"co{uuid.uuid4().hex[:8]}"
    flow = new_study(postgres_url, FakeClock(datetime.now(UTC)))
    flow.add_user(login_name, "coordinator", "PKU3")
    flow.add_user("ivy", "coordinator", "PKU3")
    build_app(postgres_url).engine.dispose()
    assert call(postgres_url, "status")[0] == 0  # read models' tables exist
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    from events.roles import PERSON_ROLE, create_roles

    create_roles(build_app(postgres_url).engine)  # as `trialflow init --roles` does
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {login_name} LOGIN IN ROLE {PERSON_ROLE}")
        database = postgres_url.rsplit("/", 1)[1]
        conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {login_name}')
    personal = postgres_url.replace("//postgres@", f"//{login_name}@")
    try:
        before = last_position(postgres_url)
        on = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        status, data, _ = call(personal, "--user", "ivy", "consent", "S-009", "--on", on,
                               "--consent-form-version", "2.0")
        assert status == 1 and data["rule"] == "identity_mismatch"
        assert last_position(postgres_url) == before
        status, data, err = call(personal, "consent", "S-009", "--on", on,
                                 "--consent-form-version", "2.0")  # no --user, no password
        assert status == 0, (data, err)
        event = build_app(postgres_url).store.read_stream("S-009")[0]
        assert (event.actor, event.role) == (login_name, "coordinator")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {login_name}")
        admin = dsn.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         f"WHERE usename = '{login_name}'")
            conn.execute(f"DROP ROLE {login_name}")


def test_no_password_of_a_database_url_is_shown(tmp_path: Path) -> None:
    for url in ("postgresql://pwuser:S3cretPW!x@127.0.0.1:notaport/x",
                "postgresql://pwuser:S3cretPW!x@[::1/x"):
        for argv in (("status",), ("demo", "--no-reports"), ("--json", "status")):
            out, err = io.StringIO(), io.StringIO()
            status = run(["--db", url, *argv], stdout=out, stderr=err, environ={})
            assert status == 2, (url, argv, out.getvalue(), err.getvalue())
            assert "S3cretPW" not in out.getvalue() + err.getvalue(), (url, argv)


def test_the_name_of_failed_attempts_is_reserved(study: str) -> None:
    status, data, _ = call(study, "--user", "ada", "users", "add", "unauthenticated", "--role",
                           "monitor", stdin=f"{GOOD}\nsome-password-123\n")
    assert status == 2 and data["detail"]["field"] == "name"


def test_a_command_row_written_outside_trialflow_is_an_integrity_failure(study: str) -> None:
    """A row in `commands` whose position does not hold the command's own event (written by
    someone with INSERT on the table, to make a write look done) is reported, exit 4."""
    from events.envelope import canonical_json
    from workflow.commands import messages as M
    from workflow.commands.executor import Executor

    on = (datetime.now(UTC).date() - timedelta(days=2))
    message = M.ConsentSubject("S-001", on, "2.0")
    forged = {"command_id": "c-forged", "positions": [1], "recorded_at": "x",
              "versions": {"S-001": 1}}
    engine = build_app(study).engine
    row = {"c": "c-forged", "h": Executor._request_hash("cora", message),
           "r": canonical_json(forged)}
    with pytest.raises(IntegrityError, match="needs the events of its command"), \
            engine.begin() as conn:  # the database refuses a row without its events …
        conn.execute(text("INSERT INTO commands VALUES (:c, :h, :r, 'x')"), row)
    with engine.begin() as conn:  # … unless its guard is dropped first
        conn.execute(text("DROP TRIGGER commands_guard_insert"))
        conn.execute(text("INSERT INTO commands VALUES (:c, :h, :r, 'x')"), row)
    status, data, _ = consent(study, stdin=f"{PASSWORDS['cora']}\n")
    assert status == 0  # another command id: carried out
    before = last_position(study)
    status, data, _ = call(study, "--user", "cora", "consent", "S-002", "--on", on.isoformat(),
                           "--consent-form-version", "2.0", "--command-id", "c-forged",
                           stdin=f"{PASSWORDS['cora']}\n")
    assert status == 2 and data["rule"] == "command_id_reused"  # another request's id
    status, data, _ = call(study, "--user", "cora", "consent", "S-001", "--on", on.isoformat(),
                           "--consent-form-version", "2.0", "--command-id", "c-forged",
                           stdin=f"{PASSWORDS['cora']}\n")
    assert status == 4 and data["rule"] == "integrity" and "outside trialflow" in data["error"]
    assert last_position(study) == before
    status, data, _ = call(study, "audit", "verify")
    assert status == 4 and "command row c-forged" in data["error"]


def test_the_environment_s_secret_file_stands_for_the_service_account_only(
        study: str, tmp_path: Path) -> None:
    """A host that runs the scheduler sets TRIALFLOW_SECRET_FILE; a person working there still
    proves herself with her own session, and no failed attempt is counted against her."""
    environ = {**login(study, "cora"),
               "TRIALFLOW_SECRET_FILE": str(tmp_path / "trialflow.scheduler-secret")}
    before = last_position(study)
    status, data, err = consent(study, environ=environ)
    assert status == 0, (data, err)
    assert types_after(study, before) == ["SubjectConsented"]
    done = call(study, "scheduler", "tick", environ=environ)  # the scheduler takes it
    assert done[0] == 0, done
