"""Two investigators confirm the 6th and 7th subject at once on PostgreSQL (two processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.auth import login_environ
from tests.support.clock import FakeClock
from tests.support.study import INVESTIGATOR, enrol, new_study, screen_eligible

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_cannot_both_take_the_last_place(postgres_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)  # never ahead of
    today = now.date()  # the database's clock (04:00 today was, from 00:00 to 04:00 UTC)
    start = today - timedelta(days=5)
    clock = FakeClock(now)
    flow = new_study(postgres_url, clock)
    for n in range(1, 6):
        enrol(flow, f"S-{n:03d}", start, clock)
    for subject in ("S-006", "S-007"):
        screen_eligible(flow, subject, start, clock=clock)
    clock.set(now)
    environ = {**os.environ, **login_environ(["--db", postgres_url, "--user", INVESTIGATOR])}
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli", "--db", postgres_url, "--user",
                          INVESTIGATOR, "--json", "confirm-eligibility", subject],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=environ)
        for subject in ("S-006", "S-007")
    ]
    codes = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        codes.append(proc.returncode)
        assert "Traceback" not in err
        if proc.returncode == 1:
            assert '"rule": "enrolment_cap"' in out
    assert sorted(codes) == [0, 1]
    study = flow.study()
    assert len(study.taken_places()) == 6
    assert sorted(p.order for p in study.taken_places()) == [1, 2, 3, 4, 5, 6]
