"""`trialflow scheduler run --interval 1` as a real, long-running process on a SQLite file,
against the real clock: its passes issue what is due now (a subject consented 25 days ago is
in the last days of its 28-day screening window), a later pass picks up new data, and SIGTERM
or SIGINT stop it cleanly, exit 0, no traceback, after the pass in progress."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.scheduler.support import Webhook, of_type, spawn, stop, wait_until
from tests.support.clock import FakeClock
from tests.support.study import TZ, new_study, open_desk, screen_eligible


def _site_today() -> date:
    return datetime.now(ZoneInfo(TZ)).date()


def _consent_25_days_ago(url: str, subject: str, *, new: bool) -> date:
    consent = _site_today() - timedelta(days=25)
    clock = FakeClock(datetime.now(UTC))
    flow = new_study(url, clock) if new else open_desk(url, clock)
    screen_eligible(flow, subject, consent, clock=clock)
    flow.store.engine.dispose()
    return consent


def _expiring(url: str) -> dict[str, dict[str, str]]:
    return {p["subject"]: p for p in of_type(url, "ReminderIssued")
            if p["kind"] == "screening_expiring"}


def _delivered(url: str, channel: str) -> set[str]:
    return {p["reminder_id"] for p in of_type(url, "ReminderDelivered")
            if p["channel"] == channel}


@pytest.fixture
def screening(tmp_path: Path) -> tuple[str, date]:
    url = f"sqlite:///{tmp_path / 'trialflow.db'}"
    return url, _consent_25_days_ago(url, "S-001", new=True)


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; killed (by their own id) if the test left them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop(process)


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


def test_run_ticks_periodically_and_stops_cleanly_on_sigterm(
        screening: tuple[str, date], running: list[subprocess.Popen[str]]) -> None:
    url, consent = screening
    process = spawn(url, "--json", "--log-level", "info", "scheduler", "run", "--interval", "1")
    running.append(process)
    first = wait_until(lambda: _expiring(url).get("S-001"), "the first pass's reminder")
    assert first["obligation"] == f"screening:{consent}"
    assert first["due_at"] == f"{consent + timedelta(days=21)}T00:00:00+08:00"
    wait_until(lambda: first["reminder_id"] in _delivered(url, "log"), "its delivery")
    # New data: a later pass (the job repeats every second) finds it.
    _consent_25_days_ago(url, "S-002", new=False)
    second = wait_until(lambda: _expiring(url).get("S-002"), "a later pass's reminder")
    assert second["reminder_id"] != first["reminder_id"]
    assert process.poll() is None

    process.send_signal(signal.SIGTERM)
    status, out, err = _finish(process)
    assert status == 0, err
    assert json.loads(out) == {"stopped": True}
    assert "Traceback" not in err
    passes = [json.loads(line) for line in err.splitlines()
              if line.startswith("{") and '"scheduler pass"' in line]
    assert len(passes) >= 2
    assert sum(len(p["issued"]) for p in passes) == 2  # each reminder issued by one pass
    assert len(of_type(url, "ReminderIssued")) == 2


def _stopped_during_a_pass(url: str, webhook: Webhook, running: list[subprocess.Popen[str]],
                           *signals: signal.Signals) -> tuple[int, str, str]:
    """Send `signals` while the first pass waits for the webhook, then let the webhook
    answer."""
    webhook.mode = "hang"
    process = spawn(url, "--json", "scheduler", "run", "--interval", "1", "--webhook",
                    webhook.url)
    running.append(process)
    wait_until(lambda: webhook.received, "the first pass's webhook request")
    first, *more = signals
    process.send_signal(first)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.4)  # the pass in progress is not cut short
    assert _delivered(url, "webhook") == set()
    for sig in more:  # e.g. an impatient second Ctrl-C while it is stopping
        process.send_signal(sig)
    webhook.release()
    return _finish(process)


def test_sigint_stops_run_after_the_pass_in_progress(
        screening: tuple[str, date], webhook: Webhook,
        running: list[subprocess.Popen[str]]) -> None:
    url, _ = screening
    status, out, err = _stopped_during_a_pass(url, webhook, running, signal.SIGINT)
    assert status == 0, err
    assert json.loads(out) == {"stopped": True}
    assert "Traceback" not in err
    (reminder,) = _expiring(url).values()
    assert _delivered(url, "webhook") == {reminder["reminder_id"]}  # the pass finished
    assert webhook.ids() == [reminder["reminder_id"]]


def test_a_second_signal_while_stopping_still_stops_cleanly(
        screening: tuple[str, date], webhook: Webhook,
        running: list[subprocess.Popen[str]]) -> None:
    url, _ = screening
    status, out, err = _stopped_during_a_pass(url, webhook, running, signal.SIGTERM,
                                              signal.SIGINT)
    assert (status, "Traceback" in err) == (0, False), err[-2000:]
    assert json.loads(out) == {"stopped": True}
    (reminder,) = _expiring(url).values()
    assert _delivered(url, "webhook") == {reminder["reminder_id"]}
