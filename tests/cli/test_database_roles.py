"""PostgreSQL roles bind identity in the database itself (`trialflow init --roles`): what an
attacker with a personal login, the application's login or the owner's can and cannot do to
the record. Runs on a private server started by the test (initdb/pg_ctl as `postgres`), with
the owner, the application and two people as separate logins."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli.app import run
from events.envelope import NewEvent
from events.errors import StoreUnavailable
from events.store import AppendContext
from tests.reliability.pg_server import PrivateServer, private_server
from workflow.bootstrap import build_app

ADMIN_PASSWORD = "correct-horse-battery"
PASSWORDS = {"cora": "blue-lantern-4821", "ivan": "quiet-harbor-7305"}
TEMPORARY = "temporary-pass-0001"


def call(db: str, *argv: str, stdin: str | None = None) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    args = ["--db", db, "--json", *argv]
    if stdin is not None:
        args.append("--password-stdin")
    status = run(args, stdout=out, stderr=err, stdin=io.StringIO(stdin or ""), environ={})
    body = out.getvalue()
    return status, (json.loads(body) if body.strip() else ""), err.getvalue()


def sql(server: PrivateServer, login: str, dbname: str, statement: str) -> list[Any]:
    import psycopg

    dsn = server.dsn(dbname).replace("user=postgres", f"user={login}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement.encode())
        return list(cursor.fetchall()) if cursor.description else []


def refused(server: PrivateServer, login: str, dbname: str, statement: str) -> str:
    import psycopg

    with pytest.raises(psycopg.Error) as caught:
        sql(server, login, dbname, statement)
    return str(caught.value)


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    yield from private_server()


@pytest.fixture(scope="module")
def trial(server: PrivateServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A study created by its owner with `init --roles`, an application login and two people
    (cora, coordinator; ivan, investigator) with personal logins."""
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE tf_owner LOGIN CREATEROLE")
        conn.execute("CREATE DATABASE trial OWNER tf_owner")
    url = f"postgresql://{{}}@127.0.0.1:{server.port}/trial"
    owner, app = url.format("tf_owner"), url.format("tf_app")
    secret = tmp_path_factory.mktemp("roles") / "scheduler.secret"
    status, data, err = call(owner, "init", "--admin", "ada", "--roles",
                             "--scheduler-secret-file", str(secret),
                             stdin=f"{ADMIN_PASSWORD}\n")
    assert status == 0, (data, err)
    assert data["roles"] == ["trialflow_app", "trialflow_person"]
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE tf_app LOGIN IN ROLE trialflow_app")
        conn.execute("CREATE ROLE cora LOGIN IN ROLE trialflow_person")
        conn.execute("CREATE ROLE ivan LOGIN IN ROLE trialflow_person")
        conn.execute("CREATE ROLE stranger LOGIN IN ROLE trialflow_app")  # another study's
    with psycopg.connect(server.dsn("trial"), autocommit=True) as conn:
        conn.execute("GRANT CONNECT ON DATABASE trial TO tf_app, cora, ivan")
    status, data, err = call(app, "--user", "ada", "sites", "add", "PKU3", "--tz",
                             "Asia/Shanghai", stdin=f"{ADMIN_PASSWORD}\n")
    assert status == 0, (data, err)
    for name, role in (("cora", "coordinator"), ("ivan", "investigator")):
        status, data, err = call(app, "--user", "ada", "users", "add", name, "--role", role,
                                 "--site", "PKU3", stdin=f"{ADMIN_PASSWORD}\n{TEMPORARY}\n")
        assert status == 0, (data, err)
        status, data, err = call(app, "--user", name, "users", "passwd", name,
                                 stdin=f"{TEMPORARY}\n{PASSWORDS[name]}\n")
        assert status == 0, (data, err)
    on = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
    status, data, err = call(url.format("cora"), "consent", "S-001", "--on", on,
                             "--consent-form-version", "2.0")
    assert status == 0, (data, err)
    return {"owner": owner, "app": app, "cora": url.format("cora"),
            "ivan": url.format("ivan"), "on": on}


def test_a_personal_login_appends_in_its_own_name_only(trial: dict[str, str]) -> None:
    event = build_app(trial["owner"]).store.read_stream("S-001")[0]
    assert (event.actor, event.role) == ("cora", "coordinator")
    status, data, _ = call(trial["cora"], "--user", "ivan", "record", "S-001", "vitals",
                           "weight_kg=60", "--on", trial["on"],
                           stdin=f"{PASSWORDS['ivan']}\n")
    assert status == 1 and data["rule"] == "identity_mismatch"


def test_a_correctly_chained_forgery_in_another_name_is_refused_by_the_database(
        trial: dict[str, str]) -> None:
    """cora computes the chain exactly as trialflow does and appends ivan's approval through
    the only door there is: the database itself refuses the name."""
    store = build_app(trial["cora"]).store
    before = store.last_position()
    forged = NewEvent("SignatureRecorded", {"target_position": 1, "meaning": "approved",
                                            "signer": "ivan"})
    with pytest.raises(Exception, match=r"identity_mismatch|may append only in its own name"):
        store.append("S-001", None, [forged], AppendContext(actor="ivan", role="investigator",
                                                              site="PKU3"))
    assert store.last_position() == before
    status, rows, _ = call(trial["owner"], "signatures", "S-001")
    assert status == 0 and rows == []


def test_no_login_but_the_owner_inserts_or_alters(server: PrivateServer,
                                                  trial: dict[str, str]) -> None:
    row = ("(99, 'S-001', 9, 'SignatureRecorded', 1, '{}', 'x', 'x', 'ivan', 'investigator', "
           "'PKU3', NULL, 'c', 'c', NULL, '" + "0" * 64 + "', '" + "0" * 64 + "', '"
           + "0" * 64 + "')")
    for login in ("cora", "tf_app"):
        assert "permission denied" in refused(server, login, "trial",
                                              f"INSERT INTO events VALUES {row}")
        assert "permission denied" in refused(
            server, login, "trial", "INSERT INTO commands VALUES ('c', 'h', '{}', 'x')")
        for statement in ("UPDATE events SET actor = 'ivan'", "DELETE FROM events",
                          "TRUNCATE events"):
            assert "permission denied" in refused(server, login, "trial", statement)
        for statement in ("ALTER TABLE events DISABLE TRIGGER USER",
                          "DROP TRIGGER events_refuse_update_delete ON events",
                          "ALTER TABLE events DROP CONSTRAINT events_payload_object"):
            assert "must be owner" in refused(server, login, "trial", statement)
        refused(server, login, "trial", "SELECT pg_advisory_unlock_all(); "
                "CREATE FUNCTION trialflow_append() RETURNS void LANGUAGE sql AS 'SELECT 1'")


def test_hashes_are_out_of_reach_of_personal_logins(server: PrivateServer,
                                                    trial: dict[str, str]) -> None:
    for table in ("credentials", "sessions", "attempts"):
        assert "permission denied" in refused(server, "cora", "trial",
                                              f"SELECT * FROM trialflow_private.{table}")
        assert "does not exist" in refused(server, "cora", "trial", f"SELECT * FROM {table}")
    # the documented read grant no longer reaches them
    names = {r[0] for r in sql(server, "cora", "trial",
                               "SELECT table_name FROM information_schema.tables WHERE "
                               "table_schema = 'public'")}
    assert "events" in names and not names & {"credentials", "sessions", "attempts"}
    # not even its own (no offline guessing of the signing password)
    assert "does not exist" in refused(server, "cora", "trial",
                                       "SELECT * FROM trialflow_own_credential()")
    assert sql(server, "tf_app", "trial", "SELECT count(*) FROM trialflow_private.credentials"
               )[0][0] >= 4


def test_a_signature_needs_the_application_s_login(server: PrivateServer,
                                                   trial: dict[str, str]) -> None:
    """A personal login proves who acts but checks no password (it cannot read any hash), so a
    signature goes through the application's login, where the password is checked."""
    status, data, err = call(trial["cora"], "record", "S-001", "vitals", "weight_kg=61",
                             "--on", trial["on"])
    assert status == 0, (data, err)
    position = data["positions"][0]
    before = build_app(trial["owner"]).store.last_position()
    status, data, _ = call(trial["ivan"], "sign", "S-001", str(position), "--meaning",
                           "approved", stdin=f"{PASSWORDS['ivan']}\n")
    assert status == 1 and data["rule"] == "application_login_required"
    assert build_app(trial["owner"]).store.last_position() == before
    status, data, _ = call(trial["app"], "--user", "ivan", "sign", "S-001", str(position),
                           "--meaning", "approved", stdin="wrong-password-123\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    status, data, err = call(trial["app"], "--user", "ivan", "sign", "S-001", str(position),
                             "--meaning", "approved", stdin=f"{PASSWORDS['ivan']}\n")
    assert status == 0, (data, err)
    status, rows, _ = call(trial["owner"], "signatures", "S-001")
    assert [(r["printed_name"], r["state"]) for r in rows] == [("ivan", "valid")]
    assert sql(server, "tf_app", "trial",
               "SELECT count(*) FROM trialflow_private.attempts WHERE name = 'ivan'"
               )[0][0] == 0  # the right password cleared the count


def test_a_payload_that_is_not_json_is_refused_by_the_database(server: PrivateServer,
                                                               trial: dict[str, str]) -> None:
    """Even the owner, inserting directly past the function, cannot store a payload that is
    not a JSON object."""
    head = sql(server, "tf_owner", "trial", "SELECT max(position) FROM events")[0][0]
    message = refused(server, "tf_owner", "trial",
                      f"INSERT INTO events VALUES ({head + 1}, 'S-077', 1, 'X', 1, "
                      "'not json', 'x', '9999', 'ada', 'admin', NULL, NULL, 'c', 'c', NULL, '"
                      + "0" * 64 + "', '" + "0" * 64 + "', '" + "0" * 64 + "')")
    assert "json" in message.lower()


def test_a_personal_login_cannot_claim_another_role_or_write_the_study(
        trial: dict[str, str]) -> None:
    """cora appends in her own name but as an investigator; makes herself admin; deactivates
    the admin; records a signature without a password: the database refuses each."""
    store = build_app(trial["cora"]).store
    first = store.read_stream("S-001")[0]
    approval = {"target_position": first.position, "target_type": first.type,
                "target_hash": first.hash, "meaning": "approved", "printed_name": "cora",
                "role": "coordinator", "signed_at": "2025-01-01T00:00:00+00:00"}
    own = AppendContext(actor="cora", role="coordinator", site="PKU3")
    before = store.last_position()
    attempts = [
        ("S-001", NewEvent("FormRecorded", {"form": "vitals", "values": {}}),
         AppendContext(actor="cora", role="investigator", site="PKU3"),
         "not an active user of this study with role investigator"),
        ("study", NewEvent("UserAdded", {"name": "cora", "role": "admin", "site": None}), own,
         "may not record UserAdded in study"),
        ("study", NewEvent("UserDeactivated", {"name": "ada"}), own,
         "may not record UserDeactivated in study"),
        ("S-001", NewEvent("SignatureRecorded", approval), own,
         "may not record SignatureRecorded in S-001"),
    ]
    for stream, event, context, message in attempts:
        with pytest.raises(StoreUnavailable, match=message) as caught:
            store.append(stream, None, [event], context)
        assert caught.value.rule == "identity_mismatch"
    assert store.last_position() == before
    status, rows, _ = call(trial["owner"], "users", "list")
    assert status == 0 and {r["name"]: r["role"] for r in rows}["cora"] == "coordinator"


def test_a_personal_login_cannot_stamp_a_time_or_a_hash_of_its_own(
        server: PrivateServer, trial: dict[str, str]) -> None:
    """Through the function by hand: a recorded time that is no time, one in the future, a
    hash that is not the hash of the event's content, a position that is not the next and a
    previous hash that is not the stream's last are refused; the correct event passes."""
    from events.envelope import canonical_json, event_hash

    head = sql(server, "cora", "trial", "SELECT max(position) FROM events")[0][0]
    last = sql(server, "cora", "trial", "SELECT max(recorded_at) FROM events")[0][0]
    stream = sql(server, "cora", "trial", "SELECT version, hash FROM events WHERE stream_id = "
                 "'S-001' ORDER BY version DESC LIMIT 1")[0]
    now = sql(server, "cora", "trial", "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
              "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")[0][0]

    def attempt(recorded_at: str, digest: str | None = None, position: int = head + 1,
                prev: str = stream[1]) -> str:
        fields = {"position": position, "stream_id": "S-001", "version": stream[0] + 1,
                  "type": "FormRecorded", "schema_version": 1,
                  "payload": '{"form":"vitals","values":{}}', "occurred_at": recorded_at,
                  "recorded_at": recorded_at, "actor": "cora", "role": "coordinator",
                  "site": "PKU3", "reason": None, "command_id": "by-hand",
                  "correlation_id": "by-hand", "causation_id": None,
                  "prev_hash": prev}
        digest = digest or event_hash(fields)
        result = canonical_json({"command_id": "by-hand", "positions": [position],
                                 "recorded_at": recorded_at,
                                 "versions": {"S-001": stream[0] + 1}})
        return (f"SELECT trialflow_append(ARRAY[{position}]::bigint[], ARRAY['S-001'], "
                f"ARRAY[{stream[0] + 1}], ARRAY['FormRecorded'], ARRAY[1], "
                f"ARRAY['{fields['payload']}'], ARRAY['{recorded_at}'], '{recorded_at}', "
                "'cora', 'coordinator', 'PKU3', ARRAY[NULL]::text[], 'by-hand', 'by-hand', "
                f"ARRAY[NULL]::text[], ARRAY['{prev}'], ARRAY['{digest}'], 'h', "
                f"'{result}')")

    assert "UTC time" in refused(server, "cora", "trial", attempt("zzzz"))
    assert "database's time" in refused(server, "cora", "trial",
                                        attempt("9999-12-31T23:59:59.999999Z"))
    moment = max(now, last)
    assert "hash of its content" in refused(server, "cora", "trial", attempt(moment, "f" * 64))
    assert "next position" in refused(server, "cora", "trial",
                                      attempt(moment, position=head + 5))
    assert "last one" in refused(server, "cora", "trial", attempt(moment, prev="b" * 64))
    forged_row = attempt(moment).replace('"positions":[', '"positions":[1,')
    assert "names exactly the events" in refused(server, "cora", "trial", forged_row)
    sql(server, "cora", "trial", attempt(moment))  # the true one
    status, data, _ = call(trial["owner"], "audit", "verify")
    assert status == 0, data


def test_a_personal_login_that_is_no_user_cannot_act_with_someone_s_password(
        server: PrivateServer, trial: dict[str, str]) -> None:
    """mallory has a personal login but is no user of the study, and knows ivan's password:
    the executor proves ivan, and the database still refuses to append as anyone but
    mallory."""
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE mallory LOGIN IN ROLE trialflow_person")
        conn.execute("GRANT CONNECT ON DATABASE trial TO mallory")
    mallory = trial["cora"].replace("//cora@", "//mallory@")
    before = build_app(trial["owner"]).store.last_position()
    status, data, err = call(mallory, "--user", "ivan", "record", "S-001", "vitals",
                             "weight_kg=62", "--on", trial["on"],
                             stdin=f"{PASSWORDS['ivan']}\n")
    # it cannot even count an attempt at ivan's password (the attempts are not granted to it),
    # so no password is checked
    assert status == 1 and data["rule"] == "permission_denied", (data, err)
    assert build_app(trial["owner"]).store.last_position() == before
    # and straight through the store, the database names the refusal
    with pytest.raises(StoreUnavailable) as caught:
        build_app(mallory).store.append(
            "S-001", None, [NewEvent("FormRecorded", {"form": "vitals"})],
            AppendContext(actor="ivan", role="investigator", site="PKU3"))
    assert caught.value.rule == "identity_mismatch"
    assert str(caught.value) == ("The database refused the write: the database login mallory "
                                 "may append only in its own name, not as ivan; nothing was "
                                 "written.")
    assert build_app(trial["owner"]).store.last_position() == before


def test_the_database_hashes_text_as_trialflow_does(trial: dict[str, str]) -> None:
    """The function recomputes a personal login's hashes in SQL: quotes, backslashes, control
    escapes, accents, CJK and emoji must encode exactly as Python's canonical JSON does."""
    text = 'O\'Brien "quoted" back\\slash é 中文 😀 </script>'
    status, data, err = call(trial["cora"], "consent", "S-004", "--on", trial["on"],
                             "--consent-form-version", "2.0")
    assert status == 0, (data, err)
    status, data, err = call(trial["cora"], "screen-fail", "S-004", "--reason", "other",
                             "--note", text)
    assert status == 0, (data, err)
    events = build_app(trial["owner"]).store.read_stream("S-004")
    carrying = [e for e in events if text in e.payload.values()]
    assert len(carrying) == 1 and carrying[0].actor == "cora", [e.payload for e in events]
    assert call(trial["owner"], "audit", "verify")[0] == 0


def test_another_study_s_application_login_cannot_connect(server: PrivateServer,
                                                          trial: dict[str, str]) -> None:
    """trialflow_app is the cluster's role: the application login of another study on the same
    server is a member too, but `init --roles` took CONNECT from PUBLIC, so it cannot reach
    this study's database at all."""
    message = refused(server, "stranger", "trial", "SELECT 1")
    assert "permission denied for database" in message
