"""Studies for the scheduler's tests, built through the real command handlers.

S-001 (site PKU3, Asia/Shanghai, UTC+8): consented 2025-01-06, infused (D0) 2025-02-05
10:00+08:00. With the protocol's follow-up windows D1 2025-02-06 (±0), D4 2025-02-09 (±1),
D7 2025-02-12 (±1), D10 2025-02-15 (±1), D14 2025-02-19 (±2) …

The template is built once per session and copied (SQLite online backup) for each test, so a
test's processes write to a database of its own.
"""

from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta
from typing import Any

from tests.support.clock import FakeClock
from tests.support.study import TEST_KDF, Desk, new_study, through_infusion
from workflow.bootstrap import build_app
from workflow.protocol import Protocol
from workflow.study import load_study

START = date(2025, 1, 6)
D0 = date(2025, 2, 5)
SUBJECT = "S-001"


def local(day: date | str, hh: int = 12, mm: int = 0) -> str:
    """`hh:mm` at the site (UTC+8) on `day`, as a UTC time for `--now`."""
    moment = datetime.fromisoformat(f"{day}T{hh:02d}:{mm:02d}:00+08:00")
    return (moment - timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%SZ")


def plus(now: str, **delta: float) -> str:
    moment = datetime.fromisoformat(now.replace("Z", "+00:00")) + timedelta(**delta)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_infused(url: str) -> Desk:
    clock = FakeClock("2025-01-01T00:00:00+00:00")
    flow = new_study(url, clock)
    assert through_infusion(flow, SUBJECT, START, clock) == D0
    return flow


def protocol_of(url: str) -> Protocol:
    app = build_app(url, kdf=TEST_KDF)
    try:
        return load_study(app.store).protocol
    finally:
        app.engine.dispose()


# --- the CLI in-process, for the commands that are not the scheduler's ---------------------


def call(url: str, *argv: str) -> tuple[int, str, str]:
    from tests.support.auth import run_cli

    out, err = io.StringIO(), io.StringIO()
    status = int(run_cli(["--db", url, *argv], stdout=out, stderr=err,
                     environ=None))
    return status, out.getvalue(), err.getvalue()


def query(url: str, *argv: str) -> Any:
    status, out, err = call(url, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)


def write(url: str, user: str, *argv: str) -> dict[str, Any]:
    status, out, err = call(url, "--user", user, "--json", *argv)
    assert status == 0, (argv, out, err)
    body: dict[str, Any] = json.loads(out)
    return body


def position_of(url: str, subject: str, type_: str) -> int:
    found = [e["position"] for e in query(url, "audit", "log", subject)["events"]
             if e["type"] == type_]
    assert len(found) == 1, found
    return int(found[0])


def visits_of(url: str, now: str, subject: str = SUBJECT) -> dict[str, dict[str, Any]]:
    return {r["visit"]: r for r in query(url, "visits", "--now", now)
            if r["subject"] == subject}
