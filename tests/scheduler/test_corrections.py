"""A corrected infusion time moves D0 and every visit window: the reminders of the old target
dates are cancelled by a `ReminderCancelled` event (not deleted, not delivered any more) and
the next tick issues the reminders of the new target dates (docs/design.md "Reminders")."""

from __future__ import annotations

from tests.scheduler.study import SUBJECT, local, position_of, query, visits_of, write
from tests.scheduler.support import Webhook, events, ids_by_key, issued, of_type, tick
from tests.support.study import COORDINATOR

OLD = {("visit:D1@2025-02-06", "due"), ("visit:D4@2025-02-09", "window_opening")}


def _correct_infusion(url: str, infused_at: str, reason: str) -> None:
    infusion = position_of(url, SUBJECT, "InfusionGiven")
    write(url, COORDINATOR, "correct", SUBJECT, str(infusion), f"infused_at={infused_at}",
          "--reason", reason)


def test_a_corrected_infusion_date_cancels_the_old_reminders_and_issues_new_ones(
        infused: str, webhook: Webhook) -> None:
    webhook.mode = "fail"  # the old reminders are still waiting for their webhook retry
    tick(infused, local("2025-02-06"), "--webhook", webhook.url)
    old = ids_by_key(infused)
    assert set(old) == OLD
    _correct_infusion(infused, "2025-02-07T10:00:00+08:00",
                      "Infused on 7 February; the 5th was a transcription error.")
    rows = visits_of(infused, local("2025-02-08"))
    assert (rows["D1"]["target_date"], rows["D4"]["target_date"]) == ("2025-02-08",
                                                                       "2025-02-11")

    webhook.mode = "ok"
    report = tick(infused, local("2025-02-08"), "--webhook", webhook.url)
    cancelled = [e for e in events(infused, ("ReminderCancelled",))]
    assert sorted(e["payload"]["reminder_id"] for e in cancelled) == sorted(old.values())
    assert sorted(report["cancelled"]) == sorted(old.values())
    for event in cancelled:
        assert (event["stream_id"], event["actor"]) == ("reminders-S-001", "scheduler")
        obligation = next(o for (o, _), i in old.items() if i == event["payload"]["reminder_id"])
        assert obligation in event["payload"]["reason"]
    now = ids_by_key(infused)
    assert set(now) - OLD == {("visit:D1@2025-02-08", "due"),
                              ("visit:D4@2025-02-11", "window_opening")}
    new_ids = {now[k] for k in set(now) - OLD}
    assert set(report["issued"]) == new_ids
    # The old ones are still in the log (cancelled, not deleted), issued once each, and the
    # obsolete D1@2025-02-06 never turns into an overdue alert.
    assert set(issued(infused).values()) == {1}
    assert ("visit:D1@2025-02-06", "overdue") not in now
    # Cancelled reminders are not retried: the webhook only got the new ones after the fix.
    assert sorted(webhook.ids()[:2]) == sorted(old.values())
    assert sorted(webhook.ids()[2:]) == sorted(new_ids)
    states = {r["id"]: r["state"] for r in query(infused, "reminders", "--now",
                                                 local("2025-02-08"), "--webhook",
                                                 webhook.url)}
    assert {states[i] for i in old.values()} == {"cancelled"}
    assert {states[i] for i in new_ids} == {"delivered"}

    again = tick(infused, local("2025-02-08", 12, 5), "--webhook", webhook.url)
    assert (again["issued"], again["cancelled"], again["delivered"]) == ([], [], [])
    assert len(of_type(infused, "ReminderCancelled")) == 2


def test_an_infusion_date_corrected_back_restores_the_reminders(infused: str,
                                                                webhook: Webhook) -> None:
    webhook.mode = "fail"
    tick(infused, local("2025-02-06"), "--webhook", webhook.url)
    _correct_infusion(infused, "2025-02-06T10:00:00+08:00", "Typed the wrong day.")
    tick(infused, local("2025-02-06", 12, 2), "--webhook", webhook.url)
    assert set(ids_by_key(infused)) >= {("visit:D4@2025-02-10", "window_opening")}
    _correct_infusion(infused, "2025-02-05T10:00:00+08:00", "Back to the source record.")
    webhook.mode = "ok"
    tick(infused, local("2025-02-06", 12, 5), "--webhook", webhook.url)
    # D0 is 2025-02-05 again: D1 is due today and D4's window opens soon, as before the typo.
    delivered = {(r.body["obligation"], r.body["kind"]) for r in webhook.received[2:]}
    assert delivered >= OLD
    pending = query(infused, "reminders", "--now", local("2025-02-06", 12, 5))
    states = {(r["obligation"], r["kind"]): r["state"] for r in pending}
    assert states[("visit:D1@2025-02-06", "due")] != "cancelled"
