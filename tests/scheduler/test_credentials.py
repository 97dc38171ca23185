"""The scheduler is a service account (docs/identity.md): every pass proves itself with the
secret `init` generated for it, read from `--secret-file` or `TRIALFLOW_SECRET_FILE`. Without
it nothing is written; with a wrong one only the failed attempt is recorded; a pass may not be
decided in the future (a `--now` ahead of the real clock is for reads only), so a mistyped
year never issues, delivers or silences a reminder; and the scheduler's secret proves nothing
but the scheduler's own writes."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from projections.scheduler import tick as one_pass
from tests.scheduler.study import SUBJECT, local, query, write
from tests.scheduler.support import (
    Webhook,
    clean_env,
    count_all,
    events,
    issued_keys,
    of_type,
    scheduler_env,
    secret_file,
    trialflow,
)
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, SCHEDULER, SCHEDULER_SECRET, TEST_KDF
from workflow.bootstrap import build_app
from workflow.errors import RuleViolation
from workflow.identity import Password, Secret

NOW = local("2025-02-06")  # S-001's D1 is due and D4's window opens soon: two reminders due
WRONG = "not-the-scheduler-secret-" + "w" * 30


def _last_position(url: str) -> int:
    return int(max(e["position"] for e in events(url, None)))


def _next_year() -> str:
    """About a year after the real clock: far beyond its 60 s tolerance."""
    return (datetime.now(UTC) + timedelta(days=366)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the secret ----------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, SCHEDULER], ids=["user-by-default", "user-scheduler"])
def test_a_tick_without_the_secret_is_refused_and_writes_nothing(infused: str,
                                                                 user: str | None) -> None:
    before = count_all(infused)
    done = trialflow(infused, "--json", "scheduler", "tick", "--now", NOW, user=user,
                     env=clean_env())  # no --secret-file, no TRIALFLOW_SECRET_FILE
    assert done.status == 1, (done.out, done.err)
    assert done.json()["rule"] == "authentication_required"
    assert "Traceback" not in done.err
    assert count_all(infused) == before  # not even a failed attempt: nothing was presented
    assert events(infused) == []


def test_with_its_secret_the_scheduler_is_the_default_user(infused: str) -> None:
    done = trialflow(infused, "--json", "scheduler", "tick", "--now", NOW, user=None,
                     env=scheduler_env())  # no --user
    assert done.status == 0, (done.out, done.err)
    assert len(done.json()["issued"]) == 2
    assert {(e["actor"], e["role"]) for e in events(infused)} == {(SCHEDULER, SCHEDULER)}


@pytest.mark.parametrize("via", ["option", "environment"])
def test_a_tick_with_a_wrong_secret_records_only_the_failed_attempt(
        infused: str, tmp_path: Path, via: str) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text(WRONG + "\n", encoding="utf-8")
    last = _last_position(infused)
    if via == "option":
        done = trialflow(infused, "--json", "--secret-file", str(wrong), "scheduler", "tick",
                         "--now", NOW, env=clean_env())
    else:
        done = trialflow(infused, "--json", "scheduler", "tick", "--now", NOW,
                         env=clean_env(TRIALFLOW_SECRET_FILE=str(wrong)))
    assert done.status == 1, (done.out, done.err)
    body = done.json()
    assert body["rule"] == "authentication_failed"
    assert WRONG not in done.out + done.err  # a secret is never echoed
    assert "Traceback" not in done.err
    new = [e for e in events(infused, None) if e["position"] > last]
    assert [(e["stream_id"], e["type"]) for e in new] == [("study", "AuthenticationFailed")]
    (failed,) = new
    assert (failed["payload"]["name"], failed["payload"]["method"],
            failed["payload"]["reason"]) == (SCHEDULER, "password", "wrong_password")
    assert failed["actor"] == "unauthenticated"
    assert events(infused) == []  # no reminder issued, cancelled or delivered


# --- the clock -----------------------------------------------------------------------------


def test_a_tick_in_the_future_is_refused_and_the_sae_alert_still_comes(
        infused: str, webhook: Webhook) -> None:
    aware = write(infused, COORDINATOR, "record", SUBJECT, "adverse_event", "term=Pneumonia",
                  "onset_date=2025-02-06", "grade=3", "serious_criteria=hospitalisation",
                  "awareness_at=2025-02-06T20:00:00+08:00", "--on", "2025-02-06")
    (position,) = aware["positions"]
    overdue_key = (SUBJECT, f"sae:{position}", "sae_report_overdue")
    before = count_all(infused)
    future = _next_year()

    done = trialflow(infused, "--json", "scheduler", "tick", "--now", future, "--webhook",
                     webhook.url, user=SCHEDULER)  # with its secret (TRIALFLOW_SECRET_FILE)
    assert done.status == 1, (done.out, done.err)
    assert done.json()["rule"] == "clock_ahead"
    assert "Traceback" not in done.err
    assert count_all(infused) == before  # nothing issued, delivered or cancelled
    assert of_type(infused, "ReminderIssued") == of_type(infused, "ReminderDelivered") == []
    assert webhook.received == []  # and nothing sent
    # A future --now is for reads: they show nothing issued, so nothing was silenced.
    rows = query(infused, "reminders", "--now", future, "--webhook", webhook.url)
    assert {r["state"] for r in rows} <= {"upcoming"}

    # A later pass on the real clock (no --now), long after the 24 hours, still raises the
    # overdue SAE report alert (at its own due time, not the refused pass's) and delivers it.
    later = trialflow(infused, "--json", "--secret-file", str(secret_file()), "scheduler",
                      "tick", "--webhook", webhook.url, env=clean_env())
    assert later.status == 0, (later.out, later.err)
    report = later.json()
    assert overdue_key in issued_keys(infused)
    (overdue,) = [p for p in of_type(infused, "ReminderIssued")
                  if (p["subject"], p["obligation"], p["kind"]) == overdue_key]
    assert overdue["due_at"] == "2025-02-07T20:00:00+08:00"
    assert overdue["reminder_id"] in report["issued"]
    assert overdue["reminder_id"] in webhook.ids()
    assert {(d["id"], d["channel"]) for d in report["delivered"]} >= {
        (overdue["reminder_id"], c) for c in ("log", "webhook")}


def test_an_in_process_pass_proves_itself_and_is_never_in_the_future(infused: str) -> None:
    app = build_app(infused, clock=FakeClock(), kdf=TEST_KDF)
    try:
        proof = Password(SCHEDULER, Secret(SCHEDULER_SECRET))
        before = count_all(infused)
        with pytest.raises(RuleViolation) as refused:
            one_pass(app, proof, datetime.now(UTC) + timedelta(days=366), [])
        assert refused.value.rule == "clock_ahead"
        assert count_all(infused) == before
        with pytest.raises(RuleViolation) as wrong:
            one_pass(app, Password(SCHEDULER, Secret(WRONG)),
                     datetime.fromisoformat(NOW.replace("Z", "+00:00")), [])
        assert wrong.value.rule == "authentication_failed"
        report = one_pass(app, proof, datetime.fromisoformat(NOW.replace("Z", "+00:00")), [])
        assert len(report.issued) == 2
        assert {(p["subject"], p["obligation"], p["kind"])
                for p in of_type(infused, "ReminderIssued")} == {
            (SUBJECT, "visit:D1@2025-02-06", "due"),
            (SUBJECT, "visit:D4@2025-02-09", "window_opening")}
        assert {(e["actor"], e["role"]) for e in events(infused)} == {(SCHEDULER, SCHEDULER)}
    finally:
        app.engine.dispose()


# --- the scheduler's secret proves nothing else --------------------------------------------


@pytest.mark.parametrize("argv", [
    ("record", SUBJECT, "vitals", "weight_kg=60", "--on", "2025-02-16"),
    ("consent", "S-002", "--on", "2025-02-16", "--consent-form-version", "2.0"),
    ("visit", SUBJECT, "D1", "--done", "--on", "2025-02-06"),
    ("login",),
], ids=["record", "consent", "visit", "login"])
def test_the_schedulers_secret_may_not_be_used_for_any_other_write(
        infused: str, argv: tuple[str, ...]) -> None:
    last = _last_position(infused)
    done = trialflow(infused, "--json", "--secret-file", str(secret_file()), *argv,
                     env=clean_env())
    assert done.status == 1, (done.out, done.err)
    body = done.json()
    assert body["rule"] == "role"
    assert SCHEDULER in body["error"]
    assert "Traceback" not in done.err
    assert _last_position(infused) == last  # nothing written (and no failed attempt)


# --- a command row written outside trialflow does not silence a reminder --------------------


def test_a_forged_command_row_does_not_silence_a_reminder(infused: str) -> None:
    """Someone who can INSERT into `commands` writes the row the scheduler would write for a
    due reminder, so that it looks issued. The executor finds that the row's position does
    not hold the command's own event (an integrity failure, exit 4 for a user); the scheduler
    then issues the reminder under its second id, and the other reminders go on."""
    from events.envelope import canonical_json
    from events.translate import driver_connection
    from workflow.reminders import Obligation

    app = build_app(infused, kdf=TEST_KDF)
    key = Obligation(SUBJECT, "visit:D1@2025-02-06", "due", "", "").reminder_id
    forged = {"command_id": f"reminder-issue-{key}", "positions": [1],
              "recorded_at": "2025-02-06T00:00:00.000000Z", "versions": {"reminders-S-001": 1}}
    try:
        # the request hash anyone can compute from the message and the scheduler's name
        from workflow.commands import messages as M
        from workflow.commands.executor import Executor

        moment = datetime.fromisoformat(NOW.replace("Z", "+00:00"))
        due_at = "2025-02-06T00:00:00+08:00"
        message = M.IssueReminder(SUBJECT, "visit:D1@2025-02-06", "due", due_at,
                                  "D1 window 2025-02-06 to 2025-02-06 (target 2025-02-06): due.")
        request = Executor._request_hash(SCHEDULER, message)
        with driver_connection(app.engine) as driver:  # the database refuses such a row …
            with pytest.raises(sqlite3.IntegrityError, match="needs the events"):
                driver.execute("INSERT INTO commands (command_id, request_hash, result, "
                               "recorded_at) VALUES (?, ?, ?, ?)",
                               (forged["command_id"], request, canonical_json(forged),
                                forged["recorded_at"]))
            driver.rollback()
            driver.execute("DROP TRIGGER commands_guard_insert")  # … unless its guard is gone
            driver.execute("INSERT INTO commands (command_id, request_hash, result, recorded_at)"
                           " VALUES (?, ?, ?, ?)", (forged["command_id"], request,
                                                    canonical_json(forged), forged["recorded_at"]))
            driver.commit()
        report = one_pass(app, Password(SCHEDULER, Secret(SCHEDULER_SECRET)), moment, [])
        issued = {(p["obligation"], p["kind"]) for p in of_type(infused, "ReminderIssued")}
        assert ("visit:D1@2025-02-06", "due") in issued  # not silenced
        assert ("visit:D4@2025-02-09", "window_opening") in issued
        assert len(report.issued) == 2 and report.refused == []
        reissued = [e.command_id for e in app.store.read_all() if e.type == "ReminderIssued"
                    and e.payload["reminder_id"] == key]
        assert reissued == [f"reminder-issue-{key}-reissued"]
    finally:
        app.engine.dispose()
