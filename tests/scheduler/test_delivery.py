"""Delivery, at least once (docs/design.md "Reminders"): after the commit, over a real SMTP server
and a real HTTP webhook, each message carrying the reminder's id; a channel that is down is
recorded (`ReminderDeliveryFailed` with `retry_at`), does not stop the others and is retried
only after its backoff, never dropped; a scheduler killed between issuing and delivering
delivers at its next pass without issuing again.
"""

from __future__ import annotations

import signal
from datetime import timedelta

from tests.scheduler.study import SUBJECT, call, local, plus, query
from tests.scheduler.support import (
    Mailbox,
    Webhook,
    body_of,
    count_all,
    free_port,
    issued,
    of_type,
    scheduler_env,
    secret_file,
    smtp_server,
    spawn,
    stop,
    tick,
    wait_until,
)
from workflow.reminders import backoff

NOW = local("2025-02-06")  # S-001's D1 is due and D4's window opens soon: two reminders
FIRST_TWO = {(SUBJECT, "visit:D1@2025-02-06", "due"),
             (SUBJECT, "visit:D4@2025-02-09", "window_opening")}
MAIL = ("--mail-from", "trialflow@pku3.example", "--mail-to", "cora@pku3.example",
        "--mail-to", "ivan@pku3.example")


def _issued_by_id(url: str) -> dict[str, dict[str, str]]:
    return {p["reminder_id"]: p for p in of_type(url, "ReminderIssued")}


def _deliveries(url: str) -> list[tuple[str, str]]:
    return [(p["reminder_id"], p["channel"]) for p in of_type(url, "ReminderDelivered")]


def test_a_scheduler_killed_during_delivery_delivers_at_its_next_pass(infused: str,
                                                                      webhook: Webhook) -> None:
    webhook.mode = "hang"
    process = spawn(infused, "--json", "scheduler", "tick", "--now", NOW, "--webhook",
                    webhook.url)
    try:
        wait_until(lambda: webhook.received, "the webhook's first request")
        # The request is in flight: both reminders were issued and committed before it.
        before = issued(infused)
        assert set(before) == FIRST_TWO and set(before.values()) == {1}
        first = webhook.received[0]
        assert _deliveries(infused) == [(first.body["id"], "log")]
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    ids = set(_issued_by_id(infused))
    pending = query(infused, "reminders", "--pending", "--now", NOW, "--webhook", webhook.url)
    assert {(r["id"], r["state"]) for r in pending if r["state"] != "upcoming"} == {
        (i, "issued") for i in ids}

    webhook.mode = "ok"
    webhook.release()
    report = tick(infused, NOW, "--webhook", webhook.url)
    assert report["issued"] == [] and report["already_issued"] == 0
    assert issued(infused) == before  # not issued again
    got = [(r.body["id"], r.headers["Idempotency-Key"]) for r in webhook.received]
    assert sorted(got) == sorted([(first.body["id"], first.body["id"]),
                                  *[(i, i) for i in ids]])  # the first one twice, same key
    assert first.body["id"] in ids
    assert sorted(_deliveries(infused)) == sorted(
        [(i, channel) for i in ids for channel in ("log", "webhook")])  # log not repeated
    assert {(d["id"], d["channel"]) for d in report["delivered"]} == (
        {(i, "webhook") for i in ids} | {(i, "log") for i in ids - {first.body["id"]}})
    states = {r["id"]: r["state"] for r in query(infused, "reminders", "--now", NOW,
                                                 "--webhook", webhook.url)}
    assert {states[i] for i in ids} == {"delivered"}


def test_email_and_webhook_carry_the_reminder_and_its_id(infused: str, mailbox: Mailbox,
                                                         webhook: Webhook) -> None:
    report = tick(infused, NOW, "--smtp", mailbox.address, *MAIL, "--webhook", webhook.url)
    reminders = _issued_by_id(infused)
    assert set(report["issued"]) == set(reminders) and len(reminders) == 2
    subjects = set()
    mails = mailbox.by_reminder()
    assert set(mails) == set(reminders)
    for rid, payload in reminders.items():
        (mail,) = mails[rid]
        subjects.add(mail["Subject"])
        assert mail["Subject"] == (f"[trialflow] {SUBJECT} {payload['kind']}: "
                                   f"{payload['obligation']}")
        assert (mail["From"], mail["To"]) == ("trialflow@pku3.example",
                                              "cora@pku3.example, ivan@pku3.example")
        assert mail["Message-ID"] == f"<{rid}@trialflow>"
        body = body_of(mail)
        for value in (payload["obligation"], payload["detail"], payload["due_at"], rid):
            assert value in body
    assert "[trialflow] S-001 due: visit:D1@2025-02-06" in subjects
    assert [sorted(rcpt) for rcpt, _ in mailbox.messages] == [
        ["cora@pku3.example", "ivan@pku3.example"]] * 2

    assert len(webhook.received) == 2
    for got in webhook.received:
        payload = reminders[got.body["id"]]
        assert got.path == "/hooks/trialflow"
        assert {k: got.body[k] for k in ("id", "subject", "obligation", "kind", "due_at")} == {
            "id": payload["reminder_id"], "subject": SUBJECT,
            "obligation": payload["obligation"], "kind": payload["kind"],
            "due_at": payload["due_at"]}
        assert got.headers["Idempotency-Key"] == got.body["id"]
        assert got.headers["Content-Type"] == "application/json"
    assert sorted(_deliveries(infused)) == sorted(
        (rid, channel) for rid in reminders for channel in ("log", "email", "webhook"))

    again = tick(infused, NOW, "--smtp", mailbox.address, *MAIL, "--webhook", webhook.url)
    assert again["delivered"] == [] and again["failed"] == []
    assert (len(mailbox.messages), len(webhook.received)) == (2, 2)  # nothing sent twice


def test_notifiers_configured_by_the_environment(infused: str, mailbox: Mailbox,
                                                 webhook: Webhook) -> None:
    env = scheduler_env(TRIALFLOW_SMTP=mailbox.address,
                        TRIALFLOW_MAIL_FROM="ops@pku3.example",
                        TRIALFLOW_MAIL_TO="cora@pku3.example, mona@cro.example",
                        TRIALFLOW_WEBHOOK=webhook.url)
    report = tick(infused, NOW, env=env)
    assert {d["channel"] for d in report["delivered"]} == {"log", "email", "webhook"}
    assert len(mailbox.messages) == len(webhook.received) == 2
    assert {m["From"] for _, m in mailbox.messages} == {"ops@pku3.example"}
    assert [sorted(r) for r, _ in mailbox.messages] == [
        ["cora@pku3.example", "mona@cro.example"]] * 2


def test_in_process_environ_configures_the_notifiers(infused: str, webhook: Webhook) -> None:
    import io

    from cli.app import run

    out, err = io.StringIO(), io.StringIO()
    status = run(["--json", "scheduler", "tick", "--now", NOW], stdout=out, stderr=err,
                 environ={"TRIALFLOW_DB": infused, "TRIALFLOW_USER": "scheduler",
                          "TRIALFLOW_SECRET_FILE": str(secret_file()),
                          "TRIALFLOW_WEBHOOK": webhook.url})
    assert status == 0, (out.getvalue(), err.getvalue())
    assert len(webhook.received) == 2


def test_bad_notifier_settings_are_refused_before_anything_is_written(infused: str) -> None:
    before = count_all(infused)
    for argv, field in ((["--smtp", "127.0.0.1:25"], "smtp"),  # no recipient
                        (["--smtp", "localhost", "--mail-to", "a@b.example"], "smtp"),
                        (["--webhook", "ftp://hooks.example/x"], "webhook")):
        status, out, _ = call(infused, "--user", "scheduler", "--json", "scheduler", "tick",
                              "--now", NOW, *argv)
        assert status == 2, (argv, out)
        assert '"field": "' + field + '"' in out
    assert count_all(infused) == before


def test_a_failing_webhook_is_retried_after_its_backoff_and_email_still_goes(
        infused: str, mailbox: Mailbox, webhook: Webhook) -> None:
    webhook.mode = "fail"
    channels = ("--smtp", mailbox.address, *MAIL, "--webhook", webhook.url)
    first = tick(infused, NOW, *channels)
    ids = set(first["issued"])
    assert len(ids) == 2
    assert {(f["id"], f["channel"]) for f in first["failed"]} == {(i, "webhook") for i in ids}
    assert all("500" in f["error"] for f in first["failed"])
    assert {(d["id"], d["channel"]) for d in first["delivered"]} == {
        (i, c) for i in ids for c in ("log", "email")}  # the webhook did not stop e-mail
    assert len(mailbox.messages) == 2
    failures = of_type(infused, "ReminderDeliveryFailed")
    assert sorted((f["reminder_id"], f["channel"], f["attempt"], f["retry_at"])
                  for f in failures) == sorted(
        (i, "webhook", 1, "2025-02-06T04:01:00+00:00") for i in ids)  # now + 1 minute
    assert all("500" in f["error"] for f in failures)
    states = query(infused, "reminders", "--pending", "--now", NOW, "--webhook", webhook.url)
    assert {(r["id"], r["state"]) for r in states if r["id"] in ids} == {
        (i, "failed") for i in ids}

    early = tick(infused, plus(NOW, seconds=59), *channels)  # before retry_at: not retried
    assert (early["delivered"], early["failed"]) == ([], [])
    assert len(webhook.received) == 2

    second = tick(infused, plus(NOW, minutes=1), *channels)  # at retry_at, still down
    assert {(f["id"], f["channel"]) for f in second["failed"]} == {(i, "webhook") for i in ids}
    assert len(webhook.received) == 4 and set(webhook.ids()) == ids
    retry = {(f["attempt"], f["retry_at"]) for f in of_type(infused, "ReminderDeliveryFailed")
             if f["attempt"] == 2}
    assert retry == {(2, "2025-02-06T04:03:00+00:00")}  # backing off: 2 minutes now

    webhook.mode = "ok"
    back = tick(infused, plus(NOW, minutes=3), *channels)
    assert {(d["id"], d["channel"]) for d in back["delivered"]} == {(i, "webhook") for i in ids}
    assert len(webhook.received) == 6 and len(mailbox.messages) == 2  # e-mail not resent
    assert sorted((p["reminder_id"], p["attempt"]) for p in of_type(
        infused, "ReminderDelivered") if p["channel"] == "webhook") == sorted(
        (i, 3) for i in ids)


def test_an_smtp_server_that_is_down_is_recorded_and_retried_until_it_is_back(
        infused: str, webhook: Webhook) -> None:
    port = free_port()  # nobody listens there
    channels = ("--smtp", f"127.0.0.1:{port}", *MAIL, "--webhook", webhook.url)
    first = tick(infused, NOW, *channels)
    ids = set(first["issued"])
    assert {(f["id"], f["channel"]) for f in first["failed"]} == {(i, "email") for i in ids}
    assert all("Connection" in f["error"] or "refused" in f["error"] for f in first["failed"])
    assert set(webhook.ids()) == ids  # the webhook went out all the same
    failures = of_type(infused, "ReminderDeliveryFailed")
    assert {(f["channel"], f["attempt"], f["retry_at"]) for f in failures} == {
        ("email", 1, "2025-02-06T04:01:00+00:00")}
    with smtp_server(port) as mailbox:
        assert tick(infused, plus(NOW, seconds=30), *channels)["delivered"] == []
        assert mailbox.messages == []
        later = tick(infused, plus(NOW, minutes=5), *channels)
        assert {(d["id"], d["channel"]) for d in later["delivered"]} == {
            (i, "email") for i in ids}
        assert set(mailbox.by_reminder()) == ids
    assert len(webhook.received) == 2


def test_backoff_doubles_from_a_minute_up_to_an_hour_and_never_gives_up() -> None:
    assert [backoff(n) for n in range(1, 10)] == [timedelta(minutes=m) for m in (
        1, 2, 4, 8, 16, 32, 60, 60, 60)]
    assert backoff(1000) == timedelta(hours=1)
