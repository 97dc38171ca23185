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
    # its own row only, through the function
    own = sql(server, "cora", "trial", "SELECT scheme FROM trialflow_own_credential()")
    assert own[0][0].startswith("scrypt")
    assert sql(server, "tf_app", "trial", "SELECT count(*) FROM trialflow_private.credentials"
               )[0][0] >= 4


def test_a_personal_login_signs_with_its_password(server: PrivateServer,
                                                  trial: dict[str, str]) -> None:
    status, data, err = call(trial["cora"], "record", "S-001", "vitals", "weight_kg=61",
                             "--on", trial["on"])
    assert status == 0, (data, err)
    position = data["positions"][0]
    status, data, _ = call(trial["ivan"], "sign", "S-001", str(position), "--meaning",
                           "approved", stdin="wrong-password-123\n")
    assert status == 1 and data["rule"] == "authentication_failed"
    failure = build_app(trial["owner"]).store.read_stream("study")[-1]
    assert (failure.type, failure.actor) == ("AuthenticationFailed", "ivan")
    status, data, err = call(trial["ivan"], "sign", "S-001", str(position), "--meaning",
                             "approved", stdin=f"{PASSWORDS['ivan']}\n")
    assert status == 0, (data, err)
    status, rows, _ = call(trial["owner"], "signatures", "S-001")
    assert [(r["printed_name"], r["state"]) for r in rows] == [("ivan", "valid")]
    assert sql(server, "tf_app", "trial",
               "SELECT count(*) FROM trialflow_private.attempts WHERE name = 'ivan'"
               )[0][0] == 0  # the right password cleared the count


def test_the_append_function_checks_position_and_previous_hash(
        server: PrivateServer, trial: dict[str, str]) -> None:
    """The function refuses what the store never sends: a position that is not the next, a
    previous hash that is not the stream's head."""
    head = sql(server, "cora", "trial", "SELECT max(position) FROM events")[0][0]
    stream = sql(server, "cora", "trial", "SELECT version, hash FROM events WHERE stream_id = "
                 "'S-001' ORDER BY version DESC LIMIT 1")[0]
    call_sql = ("SELECT trialflow_append(ARRAY[{pos}]::bigint[], ARRAY['S-001'], "
                "ARRAY[{ver}], ARRAY['VitalsRecorded'], ARRAY[1], ARRAY['{{}}'], ARRAY['x'], "
                "'9999', 'cora', 'coordinator', 'PKU3', ARRAY[NULL]::text[], 'forged', "
                "'forged', ARRAY[NULL]::text[], ARRAY['{prev}'], ARRAY['" + "a" * 64 + "'], "
                "'h', '{{\"positions\":[{pos}]}}')")
    assert "next position" in refused(server, "cora", "trial", call_sql.format(
        pos=head + 5, ver=stream[0] + 1, prev=stream[1]))
    assert "last one" in refused(server, "cora", "trial", call_sql.format(
        pos=head + 1, ver=stream[0] + 1, prev="b" * 64))
    status, data, _ = call(trial["owner"], "audit", "verify")
    assert status == 0, data


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


def test_a_personal_login_cannot_claim_another_role_or_a_name_in_the_payload(
        trial: dict[str, str]) -> None:
    """cora appends in her own name but as an investigator: refused. In her own name and role,
    a signature whose printed name is ivan's: stored (attributed to cora), shown `broken`."""
    store = build_app(trial["cora"]).store
    first = store.read_stream("S-001")[0]
    approval = {"target_position": first.position, "target_type": first.type,
                "target_hash": first.hash, "meaning": "approved", "printed_name": "ivan",
                "role": "investigator", "signed_at": "2025-01-01T00:00:00+00:00"}
    before = store.last_position()
    with pytest.raises(Exception, match="not an active user of this study with role"):
        store.append("S-001", None, [NewEvent("SignatureRecorded", approval)],
                     AppendContext(actor="cora", role="investigator", site="PKU3"))
    assert store.last_position() == before
    store.append("S-001", None, [NewEvent("SignatureRecorded", approval)],
                 AppendContext(actor="cora", role="coordinator", site="PKU3"))
    status, rows, _ = call(trial["owner"], "signatures", "S-001")
    forged = [r for r in rows if r["position"] == before + 1]
    assert status == 0 and forged[0]["state"] == "broken"


def test_a_personal_login_that_is_no_user_cannot_act_with_someone_s_password(
        server: PrivateServer, trial: dict[str, str]) -> None:
    """mallory has a personal login but is no user of the study, and knows ivan's password:
    the executor proves ivan, and the database still refuses to append as anyone but
    mallory."""
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE mallory LOGIN IN ROLE trialflow_person")
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
    from events.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable) as caught:
        build_app(mallory).store.append(
            "S-001", None, [NewEvent("FormRecorded", {"form": "vitals"})],
            AppendContext(actor="ivan", role="investigator", site="PKU3"))
    assert caught.value.rule == "identity_mismatch"
    assert str(caught.value) == ("The database refused the write: the database login mallory "
                                 "may append only in its own name, not as ivan; nothing was "
                                 "written.")
    assert build_app(trial["owner"]).store.last_position() == before
