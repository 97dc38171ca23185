"""Identity and signatures (21 CFR Part 11): writes authenticate, spoofing is refused, a
signature is bound to the exact record it signs."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from cli.app import run
from workflow import identity
from workflow.bootstrap import build_app

GOOD = "correct-horse-battery"
PASSWORDS = {"cora": "blue-lantern-4821", "ivan": "quiet-harbor-7305"}


def call(db: str, *argv: str, stdin: str | None = None,
         environ: dict[str, str] | None = None) -> tuple[int, dict | list | str, str]:
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


@pytest.fixture
def study(sqlite_url: str) -> str:
    db = sqlite_url
    assert call(db, "init", "--admin", "ada", stdin=f"{GOOD}\n")[0] == 0
    assert call(db, "--user", "ada", "sites", "add", "PKU3", "--tz", "Asia/Shanghai",
                stdin=f"{GOOD}\n")[0] == 0
    for name, role in (("cora", "coordinator"), ("ivan", "investigator")):
        status, data, err = call(db, "--user", "ada", "users", "add", name, "--role", role,
                                 "--site", "PKU3", stdin=f"{GOOD}\n{PASSWORDS[name]}\n")
        assert status == 0, (data, err)
    return db


def consent(db: str, user: str = "cora", **kw: object) -> tuple[int, dict | list | str, str]:
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    return call(db, "--user", user, "consent", "S-001", "--on", on, "--consent-form-version",
                "2.0", **kw)  # type: ignore[arg-type]


def test_the_log_records_that_credentials_changed_never_the_hash(study: str) -> None:
    events = list(build_app(study).store.read_all())
    changed = [e for e in events if e.type == "CredentialsChanged"]
    assert [(e.payload["name"], e.payload["by"]) for e in changed] == [
        ("ada", "ada"), ("cora", "ada"), ("ivan", "ada")]
    engine = build_app(study).engine
    with engine.connect() as conn:
        hashes = [r[0] for r in conn.execute(text("SELECT hash FROM credentials"))]
    assert len(hashes) == 3
    log = " ".join(e.payload_text for e in events)
    assert not any(h in log for h in hashes) and "scrypt" not in log


def test_a_write_without_authentication_is_refused_and_writes_nothing(study: str) -> None:
    before = last_position(study)
    status, data, _ = consent(study)
    assert status == 1 and isinstance(data, dict)
    assert data["rule"] == "authentication_required" and "--password-stdin" in data["error"]
    status, data, _ = consent(study, stdin="wrong-password-000\n")
    assert status == 1 and isinstance(data, dict) and data["rule"] == "authentication_failed"
    assert "cora" in data["error"]
    assert last_position(study) == before
    status, data, _ = consent(study, stdin="blue-lantern-4821\n")
    assert status == 0 and last_position(study) > before


def test_login_session_spoofing_expiry_and_logout(study: str) -> None:
    status, data, _ = call(study, "--user", "cora", "login", stdin="blue-lantern-4821\n")
    assert status == 0 and isinstance(data, dict)
    token = data["token"]
    session = {"TRIALFLOW_SESSION": token}
    before = last_position(study)
    # another user's name with cora's session: refused
    status, data, _ = consent(study, user="ivan", environ=session)
    assert status == 1 and isinstance(data, dict) and data["rule"] == "authentication_failed"
    assert last_position(study) == before
    assert consent(study, environ=session)[0] == 0
    # an expired session
    engine = build_app(study).engine
    old, _ = identity.create_session(engine, "ivan", datetime.now(UTC) - timedelta(hours=9), 8)
    status, data, _ = call(study, "--user", "ivan", "record", "S-001", "vitals",
                           "weight_kg=60", environ={"TRIALFLOW_SESSION": old})
    assert status == 1 and isinstance(data, dict) and data["rule"] == "session_expired"
    assert call(study, "--user", "cora", "logout")[0] == 0
    status, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                           "weight_kg=60", environ=session)
    assert status == 1 and isinstance(data, dict) and data["rule"] == "authentication_failed"


def test_a_deactivated_user_cannot_write_even_with_the_right_password(study: str) -> None:
    assert call(study, "--user", "ada", "users", "deactivate", "cora", stdin=f"{GOOD}\n")[0] == 0
    before = last_position(study)
    status, data, _ = consent(study, stdin="blue-lantern-4821\n")
    assert status == 1 and isinstance(data, dict) and data["rule"] == "user_deactivated"
    status, data, _ = call(study, "--user", "cora", "login", stdin="blue-lantern-4821\n")
    assert status == 1 and isinstance(data, dict) and data["rule"] == "user_deactivated"
    assert last_position(study) == before


def test_passwords_are_set_by_admins_or_their_owner(study: str) -> None:
    status, data, _ = call(study, "--user", "cora", "users", "passwd", "ivan",
                           stdin="blue-lantern-4821\nsilver-comet-5512\n")
    assert status == 1 and isinstance(data, dict) and data["rule"] == "role"
    assert call(study, "--user", "cora", "users", "passwd", "cora",
                stdin="blue-lantern-4821\namber-meadow-2290\n")[0] == 0
    status, data, _ = consent(study, stdin="blue-lantern-4821\n")
    assert status == 1 and isinstance(data, dict) and data["rule"] == "authentication_failed"
    status, data, _ = call(study, "--user", "ada", "users", "passwd", "ivan",
                           stdin=f"{GOOD}\nshort\n")
    assert status == 2 and isinstance(data, dict) and "at least" in data["error"]


def test_a_signature_is_bound_to_the_record_it_signs(study: str) -> None:
    assert consent(study, stdin="blue-lantern-4821\n")[0] == 0
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    status, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                           "weight_kg=58", "--on", on, stdin="blue-lantern-4821\n")
    assert status == 0 and isinstance(data, dict)
    vitals = data["positions"][0]
    # a session is not enough to sign: the password is asked again
    _, login, _ = call(study, "--user", "ivan", "login", stdin="quiet-harbor-7305\n")
    assert isinstance(login, dict)
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "reviewed", environ={"TRIALFLOW_SESSION": login["token"]})
    assert status == 1 and isinstance(data, dict) and data["rule"] == "authentication_required"
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "approved", stdin="wrong-password-000\n")
    assert status == 1 and isinstance(data, dict) and data["rule"] == "authentication_failed"
    command = str(uuid.uuid4())
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "approved", "--command-id", command, stdin="quiet-harbor-7305\n")
    assert status == 0
    # a replay of the same signing appends nothing
    before = last_position(study)
    status, data, _ = call(study, "--user", "ivan", "sign", "S-001", str(vitals), "--meaning",
                           "approved", "--command-id", command, stdin="quiet-harbor-7305\n")
    assert status == 0 and isinstance(data, dict) and data["repeated"]
    assert last_position(study) == before
    store = build_app(study).store
    target = next(e for e in store.read_stream("S-001") if e.position == vitals)
    status, rows, _ = call(study, "signatures", "S-001")
    assert isinstance(rows, list) and len(rows) == 1
    assert (rows[0]["state"], rows[0]["target_hash"], rows[0]["printed_name"],
            rows[0]["meaning"]) == ("valid", target.hash, "ivan", "approved")
    # corrected after signing: the signature applies to the earlier version
    assert call(study, "--user", "cora", "correct", "S-001", str(vitals), "weight_kg=58.5",
                "--reason", "transcription error", stdin="blue-lantern-4821\n")[0] == 0
    _, rows, _ = call(study, "signatures", "S-001")
    assert isinstance(rows, list) and rows[0]["state"] == "earlier_version"
    assert "before the correction" in rows[0]["manifestation"]


def test_a_signature_cannot_be_moved_to_another_event(study: str) -> None:
    assert consent(study, stdin="blue-lantern-4821\n")[0] == 0
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    positions = []
    for weight in ("58", "59"):
        _, data, _ = call(study, "--user", "cora", "record", "S-001", "vitals",
                          f"weight_kg={weight}", "--on", on, stdin="blue-lantern-4821\n")
        assert isinstance(data, dict)
        positions.append(data["positions"][0])
    assert call(study, "--user", "ivan", "sign", "S-001", str(positions[0]), "--meaning",
                "approved", stdin="quiet-harbor-7305\n")[0] == 0
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
    assert isinstance(rows, list) and rows[0]["state"] == "broken"
    status, data, _ = call(study, "audit", "verify")
    assert status == 4


@pytest.mark.postgres
def test_a_personal_postgres_login_is_the_acting_user(postgres_url: str) -> None:
    import psycopg

    from tests.support.clock import FakeClock
    from tests.support.study import ADMIN, new_study

    login = f"co{uuid.uuid4().hex[:8]}"
    flow = new_study(postgres_url, FakeClock(datetime.now(UTC)))
    flow.add_user(ADMIN, login, "coordinator", "PKU3", None)
    flow.add_user(ADMIN, "ivy", "coordinator", "PKU3", None)
    build_app(postgres_url).engine.dispose()
    assert call(postgres_url, "status")[0] == 0  # read models' tables exist
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {login} LOGIN")
        conn.execute(f"GRANT SELECT, INSERT ON events, commands TO {login}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {login}")
    personal = postgres_url.replace("//postgres@", f"//{login}@")
    try:
        before = last_position(postgres_url)
        on = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        status, data, _ = call(personal, "--user", "ivy", "consent", "S-009", "--on", on,
                               "--consent-form-version", "2.0")
        assert status == 1 and isinstance(data, dict) and data["rule"] == "identity_mismatch"
        assert last_position(postgres_url) == before
        status, data, err = call(personal, "consent", "S-009", "--on", on,
                                 "--consent-form-version", "2.0")  # no --user, no password
        assert status == 0, (data, err)
        event = build_app(postgres_url).store.read_stream("S-009")[0]
        assert (event.actor, event.role) == (login, "coordinator")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {login}")
        admin = dsn.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         f"WHERE usename = '{login}'")
            conn.execute(f"DROP ROLE {login}")
