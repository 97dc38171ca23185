"""The subject commands end to end through the CLI entry point (exit codes, JSON, nothing
written on refusal)."""

from __future__ import annotations

import io
import json
from datetime import date, timedelta
from pathlib import Path

from tests.support.auth import run_cli
from workflow.bootstrap import build_app

CONSENT = (date.today() - timedelta(days=3)).isoformat()


def call(db: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], stdout=out, stderr=err,
                 environ=None)
    return status, out.getvalue(), err.getvalue()


def positions(db: str) -> int:
    return build_app(db).store.last_position()


def test_subject_commands_through_the_cli(sqlite_url: str, tmp_path: Path) -> None:
    db = sqlite_url
    assert call(db, "init", "--admin", "ada")[0] == 0
    assert call(db, "--user", "ada", "sites", "add", "PKU3", "--tz", "Asia/Shanghai")[0] == 0
    assert call(db, "--user", "ada", "users", "add", "cora", "--role", "coordinator",
                "--site", "PKU3")[0] == 0
    status, out, _ = call(db, "--user", "cora", "--json", "consent", "S-001", "--on", CONSENT,
                          "--consent-form-version", "2.0", "--command-id", "c-1")
    assert status == 0 and json.loads(out)["phase"] == "screening"
    again = json.loads(call(db, "--user", "cora", "--json", "consent", "S-001", "--on", CONSENT,
                            "--consent-form-version", "2.0", "--command-id", "c-1")[1])
    assert again["repeated"] is True
    before = positions(db)
    cases = [
        (2, ["record", "S-001", "vitals", "weight_kg=NaN", "--on", CONSENT], "weight_kg"),
        (2, ["record", "S-001", "vitals", "colour=blue", "--on", CONSENT], "colour"),
        (2, ["record", "S-001", "infusion", "cells=1"], "trialflow infuse"),
        (1, ["record", "S-001", "vitals", "weight_kg=60", "--on", "2000-01-01"],
         "assessment_before_consent"),
        (1, ["leukapheresis", "S-001", "--on", CONSENT, "--coi-id", "C"], "phase"),
        (1, ["confirm-eligibility", "S-001"], "role"),
        (2, ["consent", "S-002", "--on", "tomorrow", "--consent-form-version", "1"], "date"),
        (2, ["off-study", "S-001", "--reason", "bored"], "reason"),
        (2, ["consent", "S-001", "--on", CONSENT, "--consent-form-version", "9",
             "--command-id", "c-1"], "command_id_reused"),
    ]
    for expected, argv, needle in cases:
        status, out, _ = call(db, "--user", "cora", "--json", *argv)
        assert status == expected, (argv, out)
        assert needle in out, (argv, out)
        assert positions(db) == before, argv
    status, out, _ = call(db, "--user", "nobody", "--json", "record", "S-001", "vitals",
                          "weight_kg=60")  # no credential to present: asked for, not told
    assert status == 1 and json.loads(out)["rule"] == "authentication_required"
    assert positions(db) == before
    status, out, _ = call(db, "--json", "status", "S-001")
    body = json.loads(out)
    assert status == 0 and {"subject", "phase", "days_in_phase", "study_day", "cohort",
                            "next_step"} <= set(body)
    bad = tmp_path / "broken.toml"
    from workflow.protocol import builtin_protocol_text

    text = builtin_protocol_text(2)
    assert "window_days = 28" in text
    bad.write_text(text.replace("window_days = 28", "window_days = -28", 1))
    status, _, err = call(db, "--user", "ada", "protocol", "load", str(bad))
    assert status == 2 and "broken.toml" in err and "window_days" in err
    assert positions(db) == before
    status, out, _ = call(db, "--json", "protocol", "diagram")
    assert status == 0 and json.loads(out)["mermaid"].startswith("stateDiagram-v2")


def test_a_write_without_a_command_id_gets_the_stores_time_ordered_one(sqlite_url: str) -> None:
    """The CLI fixes the id before the write (a repeat may bring it back) with the store's
    `new_id`: a UUID of version 7, as every id the store makes (docs/design.md)."""
    import uuid

    db = sqlite_url
    assert call(db, "init", "--admin", "ada")[0] == 0
    status, out, _ = call(db, "--user", "ada", "--json", "sites", "add", "PKU3", "--tz",
                          "Asia/Shanghai")
    assert status == 0, out
    made = uuid.UUID(json.loads(out)["command_id"])
    assert made.version == 7 and str(made) == json.loads(out)["command_id"]
