"""Exports are deterministic, recorded as `ExportRecorded` by the acting user, never contain
export records, and still happen (with a warning) when they cannot be recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.exports.support import cli, read_only_url, store_of
from tests.support.auth import session_for
from workflow import event_types as T

KINDS = [("odm", ["export", "odm"], "x.xml"), ("fhir", ["export", "fhir"], "x.json"),
         ("csv", ["export", "csv"], "csvdir"), ("ics", ["export", "ics", "S-002"], "x.ics")]


def _bytes(path: Path) -> bytes:
    if path.is_dir():
        return b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in sorted(path.iterdir()))
    return path.read_bytes()


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "SHA256SUMS").read_bytes() if path.is_dir()
                          else path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("kind", "argv", "name"), KINDS)
def test_the_same_log_gives_the_same_bytes_and_each_export_is_recorded(
        db: str, tmp_path: Path, kind: str, argv: list[str], name: str) -> None:
    store = store_of(db)
    head = store.last_position()
    first, second = tmp_path / "1" / name, tmp_path / "2" / name
    for out in (first, second):
        out.parent.mkdir()
        status, stdout, err = cli(db, "--json", *argv, "--out", str(out), user="audrey")
        assert status == 0 and err == "", err
        answer = json.loads(stdout)
        assert answer["recorded"] is True and answer["position"] == head
    assert _bytes(first) == _bytes(second)  # an export record in between changes nothing
    records = [e for e in store.read_stream("study") if e.type == T.EXPORT_RECORDED]
    assert [e.position for e in records] == [head + 1, head + 2]
    for record in records:
        assert record.actor == "audrey" and record.role == "auditor"
        assert {k: record.payload[k] for k in ("kind", "file", "sha256", "position")} == {
            "kind": kind, "file": name, "sha256": _digest(first), "position": head}


def test_export_records_never_appear_in_an_export(db: str, tmp_path: Path) -> None:
    status, _, err = cli(db, "export", "odm", "--out", str(tmp_path / "a.xml"), user="dora")
    assert status == 0, err
    assert any(e.type == T.EXPORT_RECORDED for e in store_of(db).read_all())
    for argv in (["export", "csv", "--out", str(tmp_path / "c")],
                 ["export", "fhir", "--out", str(tmp_path / "f.json")],
                 ["export", "odm", "--out", str(tmp_path / "b.xml")]):
        assert cli(db, *argv)[0] == 0
    assert T.EXPORT_RECORDED.encode() not in (tmp_path / "c" / "events.csv").read_bytes()
    assert b"a.xml" not in (tmp_path / "b.xml").read_bytes()
    assert (tmp_path / "a.xml").read_bytes() == (tmp_path / "b.xml").read_bytes()


def test_read_only_database_exports_with_a_warning_and_records_nothing(
        db: str, tmp_path: Path) -> None:
    head = store_of(db).last_position()
    writable = tmp_path / "writable.xml"
    assert cli(db, "export", "odm", "--out", str(writable))[0] == 0
    out = tmp_path / "read-only.xml"
    # audrey proves who she is with the session `trialflow login` started on the writable
    # database (a read-only one cannot store a session)
    login = {"TRIALFLOW_SESSION": session_for(db, "audrey")}
    status, stdout, err = cli(read_only_url(db), "--json", "export", "odm", "--out", str(out),
                              user="audrey", environ=login)
    assert status == 0
    answer = json.loads(stdout)
    assert answer["recorded"] is False and "read-only" in answer["warning"]
    assert err.startswith("Warning: the export was written but not recorded")
    assert "read-only" in err
    assert out.read_bytes() == writable.read_bytes()
    assert store_of(db).last_position() == head


@pytest.mark.parametrize(("user", "reason"), [(None, "--user"), ("scheduler", "scheduler")])
def test_without_a_user_who_may_write_the_export_warns(
        db: str, tmp_path: Path, user: str | None, reason: str) -> None:
    head = store_of(db).last_position()
    out = tmp_path / "bundle.json"
    status, stdout, err = cli(db, "export", "fhir", "--out", str(out), user=user)
    assert status == 0 and out.is_file()
    assert "not recorded" in stdout
    assert "Warning:" in err and reason in err
    assert store_of(db).last_position() == head


def test_a_user_who_is_not_proven_exports_nothing(db: str, tmp_path: Path) -> None:
    """`--user nobody` (not a user, no password to present): refused before anything is
    exported, and nothing at all is written."""
    head = store_of(db).last_position()
    out = tmp_path / "bundle.json"
    status, stdout, _ = cli(db, "--json", "export", "fhir", "--out", str(out), user="nobody")
    assert status == 1 and not out.exists()
    assert json.loads(stdout)["rule"] == "authentication_required"
    assert store_of(db).last_position() == head


def test_an_unwritable_target_is_bad_input(db: str, tmp_path: Path) -> None:
    status, _, err = cli(db, "export", "odm", "--out", str(tmp_path / "missing" / "x.xml"),
                         user="audrey")
    assert status == 2 and "missing" in err
    assert not any(e.type == T.EXPORT_RECORDED for e in store_of(db).read_all())
