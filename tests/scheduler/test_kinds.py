"""Which reminders a `scheduler tick` process issues, and when (docs/design.md "Reminders"): visit
window opening (the protocol's lead days before the window), due, overdue (never a missed
visit); screening expiring; SAE 24-hour report due and overdue, stopped by the initial report;
expedited SUSAR reports at 15 days, or 7 days (+ the complete report) when life-threatening;
and what a scheduler that was down for ten days issues when it comes back.

Every tick is a real `trialflow scheduler tick --now …` process on a SQLite file of its own;
the clock is `--now`, at the site's midnight where a day boundary is what is tested.
"""

from __future__ import annotations

from datetime import date, timedelta

from tests.scheduler.study import (
    SUBJECT,
    local,
    protocol_of,
    query,
    visits_of,
    write,
)
from tests.scheduler.support import Webhook, events, issued_keys, tick
from tests.support.clock import FakeClock
from tests.support.study import COORDINATOR, INVESTIGATOR, open_desk, screen_eligible


def _new(url: str, before: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    return issued_keys(url) - before


def _subject_events(url: str, subject: str = SUBJECT) -> int:
    return len(query(url, "audit", "log", subject)["events"])


def _record_ae(url: str, on: str, *fields: str) -> int:
    body = write(url, COORDINATOR, "record", SUBJECT, "adverse_event", *fields, "--on", on)
    (position,) = body["positions"]
    return int(position)


# --- visits --------------------------------------------------------------------------------


def test_visit_window_opening_due_and_overdue_at_the_sites_midnights(infused: str) -> None:
    lead = protocol_of(infused).window_opening_lead_days
    rows = visits_of(infused, local("2025-02-06"))
    assert [(rows[v]["target_date"], rows[v]["window_start"], rows[v]["window_end"])
            for v in ("D4", "D7")] == [("2025-02-09", "2025-02-08", "2025-02-10"),
                                       ("2025-02-12", "2025-02-11", "2025-02-13")]
    opening = date(2025, 2, 11) - timedelta(days=lead)  # D7's lead time: 2025-02-08
    d4, d7 = "visit:D4@2025-02-09", "visit:D7@2025-02-12"
    subject_events = _subject_events(infused)

    def kinds() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {d4: set(), d7: set()}
        for _, obligation, kind in issued_keys(infused):
            out.setdefault(obligation, set()).add(kind)
        return {d4: out[d4], d7: out[d7]}

    # Each tick sits on one side of a midnight at the site (UTC+8): 23:59 is 15:59 UTC.
    tick(infused, local(opening - timedelta(days=1), 23, 59))
    assert kinds() == {d4: {"window_opening"}, d7: set()}
    report = tick(infused, local(opening, 0, 0))
    assert kinds() == {d4: {"window_opening", "due"}, d7: {"window_opening"}}
    tick(infused, local("2025-02-10", 23, 59))
    assert kinds() == {d4: {"window_opening", "due"}, d7: {"window_opening"}}
    tick(infused, local("2025-02-11", 0, 0))
    assert kinds() == {d4: {"window_opening", "due", "overdue"}, d7: {"window_opening", "due"}}

    by_kind = {(e["payload"]["obligation"], e["payload"]["kind"]): e
               for e in events(infused, ("ReminderIssued",))}
    assert {k: e["payload"]["due_at"] for k, e in by_kind.items() if k[0] in (d4, d7)} == {
        (d4, "window_opening"): "2025-02-05T00:00:00+08:00",
        (d4, "due"): "2025-02-08T00:00:00+08:00",
        (d4, "overdue"): "2025-02-11T00:00:00+08:00",
        (d7, "window_opening"): f"{opening}T00:00:00+08:00",
        (d7, "due"): "2025-02-11T00:00:00+08:00"}
    opening_event = by_kind[(d7, "window_opening")]
    assert opening_event["payload"]["reminder_id"] in report["issued"]
    assert (opening_event["stream_id"], opening_event["actor"], opening_event["role"]) == (
        "reminders-S-001", "scheduler", "scheduler")
    assert "D7 window 2025-02-11 to 2025-02-13" in opening_event["payload"]["detail"]

    # Overdue is an alert, not a decision: the visit is still open, nobody recorded it missed,
    # and the subject's own stream got nothing from the scheduler.
    d4_now = visits_of(infused, local("2025-02-11"))["D4"]
    assert (d4_now["status"], d4_now["recorded_status"], d4_now["done_on"]) == (
        "overdue", None, None)
    assert _subject_events(infused) == subject_events


def test_screening_expiring_in_the_last_days_of_the_window(infused: str) -> None:
    clock = FakeClock("2025-02-06T04:00:00+00:00")
    flow = open_desk(infused, clock)
    screen_eligible(flow, "S-002", date(2025, 2, 6), clock=clock)
    flow.store.engine.dispose()
    protocol = protocol_of(infused)
    end = date(2025, 2, 6) + timedelta(days=protocol.screening_window_days)
    first = end - timedelta(days=protocol.screening_expiring_lead_days)  # 7 days before
    assert (end, first) == (date(2025, 3, 6), date(2025, 2, 27))  # 28-day window, 7 days' lead

    def screening() -> set[tuple[str, str, str]]:
        return {k for k in issued_keys(infused) if k[1].startswith("screening:")}

    tick(infused, local(first - timedelta(days=1), 23, 59))
    assert screening() == set()
    tick(infused, local(first, 0, 0))
    assert screening() == {("S-002", "screening:2025-02-06", "screening_expiring")}
    (event,) = [e for e in events(infused, ("ReminderIssued",))
                if e["payload"]["kind"] == "screening_expiring"]
    assert event["stream_id"] == "reminders-S-002"
    assert event["payload"]["due_at"] == "2025-02-27T00:00:00+08:00"
    # Once the window closed the coordinator records the screen failure: no overdue alert,
    # and S-001 (enrolled) never had a screening reminder.
    tick(infused, local(end + timedelta(days=1)))
    assert screening() == {("S-002", "screening:2025-02-06", "screening_expiring")}


# --- adverse events ------------------------------------------------------------------------


def test_sae_report_due_then_overdue_24_hours_after_awareness(infused: str) -> None:
    late = _record_ae(infused, "2025-02-06", "term=Pneumonia", "onset_date=2025-02-06",
                      "grade=3", "serious_criteria=hospitalisation",
                      "awareness_at=2025-02-06T20:00:00+08:00")
    reported = _record_ae(infused, "2025-02-06", "term=Sepsis", "onset_date=2025-02-06",
                          "grade=3", "serious_criteria=hospitalisation",
                          "awareness_at=2025-02-06T21:00:00+08:00")
    mild = _record_ae(infused, "2025-02-06", "term=Headache", "onset_date=2025-02-06",
                      "grade=1")

    def sae() -> set[tuple[str, str]]:
        return {(o, k) for (_, o, k) in issued_keys(infused) if o.startswith("sae:")}

    tick(infused, local("2025-02-06", 21, 30))
    assert sae() == {(f"sae:{late}", "sae_report_due"), (f"sae:{reported}", "sae_report_due")}
    write(infused, COORDINATOR, "record", SUBJECT, "sae_report", f"ae_position={reported}",
          "report_kind=initial", "sent_at=2025-02-07T08:00:00+08:00", "--on", "2025-02-07")
    tick(infused, local("2025-02-07", 20, 0))  # exactly 24 h: not late yet
    assert sae() == {(f"sae:{late}", "sae_report_due"), (f"sae:{reported}", "sae_report_due")}
    tick(infused, local("2025-02-07", 20, 1))
    assert sae() == {(f"sae:{late}", "sae_report_due"), (f"sae:{late}", "sae_report_overdue"),
                     (f"sae:{reported}", "sae_report_due")}
    assert f"sae:{mild}" not in {o for o, _ in sae()}
    due_at = {(e["payload"]["obligation"], e["payload"]["kind"]): e["payload"]["due_at"]
              for e in events(infused, ("ReminderIssued",))}
    assert due_at[(f"sae:{late}", "sae_report_due")] == "2025-02-06T20:00:00+08:00"
    assert due_at[(f"sae:{late}", "sae_report_overdue")] == "2025-02-07T20:00:00+08:00"


def test_susar_expedited_15_days_or_7_when_life_threatening(infused: str) -> None:
    common = ("onset_date=2025-02-06", "grade=3", "awareness_at=2025-02-06T20:00:00+08:00",
              "sponsor_aware_at=2025-02-07T09:00:00+08:00")
    other = _record_ae(infused, "2025-02-07", "term=Pneumonitis", "expected=no",
                       "serious_criteria=hospitalisation", *common)
    grave = _record_ae(infused, "2025-02-07", "term=Myocarditis", "expected=no",
                       "serious_criteria=life_threatening", *common)
    expected = _record_ae(infused, "2025-02-07", "term=Neutropenia", "expected=yes",
                          "serious_criteria=hospitalisation", *common)

    def expedited() -> set[tuple[str, str]]:
        return {(o, k) for (_, o, k) in issued_keys(infused) if k.startswith("expedited")}

    tick(infused, local("2025-02-07", 12))
    assert expedited() == set()  # not a SUSAR until an investigator finds it related
    for position in (other, grave, expected):
        write(infused, INVESTIGATOR, "record", SUBJECT, "causality",
              f"ae_position={position}", "relatedness=probable", "--on", "2025-02-07")
    tick(infused, local("2025-02-07", 12, 5))
    assert expedited() == {(f"sae:{other}", "expedited_15d"), (f"sae:{grave}", "expedited_7d"),
                           (f"sae:{grave}/complete", "expedited_15d")}
    by_key = {(e["payload"]["obligation"], e["payload"]["kind"]): e["payload"]
              for e in events(infused, ("ReminderIssued",))}
    fifteen = by_key[(f"sae:{other}", "expedited_15d")]
    assert fifteen["due_at"] == "2025-02-07T09:00:00+08:00"  # the clock starts at day 0
    assert "2025-02-22T23:59:59+08:00" in fifteen["detail"]  # end of day 15
    assert "2025-02-14T23:59:59+08:00" in by_key[(f"sae:{grave}", "expedited_7d")]["detail"]
    assert not any(o.startswith(f"sae:{expected}") and k.startswith("expedited")
                   for o, k in by_key)


# --- downtime ------------------------------------------------------------------------------


def test_after_ten_days_down_closed_windows_become_overdue_alerts(infused: str,
                                                                   webhook: Webhook) -> None:
    first = tick(infused, local("2025-02-06", 12), "--webhook", webhook.url)
    before = issued_keys(infused)
    assert before == {(SUBJECT, "visit:D1@2025-02-06", "due"),
                      (SUBJECT, "visit:D4@2025-02-09", "window_opening")}
    assert len(first["issued"]) == 2
    # Then the scheduler goes down; that evening a serious AE is recorded.
    aware = _record_ae(infused, "2025-02-06", "term=Pneumonia", "onset_date=2025-02-06",
                       "grade=3", "serious_criteria=hospitalisation",
                       "awareness_at=2025-02-06T20:00:00+08:00")

    back = tick(infused, local("2025-02-16", 12), "--webhook", webhook.url)  # ten days later
    new = _new(infused, before)
    assert {(o, k) for _, o, k in new} == {
        ("visit:D1@2025-02-06", "overdue"),
        ("visit:D4@2025-02-09", "overdue"),
        ("visit:D7@2025-02-12", "overdue"),  # opened and closed while down: only the alert
        ("visit:D10@2025-02-15", "due"),  # still open: due, no stale window_opening
        ("visit:D14@2025-02-19", "window_opening"),  # still useful
        (f"sae:{aware}", "sae_report_overdue"),  # the 24 h passed while down
    }
    assert len(back["issued"]) == len(new) == 6
    # What was issued is sent, once, and nothing else: the webhook got every reminder once.
    ids = webhook.ids()
    assert len(ids) == len(set(ids)) == 8
    assert {r.body["kind"] for r in webhook.received[2:]} == {"overdue", "due",
                                                              "window_opening",
                                                              "sae_report_overdue"}
    assert {(d["channel"]) for d in back["delivered"]} == {"log", "webhook"}
    assert len(back["delivered"]) == 2 * 6
    statuses = {v: r["status"] for v, r in visits_of(infused, local("2025-02-16")).items()}
    assert {v: statuses[v] for v in ("D1", "D4", "D7", "D10", "D14")} == {
        "D1": "overdue", "D4": "overdue", "D7": "overdue", "D10": "due", "D14": "upcoming"}
