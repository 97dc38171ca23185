"""Where reminders go: a structured log line (always), e-mail over SMTP, an HTTP webhook.

Each notifier sends one message and raises on failure; the scheduler records the outcome and
retries failures with backoff. Every message carries the reminder's id (JSON `id`, e-mail
header `X-Trialflow-Reminder-Id` and Message-ID, webhook header `Idempotency-Key`), so a
receiver can drop a repeat: delivery is at least once.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import structlog

log = structlog.get_logger("trialflow.reminders")


class Notifier(Protocol):
    channel: str

    def send(self, message: Mapping[str, Any]) -> None: ...


class LogNotifier:
    channel = "log"

    def send(self, message: Mapping[str, Any]) -> None:
        log.warning("reminder", **message)


@dataclass
class SmtpNotifier:
    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    timeout: float = 10.0
    channel: str = "email"

    def send(self, message: Mapping[str, Any]) -> None:
        mail = EmailMessage()
        mail["Subject"] = (f"[trialflow] {message['subject']} {message['kind']}: "
                           f"{message['obligation']}")
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Message-ID"] = f"<{message['id']}@trialflow>"
        mail["X-Trialflow-Reminder-Id"] = str(message["id"])
        mail.set_content(f"{message['detail']}\n\nDue at: {message['due_at']}\n"
                         f"Reminder id: {message['id']}\n\n"
                         + json.dumps(dict(message), indent=2, sort_keys=True))
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(mail)


@dataclass
class WebhookNotifier:
    url: str
    timeout: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    channel: str = "webhook"

    def send(self, message: Mapping[str, Any]) -> None:
        body = json.dumps(dict(message), sort_keys=True).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": str(message["id"]),
            **self.headers})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"webhook answered HTTP {response.status}")


def from_settings(environ: Mapping[str, str], *, smtp: str | None = None,
                  mail_from: str | None = None, mail_to: Sequence[str] = (),
                  webhook: str | None = None) -> list[Notifier]:
    """The notifiers chosen by options, else by `TRIALFLOW_SMTP` (host:port),
    `TRIALFLOW_MAIL_FROM`, `TRIALFLOW_MAIL_TO` (comma-separated), `TRIALFLOW_WEBHOOK`."""
    from workflow.errors import InvalidInput

    chosen: list[Notifier] = [LogNotifier()]
    smtp = smtp or environ.get("TRIALFLOW_SMTP")
    recipients = list(mail_to) or [r.strip() for r in environ.get("TRIALFLOW_MAIL_TO", "")
                                   .split(",") if r.strip()]
    if smtp:
        host, _, port = smtp.rpartition(":")
        port_ok = (port.isascii() and port.isdigit() and len(port) <= 5  # not "²"
                   and 0 < int(port) < 65536)
        if not host or not port_ok or not recipients:
            raise InvalidInput("E-mail needs --smtp HOST:PORT and at least one --mail-to "
                               "(or TRIALFLOW_SMTP and TRIALFLOW_MAIL_TO).", field="smtp")
        sender = mail_from or environ.get("TRIALFLOW_MAIL_FROM", "trialflow@localhost")
        chosen.append(SmtpNotifier(host, int(port), sender, recipients))
    webhook = webhook or environ.get("TRIALFLOW_WEBHOOK")
    if webhook:
        if not webhook.startswith(("http://", "https://")):
            raise InvalidInput(f"--webhook {webhook!r} is not an http(s) URL.", field="webhook")
        chosen.append(WebhookNotifier(webhook))
    return chosen
