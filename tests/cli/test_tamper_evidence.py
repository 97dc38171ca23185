"""Records that prove themselves, tried as an attacker with the database would, on SQLite and
PostgreSQL: a replaced event, a poison payload, a whole stream removed from the middle, a
consistent re-chain after a seal, a forged seal. Every one is refused by the database or named
by `audit verify` (exit 4), and no read shows a traceback."""

from __future__ import annotations

import io
import json
import os
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cli.app import run
from events.envelope import GENESIS_HASH, event_hash, link
from events.errors import IntegrityFailure
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, Desk, enrol, new_study
from tests.support.tamper import rechain_with_payload
from workflow.commands import messages as M

START = date(2025, 3, 3)


def call(db: str, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", db, "--json", *argv], stdout=out, stderr=err, environ=environ or {})
    body = out.getvalue()
    return status, (json.loads(body) if body.strip() else ""), err.getvalue()


def text_call(db: str, *argv: str, environ: dict[str, str] | None = None
              ) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", db, *argv], stdout=out, stderr=err, environ=environ or {})
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def trial(db_url: str) -> Desk:
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    desk = new_study(db_url, clock)
    for subject in ("S-001", "S-002", "S-003"):
        enrol(desk, subject, START, clock)
    return desk


def sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def raw(desk: Desk, *statements: str, params: dict[str, Any] | None = None) -> None:
    with desk.store.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement), params or {})


def drop_guards(desk: Desk, url: str) -> None:
    """What someone with full control of the database does first."""
    if sqlite(url):
        raw(desk, *(f"DROP TRIGGER IF EXISTS {name}" for name in (
            "events_refuse_update", "events_refuse_delete", "events_guard_insert",
            "commands_refuse_delete", "commands_refuse_update", "commands_guard_insert")))
    else:
        raw(desk, "ALTER TABLE events DISABLE TRIGGER USER",
            "ALTER TABLE commands DISABLE TRIGGER USER",
            "ALTER TABLE events DROP CONSTRAINT events_payload_object")


def last_row(desk: Desk) -> dict[str, Any]:
    with desk.store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM events ORDER BY position DESC LIMIT 1")).one()
    return dict(row._mapping)


def test_insert_or_replace_cannot_rewrite_an_event_on_sqlite(trial: Desk, db_url: str) -> None:
    if not sqlite(db_url):
        pytest.skip("INSERT OR REPLACE is SQLite's; PostgreSQL has no such statement")
    row = last_row(trial)
    row["payload"] = json.dumps({"weight_kg": 99})
    columns = ", ".join(row)
    marks = ", ".join(f":{name}" for name in row)
    for verb in ("INSERT OR REPLACE", "REPLACE", "INSERT OR IGNORE"):
        with pytest.raises(sa.exc.IntegrityError, match="append-only"):
            raw(trial, f"{verb} INTO events ({columns}) VALUES ({marks})", params=row)
    with trial.store.engine.connect() as conn:
        command = dict(conn.execute(sa.text("SELECT * FROM commands LIMIT 1")).one()._mapping)
    with pytest.raises(sa.exc.IntegrityError, match="recorded once"):
        raw(trial, "INSERT OR REPLACE INTO commands VALUES (:command_id, :request_hash, "
            "'{}', :recorded_at)", params=command)
    assert last_row(trial) == {**row, "payload": last_row(trial)["payload"]}
    assert call(db_url, "audit", "verify")[0] == 0


def test_an_insert_out_of_order_is_refused_by_the_database(trial: Desk, db_url: str) -> None:
    """Straight into the table (SQLite: the guard trigger; PostgreSQL: the owner alone may,
    and the function is the door for everyone else, see test_database_roles)."""
    if not sqlite(db_url):
        pytest.skip("on PostgreSQL only the owner can insert directly")
    row = last_row(trial)
    for change, message in (({"position": row["position"] + 2}, "next position"),
                            ({"position": row["position"] + 1, "version": row["version"] + 3},
                             "next version"),
                            ({"position": row["position"] + 1, "version": row["version"] + 1,
                              "prev_hash": "f" * 64}, "last hash"),
                            ({"position": row["position"] + 1, "version": row["version"] + 1,
                              "prev_hash": row["hash"], "payload": "not json"}, "JSON object"),
                            ({"position": row["position"] + 1, "version": row["version"] + 1,
                              "prev_hash": row["hash"], "payload": "[1]"}, "JSON object")):
        forged = {**row, **change}
        columns = ", ".join(forged)
        marks = ", ".join(f":{name}" for name in forged)
        with pytest.raises(sa.exc.IntegrityError, match=message):
            raw(trial, f"INSERT INTO events ({columns}) VALUES ({marks})", params=forged)


def test_a_poison_event_is_named_and_no_read_shows_a_traceback(trial: Desk,
                                                               db_url: str) -> None:
    drop_guards(trial, db_url)
    row = last_row(trial)
    head = trial.store.read_stream("S-003")[-1]
    poison = {**row, "stream_id": "S-003", "position": row["position"] + 1,
              "version": head.version + 1, "prev_hash": head.hash, "payload": "{not json",
              "type": "FormRecorded"}
    poison["hash"] = event_hash(poison)  # correctly chained: only its payload is wrong
    poison["chain_hash"] = link(row["chain_hash"], poison["hash"])
    columns = ", ".join(poison)
    marks = ", ".join(f":{name}" for name in poison)
    raw(trial, f"INSERT INTO events ({columns}) VALUES ({marks})", params=poison)
    status, data, err = call(db_url, "audit", "verify")
    assert status == 4 and "not a JSON object" in data["error"] and "S-003" in data["error"]
    for argv in (("status", "S-003"), ("eligibility", "S-003"), ("audit", "log", "S-003"),
                 ("status",), ("visits", "S-003")):
        status, out, err = text_call(db_url, *argv)
        assert "Traceback" not in out + err, (argv, err)
        assert status in (0, 4), (argv, status, err)
        if status == 4:
            assert len(err.strip().splitlines()) == 1 and "S-003" in err, (argv, err)
    status, out, err = text_call(db_url, "status", "S-003")
    assert status == 4 and "not a JSON object" in err
    before = trial.store.last_position()
    with pytest.raises(IntegrityFailure, match="not a JSON object"):  # a write: refused
        trial.send(COORDINATOR, M.RecordForm("S-003", "vitals", ("weight_kg=60",), START))
    assert trial.store.last_position() == before


def test_a_whole_stream_removed_from_the_middle_is_named(trial: Desk, db_url: str) -> None:
    drop_guards(trial, db_url)
    raw(trial, "DELETE FROM events WHERE stream_id = 'S-002'")
    status, data, _ = call(db_url, "audit", "verify")
    assert status == 4
    error = data["error"]
    assert "are missing" in error and "stream S-002" in error  # the gap and the stream
    assert "global chain does not link" in error  # the first broken link
    assert not error.startswith("OK")


def test_a_rechain_by_the_owner_is_caught_by_an_earlier_seal_and_root(
        trial: Desk, db_url: str, tmp_path: Path) -> None:
    key = tmp_path / "seal.key"
    status, data, _ = call(db_url, "audit", "keygen", "--out", str(key))
    assert status == 0 and Path(data["public_key"]).exists()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert call(db_url, "audit", "keygen", "--out", str(key))[0] == 2  # never overwritten
    public = {"TRIALFLOW_SEAL_PUBLIC_KEY": data["public_key"]}
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", db_url, "audit", "seal", "--key", str(key)], stdout=out, stderr=err,
               environ={}) == 0
    seal = tmp_path / "seal.json"
    seal.write_text(out.getvalue())
    root = err.getvalue().split("Root: ", 1)[1].split()[0]
    status, data, _ = call(db_url, "audit", "verify", "--seal", str(seal), "--root", root,
                           environ=public)
    assert status == 0 and data["seal_checked"] and data["root_checked"] == root

    # the owner rewrites a payload and re-chains everything: verify alone is satisfied
    drop_guards(trial, db_url)
    first = trial.store.read_stream("S-001")[1]
    rechain_with_payload(trial.store, "S-001", first.version, json.dumps({"forged": True}))
    assert call(db_url, "audit", "verify")[0] == 0
    # … an earlier seal and root are not
    status, data, _ = call(db_url, "audit", "verify", "--seal", str(seal), environ=public)
    assert status == 4 and "root" in data["error"]
    status, data, _ = call(db_url, "audit", "verify", "--root", root)
    assert status == 4 and "does not pass through the root" in data["error"]
    # … and a fresh seal made with a key of the attacker's does not pass as the auditor's
    own = tmp_path / "attacker.key"
    assert call(db_url, "audit", "keygen", "--out", str(own))[0] == 0
    out = io.StringIO()
    assert run(["--db", db_url, "audit", "seal", "--key", str(own)], stdout=out,
               stderr=io.StringIO(), environ={}) == 0
    forged = tmp_path / "forged.json"
    forged.write_text(out.getvalue())
    status, data, _ = call(db_url, "audit", "verify", "--seal", str(forged), environ=public)
    assert status == 4 and "another key" in data["error"]
    # an edited seal (its root replaced by the new one) fails its signature
    edited = json.loads(seal.read_text())
    edited["root"] = json.loads(forged.read_text())["root"]
    seal.write_text(json.dumps(edited))
    status, data, _ = call(db_url, "audit", "verify", "--seal", str(seal), environ=public)
    assert status == 4 and "altered" in data["error"]


def test_a_seal_needs_a_key_and_a_public_key(trial: Desk, db_url: str, tmp_path: Path) -> None:
    status, _, err = text_call(db_url, "audit", "seal")
    assert status == 2 and "TRIALFLOW_SEAL_KEY" in err
    seal = tmp_path / "seal.json"
    seal.write_text("{}")
    status, _, err = text_call(db_url, "audit", "verify", "--seal", str(seal))
    assert status == 2 and "public key" in err
    status, _, err = text_call(db_url, "audit", "verify", "--root", "12:xyz")
    assert status == 2 and "root" in err


def test_a_database_of_schema_version_2_is_migrated(db_url: str) -> None:
    """A database at schema version 2 (before the global chain), with its credentials in the
    default schema as version 2 kept them: migration 3 fills the global chain in from the
    events in position order, and on PostgreSQL moves the identity tables, rows included, to
    the schema personal logins cannot read; verify then checks the chain."""
    from events.chain import verify
    from events.engine import create_store_engine
    from events.migrations import v001_events, v002_commands
    from events.schema import upgrade
    from events.store import EventStore
    from tests.fixtures.events import read_rows
    from workflow.identity import metadata, table

    engine = create_store_engine(db_url)
    rows = read_rows()[:30]
    mark = "?" if sqlite(db_url) else "%s"
    metadata.create_all(engine)  # version 2 made them so, in the default schema
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE schema_migrations (version INTEGER NOT NULL PRIMARY KEY, "
            "name VARCHAR(200) NOT NULL, applied_at VARCHAR(40) NOT NULL)")
        for module in (v001_events, v002_commands):
            module.upgrade(conn)
            conn.exec_driver_sql(f"INSERT INTO schema_migrations VALUES ({mark}, {mark}, 'x')",
                                 (module.VERSION, module.NAME))
        columns = ", ".join(rows[0])
        conn.execute(sa.text(f"INSERT INTO events ({columns}) VALUES "
                             f"({', '.join(':' + c for c in rows[0])})"), rows)
        conn.execute(sa.text("INSERT INTO credentials VALUES ('ada', 'scrypt$16$1$1', 'ab', "
                             "'cd', :at)"), {"at": datetime(2025, 1, 1, tzinfo=UTC)})
    assert upgrade(engine)[0].startswith("003")
    chain = GENESIS_HASH
    for row in rows:
        chain = link(chain, row["hash"])
    result = verify(EventStore(engine))
    assert result.root == chain and result.events == 30
    name = table("credentials", sqlite=sqlite(db_url))
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT name FROM {name}").scalars().all() == ["ada"]
        if not sqlite(db_url):
            assert conn.exec_driver_sql("SELECT to_regclass('public.credentials')").scalar() \
                is None
    engine.dispose()


def test_roles_are_printed_for_a_dba_and_refused_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roles.db'}"
    status, out, _ = text_call(url, "init", "--print-roles")
    assert status == 0 and "CREATE ROLE trialflow_app NOLOGIN" in out
    assert "GRANT EXECUTE ON FUNCTION trialflow_append(" in out
    assert "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON events" in out
    assert not (tmp_path / "roles.db").exists()  # printing touches no database
    status, _, err = text_call(url, "init", "--roles")
    assert status == 2 and "PostgreSQL" in err


def test_events_of_the_wrong_shape_leave_the_trail_and_the_signatures_readable(
        trial: Desk, db_url: str) -> None:
    """Correctly chained events whose payloads lack their type's fields (only a write outside
    the executor makes them): the audit trail shows them, the signature listing marks the
    odd signature broken; neither crashes."""
    drop_guards(trial, db_url)
    for kind, payload in (("FormRecorded", {"weird": 1}),
                          ("SignatureRecorded", {"target_position": "x"})):
        row = last_row(trial)
        head = trial.store.read_stream("S-003")[-1]
        odd = {**row, "stream_id": "S-003", "position": row["position"] + 1,
               "version": head.version + 1, "prev_hash": head.hash, "type": kind,
               "payload": json.dumps(payload)}
        odd["hash"] = event_hash(odd)
        odd["chain_hash"] = link(row["chain_hash"], odd["hash"])
        raw(trial, f"INSERT INTO events ({', '.join(odd)}) VALUES "
            f"({', '.join(':' + name for name in odd)})", params=odd)
    for argv in (("audit", "log", "S-003"), ("--json", "audit", "log", "S-003"),
                 ("audit", "log", "--all", "--jsonl")):
        status, out, err = text_call(db_url, *argv)
        assert status == 0 and "Traceback" not in err, (argv, err)
        assert '"weird"' in out or "weird=1" in out, (argv, out[-500:])  # shown as stored
    status, rows, err = call(db_url, "signatures", "S-003")
    assert status == 0, err
    assert [r["state"] for r in rows if r["target_position"] == "x"] == ["broken"]
    # the subject's other reads name the event in one sentence (exit 4), never exit 70
    for argv in (("status", "S-003"), ("visits", "S-003"), ("eligibility", "S-003"),
                 ("status",)):
        status, out, err = text_call(db_url, *argv)
        assert status == 4 and "Traceback" not in err, (argv, status, err)
        assert len(err.strip().splitlines()) == 1 and "FormRecorded payload" in err, err


def test_odd_seal_and_key_files_are_refused_in_one_sentence(trial: Desk, db_url: str,
                                                            tmp_path: Path) -> None:
    key = tmp_path / "seal.key"
    assert call(db_url, "audit", "keygen", "--out", str(key))[0] == 0
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    status, data, _ = call(db_url, "audit", "verify", "--seal", str(deep), "--public-key",
                           f"{key}.pub")
    assert status == 4 and "nested too deeply" in data["error"]
    for seal, public in (("/dev/zero", f"{key}.pub"), (str(deep), "/dev/zero"),
                         (str(tmp_path), f"{key}.pub")):
        status, data, _ = call(db_url, "audit", "verify", "--seal", seal, "--public-key",
                               public)
        assert status == 2, (seal, public, data)
        assert "not a" in data["error"] or "is a directory" in data["error"], data
