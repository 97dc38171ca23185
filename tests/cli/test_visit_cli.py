"""`trialflow visit` through the CLI entry point (issue 15): a visit done outside its window is
recorded and the command says so at once (`warning: ...` on stderr, `warnings` in --json); a
visit is marked missed only after its window closed and only with --reason (exit 1 and 2,
nothing written). Clinical date-times follow one rule (`infuse --at`, a form's date-time):
a bare date is refused (exit 2).

The subject is built through the executor on a fake clock ending ten days before today (the
CLI writes on the real clock): D0 is today − 10 days at the site, so D1 and D4 have closed
and D360 is far ahead.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, new_study, through_infusion
from workflow.bootstrap import build_app
from workflow.deviations import VISIT_OUT_OF_WINDOW


def call(db: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def head(db: str) -> int:
    return build_app(db).store.last_position()


@pytest.fixture
def study(db_url: str) -> tuple[str, date]:
    """A study whose subject S-001 was infused ten days ago; returns (url, D0)."""
    today = datetime.now(UTC).date()
    start = today - timedelta(days=40)
    clock = FakeClock(datetime.combine(start, datetime.min.time(), UTC))
    flow = new_study(db_url, clock)
    d0 = through_infusion(flow, "S-001", start, clock)
    flow.executor.engine.dispose()
    return db_url, d0


def visit(db: str, *argv: str) -> tuple[int, str, str]:
    return call(db, "--user", COORDINATOR, "visit", "S-001", *argv)


def test_a_visit_done_outside_its_window_warns_on_stderr_and_in_json(
        study: tuple[str, date]) -> None:
    db, d0 = study
    late = d0 + timedelta(days=7)  # D4's window is D0+3..D0+5: two days after it closed
    window = f"window {d0 + timedelta(days=3)} to {d0 + timedelta(days=5)}"
    status, out, err = visit(db, "D4", "--done", "--on", late.isoformat())
    assert status == 0, (out, err)
    assert out.startswith("Visit D4 of S-001 recorded done. Positions: ")
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    for word in ("S-001", "visit D4", late.isoformat(), window, VISIT_OUT_OF_WINDOW):
        assert word in warnings[0], (word, err)

    status, out, err = call(db, "--user", COORDINATOR, "--json", "visit", "S-001", "D7",
                            "--done", "--on", (d0 + timedelta(days=9)).isoformat())
    assert status == 0, (out, err)
    body: dict[str, Any] = json.loads(out)  # exactly one document
    (warning,) = body["warnings"]
    assert "visit D7" in warning and VISIT_OUT_OF_WINDOW in warning, warning
    assert "warning:" not in err  # with --json the warning is in the document only
    deviations = json.loads(call(db, "--json", "deviations")[1])
    assert sorted(d["visit"] for d in deviations if d["kind"] == VISIT_OUT_OF_WINDOW) == [
        "D4", "D7"]

    status, out, err = call(db, "--user", COORDINATOR, "--json", "visit", "S-001", "D10",
                            "--done", "--on", (d0 + timedelta(days=10)).isoformat())
    assert status == 0, (out, err)
    assert "warnings" not in json.loads(out)  # in its window: no warnings key at all
    status, out, err = visit(db, "D14", "--done", "--on", (d0 + timedelta(days=10)).isoformat())
    assert status == 0 and "warning: " in err  # D14 opens at D0+12


def test_missed_needs_a_closed_window_and_a_reason(study: tuple[str, date]) -> None:
    db, d0 = study
    before = head(db)
    status, out, _ = call(db, "--user", COORDINATOR, "--json", "visit", "S-001", "D360",
                          "--missed", "--reason", "moved away")
    assert status == 1, out
    error = json.loads(out)
    assert error["rule"] == "visit_window_open"
    assert "D360" in error["error"] and str(d0 + timedelta(days=374)) in error["error"]
    assert head(db) == before
    status, out, _ = call(db, "--user", COORDINATOR, "--json", "visit", "S-001", "D1",
                          "--missed")
    assert status == 2, out
    assert "reason" in out
    assert head(db) == before
    status, out, err = visit(db, "D1", "--missed", "--reason", "subject unwell at home")
    assert status == 0, (out, err)
    assert "warning" not in err
    rows = json.loads(call(db, "--json", "visits", "S-001")[1])
    d1 = next(r for r in rows if r["visit"] == "D1")
    assert (d1["status"], d1["missed_reason"], d1["missed_note"]) == (
        "missed", "recorded", "subject unwell at home")


def test_a_clinical_date_time_is_never_a_bare_date(study: tuple[str, date]) -> None:
    db, d0 = study
    before = head(db)
    status, _, err = call(db, "--user", COORDINATOR, "infuse", "S-001", "--at", d0.isoformat(),
                          "--cells", "1e8", "--coi-id", "COI-S-001")
    assert status == 2 and "a date without a time" in err, err
    status, out, _ = call(db, "--user", COORDINATOR, "--json", "record", "S-001",
                          "adverse_event", "term=fever", f"onset_date={d0}", "grade=1",
                          f"awareness_at={d0}")
    assert status == 2, out
    assert json.loads(out)["error"].count("awareness_at") >= 1
    assert head(db) == before
