"""`trialflow reminders [SUBJECT] [--pending] [--now] [--json]`: the JSON list scripts rely on
(`id`, `subject`, `obligation`, `kind`, `due_at`, `state`), states per the channels asked
about, `--pending`, and `upcoming` rows that say what comes due next, under the id the
scheduler will issue it with."""

from __future__ import annotations

from typing import Any

from tests.scheduler.study import SUBJECT, call, local, query
from tests.scheduler.support import Webhook, tick

KEYS = {"id", "subject", "obligation", "kind", "due_at", "state"}


def _issued_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["obligation"], r["kind"], r["state"]) for r in rows if r["state"] != "upcoming"]


def test_reminders_json_states_pending_and_upcoming(infused: str, webhook: Webhook) -> None:
    now = local("2025-02-06")
    webhook.mode = "fail"
    first = tick(infused, now, "--webhook", webhook.url)
    rows = query(infused, "reminders", "--now", now, "--webhook", webhook.url)
    assert isinstance(rows, list) and all(set(r) >= KEYS for r in rows)
    assert {r["subject"] for r in rows} == {SUBJECT}
    assert _issued_rows(rows) == [("visit:D1@2025-02-06", "due", "failed"),
                                  ("visit:D4@2025-02-09", "window_opening", "failed")]
    assert {r["id"] for r in rows if r["state"] == "failed"} == set(first["issued"])
    assert [r["due_at"] for r in rows[:2]] == ["2025-02-06T00:00:00+08:00",
                                               "2025-02-05T00:00:00+08:00"]
    # What comes due next: one row per open visit, soonest first.
    upcoming = [(r["obligation"], r["kind"], r["due_at"]) for r in rows
                if r["state"] == "upcoming"]
    assert upcoming[:5] == [
        ("visit:D1@2025-02-06", "overdue", "2025-02-07T00:00:00+08:00"),
        ("visit:D4@2025-02-09", "due", "2025-02-08T00:00:00+08:00"),
        ("visit:D7@2025-02-12", "window_opening", "2025-02-08T00:00:00+08:00"),
        ("visit:D10@2025-02-15", "window_opening", "2025-02-11T00:00:00+08:00"),
        ("visit:D14@2025-02-19", "window_opening", "2025-02-14T00:00:00+08:00")]
    assert len(upcoming) == 12  # D1 … D360, each once
    assert upcoming[-1] == ("visit:D360@2026-01-31", "window_opening",
                            "2026-01-14T00:00:00+08:00")

    # The state depends on the channels asked about: on the log alone both went out.
    log_only = query(infused, "reminders", "--now", now)
    assert _issued_rows(log_only) == [("visit:D1@2025-02-06", "due", "delivered"),
                                      ("visit:D4@2025-02-09", "window_opening", "delivered")]
    assert _issued_rows(query(infused, "reminders", "--pending", "--now", now)) == []
    pending = query(infused, "reminders", "--pending", "--now", now, "--webhook", webhook.url)
    assert _issued_rows(pending) == _issued_rows(rows)  # failed is pending
    assert query(infused, "reminders", SUBJECT, "--now", now, "--webhook",
                 webhook.url) == rows

    # Two days later the webhook is back: the failed ones go out, the upcoming ones are
    # issued under the ids announced.
    webhook.mode = "ok"
    later = local("2025-02-08")
    announced = {(r["obligation"], r["kind"]): r["id"] for r in rows
                 if r["state"] == "upcoming"}
    second = tick(infused, later, "--webhook", webhook.url)
    assert set(second["issued"]) == {
        announced[("visit:D1@2025-02-06", "overdue")], announced[("visit:D4@2025-02-09", "due")],
        announced[("visit:D7@2025-02-12", "window_opening")]}
    after = query(infused, "reminders", "--now", later, "--webhook", webhook.url)
    assert {s for _, _, s in _issued_rows(after)} == {"delivered"}
    assert len(_issued_rows(after)) == 5
    assert _issued_rows(query(infused, "reminders", "--pending", "--now", later, "--webhook",
                              webhook.url)) == []
    assert not {r["id"] for r in after if r["state"] == "upcoming"} & set(second["issued"])

    status, out, _ = call(infused, "--json", "reminders", "S-404", "--now", later)
    assert status == 2 and "S-404" in out
