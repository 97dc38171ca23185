"""Issued exactly once across processes (docs/design.md "Reminders"): three `scheduler tick`
processes on one PostgreSQL database, held at the append lock until all three are waiting so
that they really race, issue each reminder once (the database keeps the command id
`reminder-issue-<id>` unique) and cancel each obsolete reminder once; every reminder still
reaches the webhook, with its id as the idempotency key. And only a user with the scheduler
role may issue: anyone else is refused, naming the rule, and nothing is written."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from events.store import APPEND_LOCK_KEY
from tests.scheduler.study import SUBJECT, build_infused, local, position_of, write
from tests.scheduler.support import (
    Webhook,
    clean_env,
    count_all,
    events,
    issued,
    of_type,
    spawn,
    stop,
    tick,
    trialflow,
    wait_until,
)
from tests.support.auth import session_for
from tests.support.clock import FakeClock
from tests.support.pg import admin_dsn, fresh_database
from tests.support.study import COORDINATOR, on_day, open_desk, through_infusion
from workflow.commands import messages as M

NOW = local("2025-02-16")
EXPECTED = {
    ("S-001", "visit:D1@2025-02-06", "overdue"), ("S-001", "visit:D4@2025-02-09", "overdue"),
    ("S-001", "visit:D7@2025-02-12", "overdue"), ("S-001", "visit:D10@2025-02-15", "due"),
    ("S-001", "visit:D14@2025-02-19", "window_opening"),
    ("S-002", "visit:D1@2025-02-09", "overdue"), ("S-002", "visit:D4@2025-02-12", "overdue"),
    ("S-002", "visit:D7@2025-02-15", "due"), ("S-002", "visit:D10@2025-02-18", "window_opening"),
}


@pytest.fixture
def two_subjects() -> Iterator[tuple[str, int]]:
    """PostgreSQL: S-001 infused 2025-02-05 with a serious AE (aware 2025-02-06 20:00+08:00),
    S-002 infused 2025-02-08; returns the URL and the AE's position."""
    with fresh_database() as url:
        build_infused(url).store.engine.dispose()
        clock = FakeClock("2025-01-09T04:00:00+00:00")
        flow = open_desk(url, clock)
        assert through_infusion(flow, "S-002", date(2025, 1, 9), clock) == date(2025, 2, 8)
        on_day(clock, date(2025, 2, 7))
        outcome = flow.send(COORDINATOR, M.RecordForm(SUBJECT, "adverse_event", (
            "term=Pneumonia", "onset_date=2025-02-06", "grade=3",
            "serious_criteria=hospitalisation", "awareness_at=2025-02-06T20:00:00+08:00"),
            date(2025, 2, 7)))
        flow.store.engine.dispose()
        yield url, int(outcome.result.positions[0])


def _waiting(gate: Any) -> int:
    row = gate.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND objid = %s AND database = (SELECT oid FROM pg_database "
        "WHERE datname = current_database())", (APPEND_LOCK_KEY,)).fetchone()
    return int(row[0])


def _race(url: str, now: str, *options: str, processes: int = 3) -> list[dict[str, Any]]:
    """Start `processes` ticks at once while holding the append lock; let go once every one
    of them waits for it; their reports."""
    import json

    import psycopg

    started: list[subprocess.Popen[str]] = []
    with psycopg.connect(admin_dsn(url.rsplit("/", 1)[1]), autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK_KEY,))
        try:
            started = [spawn(url, "--json", "scheduler", "tick", "--now", now, *options)
                       for _ in range(processes)]
            wait_until(lambda: _waiting(gate) == processes,
                       f"{processes} ticks waiting at the append lock", timeout=30)
        except BaseException:
            for process in started:
                stop(process)
            raise
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK_KEY,))
    reports = []
    for process in started:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, (out, err)
        assert "Traceback" not in err, err
        reports.append(json.loads(out))
    return reports


def _correct_infusion(url: str) -> dict[str, str]:
    """Move S-001's D0 a day later; the reminder ids of S-001's visits issued so far."""
    old = {p["reminder_id"]: p["obligation"] for p in of_type(url, "ReminderIssued")
           if p["subject"] == SUBJECT and p["obligation"].startswith("visit:")}
    infusion = position_of(url, SUBJECT, "InfusionGiven")
    write(url, COORDINATOR, "correct", SUBJECT, str(infusion),
          "infused_at=2025-02-06T10:00:00+08:00", "--reason", "Infused a day later.")
    return old


@pytest.mark.postgres
def test_three_ticks_at_once_issue_and_cancel_each_reminder_once(
        two_subjects: tuple[str, int], webhook: Webhook) -> None:
    url, ae = two_subjects
    reports = _race(url, NOW, "--webhook", webhook.url)
    counts = issued(url)
    assert set(counts) == EXPECTED | {(SUBJECT, f"sae:{ae}", "sae_report_overdue")}
    assert set(counts.values()) == {1}  # exactly once in the events table
    ids = {p["reminder_id"] for p in of_type(url, "ReminderIssued")}
    each = [set(r["issued"]) for r in reports]
    assert sum(len(s) for s in each) == len(counts) == len(ids) == 10
    assert set().union(*each) == ids
    # All three started from nothing issued, so every obligation was tried three times: one
    # process appended it, the other two got the first result back.
    assert sum(r["already_issued"] for r in reports) == 2 * len(ids)
    # At least once: every reminder reached the webhook, each copy under its own id.
    assert set(webhook.ids()) == ids
    assert all(r.headers["Idempotency-Key"] == r.body["id"] for r in webhook.received)
    delivered = {p["reminder_id"] for p in of_type(url, "ReminderDelivered")
                 if p["channel"] == "webhook"}
    assert delivered == ids

    # D0 moves: two race to cancel S-001's five visit reminders and issue the new ones.
    old = _correct_infusion(url)
    assert len(old) == 5
    _race(url, NOW, processes=2)
    cancelled = Counter(p["reminder_id"] for p in of_type(url, "ReminderCancelled"))
    assert cancelled == dict.fromkeys(old, 1)
    counts = issued(url)
    assert set(counts.values()) == {1}
    assert {k for k in counts if k[0] == SUBJECT and k[1].startswith("visit:")} - EXPECTED == {
        (SUBJECT, "visit:D1@2025-02-07", "overdue"), (SUBJECT, "visit:D4@2025-02-10", "overdue"),
        (SUBJECT, "visit:D7@2025-02-13", "overdue"), (SUBJECT, "visit:D10@2025-02-16", "due"),
        (SUBJECT, "visit:D14@2025-02-20", "window_opening")}


@pytest.mark.postgres
def test_each_cancellation_is_reported_by_the_one_scheduler_that_made_it(
        two_subjects: tuple[str, int]) -> None:
    url, _ = two_subjects
    tick(url, NOW)
    old = _correct_infusion(url)
    reports = _race(url, NOW, processes=2)
    assert len(of_type(url, "ReminderCancelled")) == len(old) == 5
    assert sum(len(r["cancelled"]) for r in reports) == 5


# --- only the scheduler role ---------------------------------------------------------------


def test_only_a_scheduler_may_issue(infused: str) -> None:
    # cora proves who she is (a live session, as after `trialflow login`): refused all the
    # same, for her role
    session = session_for(infused, COORDINATOR)
    before = count_all(infused)
    done = trialflow(infused, "--json", "scheduler", "tick", "--now", NOW, user=COORDINATOR,
                     env=clean_env(TRIALFLOW_SESSION=session))
    assert done.status == 1
    body = done.json()
    assert body["rule"] == "role"
    assert "cora" in body["error"] and re.search(r"only (a )?scheduler may", body["error"])
    assert count_all(infused) == before  # nothing written, not even a first reminder
    assert events(infused) == []
    # and the scheduler writes reminders only, never clinical data
    record = trialflow(infused, "--json", "record", SUBJECT, "vitals", "weight_kg=60", "--on",
                       "2025-02-16")
    assert record.status == 1 and record.json()["rule"] == "role"
    assert count_all(infused) == before
