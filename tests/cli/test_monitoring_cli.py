"""Data review end to end through the CLI entry point, on SQLite and PostgreSQL: JSON shapes,
exit codes, the audit trail, nothing written on refusal, idempotent --command-id."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from typing import Any

import pytest

from tests.support.auth import run_cli
from workflow.bootstrap import build_app

CONSENT = (date.today() - timedelta(days=3)).isoformat()
QUERY_KEYS = {"id", "subject", "position", "form", "field", "text", "value", "state",
              "opened_by", "opened_at", "answer", "answered_by", "answered_at",
              "correction_position", "closed_by", "closed_at", "close_reason"}
SDV_KEYS = {"subject", "position", "form", "on", "verified", "verified_by", "verified_at",
            "verified_position", "cleared_by", "corrected_by"}


def call(db: str, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], stdout=out, stderr=err,
                     stdin=None if stdin is None else io.StringIO(stdin), environ=None)
    return status, out.getvalue(), err.getvalue()


def ok(db: str, user: str, *argv: str) -> Any:
    status, out, err = call(db, "--user", user, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)


def read(db: str, *argv: str) -> Any:
    status, out, err = call(db, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)


def last_position(db: str) -> int:
    return build_app(db).store.last_position()


def refused(db: str, user: str, status: int, rule: str, *argv: str) -> dict[str, Any]:
    """The command exits with `status`, names `rule` and writes nothing."""
    before = last_position(db)
    code, out, _ = call(db, "--user", user, "--json", *argv)
    body: dict[str, Any] = json.loads(out)
    assert (code, body["rule"]) == (status, rule), (argv, body)
    assert last_position(db) == before, argv
    return body


@pytest.fixture
def db(db_url: str) -> str:
    assert call(db_url, "init", "--admin", "ada")[0] == 0
    ok(db_url, "ada", "sites", "add", "PKU3", "--tz", "Asia/Shanghai")
    ok(db_url, "ada", "sites", "add", "OTHER", "--tz", "Europe/Berlin")
    for name, role, site in (("cora", "coordinator", "PKU3"), ("otto", "coordinator", "OTHER"),
                             ("mona", "monitor", None), ("dora", "data_manager", None)):
        ok(db_url, "ada", "users", "add", name, "--role", role,
           *(["--site", site] if site else []))
    ok(db_url, "cora", "consent", "S-001", "--on", CONSENT, "--consent-form-version", "2.0")
    return db_url


def record_vitals(db: str) -> int:
    done = ok(db, "cora", "record", "S-001", "vitals", "weight_kg=58", "height_cm=162",
              "--on", CONSENT)
    position: int = done["positions"][0]
    return position


def test_query_lifecycle_with_a_correction(db: str) -> None:
    vitals = record_vitals(db)
    opened = ok(db, "mona", "query", "open", "S-001", str(vitals), "--field", "weight_kg",
                "--text", "Source says 85 kg", "--command-id", "q-1")
    qid = opened["query"]
    assert qid == f"Q-{opened['positions'][0]}" and opened["repeated"] is False
    assert {"subject": "S-001", "position": vitals, "form": "vitals", "field": "weight_kg",
            "state": "open"}.items() <= opened.items()
    before = last_position(db)
    again = ok(db, "mona", "query", "open", "S-001", str(vitals), "--field", "weight_kg",
               "--text", "Source says 85 kg", "--command-id", "q-1")
    assert (again["repeated"], again["query"], again["positions"]) == (
        True, qid, opened["positions"])
    assert last_position(db) == before
    refused(db, "mona", 2, "command_id_reused", "query", "open", "S-001", str(vitals),
            "--field", "height_cm", "--text", "?", "--command-id", "q-1")

    [listed] = read(db, "queries", "--open")
    assert set(listed) == QUERY_KEYS
    assert (listed["id"], listed["state"], listed["value"]) == (qid, "open", 58)

    answered = ok(db, "cora", "query", "answer", qid, "weight_kg=85", "--text",
                  "Transcription error", "--reason", "CRF typo", "--command-id", "a-1")
    correction = answered["correction_position"]
    assert answered["positions"] == [correction, correction + 1]
    assert answered["correction"]["changes"] == {"weight_kg": 85}
    trail = read(db, "audit", "log", "S-001")["events"]
    fixed = next(e for e in trail if e["position"] == correction)
    assert (fixed["type"], fixed["reason"], fixed["actor"]) == ("FormCorrected", "CRF typo",
                                                                 "cora")
    assert fixed["payload"]["previous"] == {"weight_kg": 58}
    assert [e["type"] for e in trail[-3:]] == ["QueryOpened", "FormCorrected", "QueryAnswered"]
    status, text, _ = call(db, "audit", "log", "S-001")
    assert status == 0 and "CRF typo" in text
    assert read(db, "eligibility", "S-001") is not None
    assert read(db, "queries", "--open") == []
    [listed] = read(db, "queries", "S-001")
    assert (listed["state"], listed["answer"], listed["answered_by"],
            listed["correction_position"]) == ("answered", "Transcription error", "cora",
                                               correction)

    closed = ok(db, "mona", "query", "close", qid)
    assert closed["state"] == "closed" and closed["state_at_close"] == "answered"
    [listed] = read(db, "queries")
    assert (listed["state"], listed["closed_by"]) == ("closed", "mona")
    status, text, _ = call(db, "queries")
    assert status == 0 and qid in text and "closed" in text


def test_the_form_shows_the_corrected_value(db: str) -> None:
    vitals = record_vitals(db)
    qid = ok(db, "mona", "query", "open", "S-001", str(vitals), "--field", "weight_kg",
             "--text", "?")["query"]
    ok(db, "cora", "query", "answer", qid, "weight_kg=85", "--text", "fixed")
    from workflow.subject import load_subject

    state = load_subject(build_app(db).store, "S-001")
    assert state.forms[vitals].values["weight_kg"] == 85


def test_refusals_name_the_rule_and_write_nothing(db: str) -> None:
    vitals = record_vitals(db)
    open_args = ("query", "open", "S-001", str(vitals), "--field", "weight_kg", "--text", "?")
    refused(db, "cora", 1, "role", *open_args)
    before = last_position(db)  # a name that is no user: refused like a wrong password
    code, out, _ = call(db, "--user", "nobody", "--json", "--password-stdin", *open_args,
                        stdin="a-guessed-password\n")
    assert (code, json.loads(out)["rule"]) == (1, "authentication_failed")
    assert [e.type for e in build_app(db).store.read_all(after=before)] == [
        "AuthenticationFailed"]
    refused(db, "mona", 2, "invalid_input", "query", "open", "S-001", str(vitals), "--field",
            "colour", "--text", "?")
    qid = ok(db, "mona", *open_args)["query"]
    answer_args = ("query", "answer", qid, "weight_kg=85", "--text", "fixed")
    refused(db, "mona", 1, "role", *answer_args)
    refused(db, "dora", 1, "role", *answer_args)
    body = refused(db, "otto", 1, "site", *answer_args)
    assert body["detail"]["subject"] == "S-001"
    refused(db, "cora", 2, "invalid_input", "query", "answer", qid, "weight_kg=NaN", "--text",
            "x")
    refused(db, "cora", 1, "role", "query", "close", qid, "--reason", "x")
    refused(db, "mona", 1, "query_unanswered", "query", "close", qid)
    refused(db, "cora", 1, "role", "sdv", "S-001", str(vitals))
    refused(db, "dora", 1, "role", "sdv", "S-001", str(vitals))
    refused(db, "mona", 1, "role", "study", "lock", "--reason", "x")
    ok(db, "ada", "users", "deactivate", "cora")
    refused(db, "cora", 1, "user_deactivated", *answer_args)
    status, _, err = call(db, "--user", "mona", *open_args[:-1], "")
    assert status == 2 and "--text" in err
    assert [q["state"] for q in read(db, "queries")] == ["open"]


def test_sdv_is_cleared_by_a_correction(db: str) -> None:
    vitals = record_vitals(db)
    [form] = read(db, "sdv-status", "S-001")
    assert set(form) == SDV_KEYS and form["verified"] is False
    done = ok(db, "mona", "sdv", "S-001", str(vitals), "--command-id", "v-1")
    assert done["verified"] is True
    before = last_position(db)
    assert ok(db, "mona", "sdv", "S-001", str(vitals), "--command-id", "v-1")["repeated"]
    assert last_position(db) == before
    [form] = read(db, "sdv-status")
    assert (form["verified"], form["verified_by"], form["verified_position"]) == (
        True, "mona", done["positions"][0])
    refused(db, "mona", 1, "already_verified", "sdv", "S-001", str(vitals))
    fixed = ok(db, "cora", "correct", "S-001", str(vitals), "weight_kg=59", "--reason", "typo")
    [form] = read(db, "sdv-status", "S-001")
    assert (form["verified"], form["verified_by"], form["cleared_by"]) == (
        False, None, fixed["positions"][0])
    status, text, _ = call(db, "sdv-status", "S-001")
    assert status == 0 and "vitals" in text and "no" in text.split()


def test_study_lock_refuses_subject_writes_and_unlock_restores_them(db: str) -> None:
    vitals = record_vitals(db)
    qid = ok(db, "mona", "query", "open", "S-001", str(vitals), "--field", "weight_kg",
             "--text", "?")["query"]
    refused(db, "dora", 1, "role", "study", "unlock", "--reason", "x")
    locked = ok(db, "dora", "study", "lock", "--reason", "primary analysis")
    assert locked["locked"] is True and locked["versions"].keys() == {"study"}
    writes: list[tuple[str, tuple[str, ...]]] = [
        ("cora", ("consent", "S-002", "--on", CONSENT, "--consent-form-version", "2.0")),
        ("cora", ("record", "S-001", "vitals", "weight_kg=60", "--on", CONSENT)),
        ("cora", ("correct", "S-001", str(vitals), "weight_kg=60", "--reason", "typo")),
        ("cora", ("screen-fail", "S-001", "--reason", "age")),
        ("cora", ("off-study", "S-001", "--reason", "consent_withdrawn")),
        ("cora", ("query", "answer", qid, "weight_kg=61", "--text", "fixed")),
        ("mona", ("query", "open", "S-001", str(vitals), "--field", "height_cm", "--text",
                  "?")),
        ("mona", ("query", "close", qid, "--reason", "x")),
        ("mona", ("sdv", "S-001", str(vitals))),
    ]
    for user, argv in writes:
        body = refused(db, user, 1, "study_locked", *argv)
        subject = "S-002" if argv[0] == "consent" else "S-001"
        assert subject in body["error"] and body["detail"]["subject"] == subject, body
    status, _, err = call(db, "--user", "cora", "record", "S-001", "vitals", "weight_kg=60")
    assert status == 1 and "locked" in err and "S-001" in err and len(err.splitlines()) == 1
    # reading still works
    assert read(db, "status", "S-001")["phase"] == "screening"
    assert [q["state"] for q in read(db, "queries")] == ["open"]
    assert read(db, "sdv-status", "S-001")[0]["verified"] is False
    assert read(db, "audit", "log", "study")["events"][-1]["type"] == "StudyLocked"
    refused(db, "dora", 1, "already_locked", "study", "lock", "--reason", "again")
    unlocked = ok(db, "ada", "study", "unlock", "--reason", "analysis done")
    assert unlocked["locked"] is False
    for user, argv in writes:
        if argv[0] != "off-study":  # S-001 screen-failed just before
            ok(db, user, *argv)
    assert read(db, "status", "S-001")["phase"] == "screen_failed"
    assert read(db, "status", "S-002")["phase"] == "screening"
    assert [q["state"] for q in read(db, "queries", "S-001")] == ["closed", "open"]
