"""Real things for the scheduler's tests: `trialflow` processes, an SMTP server (aiosmtpd), an
HTTP webhook receiver that can fail or hang on demand, and direct reads of the `events` table.

Time never passes by sleeping: every scheduler pass gets its clock from `--now` (a time in the
past: a pass decided in the future is refused, rule `clock_ahead`). A process is polled (short
waits in a loop with a deadline) only to see that it has reached a point.

The scheduler is a service account: a process acting as `scheduler` gets the test secret of
the studies `new_study` builds through `TRIALFLOW_SECRET_FILE` (`scheduler_env`) unless the
test gives an environment of its own.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from tests.support.study import SCHEDULER, scheduler_secret_file

ROOT = Path(__file__).resolve().parents[2]
REMINDER_TYPES = ("ReminderIssued", "ReminderCancelled", "ReminderDelivered",
                  "ReminderDeliveryFailed")


# --- processes -----------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any TRIALFLOW_* setting nor systemd's credentials
    (so no secret and no session reaches a command unless a test gives it), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRIALFLOW_") and k != "CREDENTIALS_DIRECTORY"}
    env.update(extra)
    return env


_secrets: list[Path] = []


def secret_file() -> Path:
    """A file holding the scheduler's secret of every study `new_study` builds (one per test
    run, removed at exit)."""
    if not _secrets:
        folder = Path(tempfile.mkdtemp(prefix="trialflow-scheduler-tests-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _secrets.append(scheduler_secret_file(folder))
    return _secrets[0]


def scheduler_env(**extra: str) -> dict[str, str]:
    """`clean_env(**extra)` with the scheduler's secret file in TRIALFLOW_SECRET_FILE."""
    return clean_env(**{"TRIALFLOW_SECRET_FILE": str(secret_file()), **extra})


def default_env(user: str | None) -> dict[str, str]:
    return scheduler_env() if user == SCHEDULER else clean_env()


def cli_argv(url: str, *argv: str, user: str | None = "scheduler") -> list[str]:
    who = ["--user", user] if user is not None else []
    return [sys.executable, "-m", "cli", "--db", url, *who, *argv]


@dataclass
class Done:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)  # exactly one JSON document, or this raises


def trialflow(url: str, *argv: str, user: str | None = "scheduler",
              env: dict[str, str] | None = None, timeout: float = 60) -> Done:
    """Run `trialflow` as a real process in the project's directory (no terminal on stdin, so
    nothing prompts for a password); `env` default: `default_env(user)`."""
    done = subprocess.run(cli_argv(url, *argv, user=user), cwd=ROOT,
                          env=default_env(user) if env is None else env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Done(done.returncode, done.stdout, done.stderr)


def tick(url: str, now: str, *options: str, env: dict[str, str] | None = None
         ) -> dict[str, Any]:
    """`scheduler tick --now NOW --json` as a process; exit 0 and its report."""
    done = trialflow(url, "--json", "scheduler", "tick", "--now", now, *options, env=env)
    assert done.status == 0, (done.status, done.out, done.err)
    assert "Traceback" not in done.err, done.err
    report: dict[str, Any] = done.json()
    return report


def spawn(url: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`trialflow --user scheduler …` started as a process; `env` default: `scheduler_env()`."""
    return subprocess.Popen(cli_argv(url, *argv), cwd=ROOT,
                            env=scheduler_env() if env is None else env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Poll `condition` until it returns something truthy (a process reaching a point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """End a process this test started (by its own id), if it still runs."""
    if process.poll() is None:
        process.send_signal(sig)
        process.wait(timeout=30)


# --- the events table ----------------------------------------------------------------------


def events(url: str, types: tuple[str, ...] | None = REMINDER_TYPES) -> list[dict[str, Any]]:
    """Events of these types (None: of any type), straight from the `events` table, in log
    order."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT position, stream_id, type, payload, actor, role FROM events "
                "ORDER BY position")).mappings().all()
    finally:
        engine.dispose()
    return [{**row, "payload": json.loads(row["payload"])} for row in rows
            if types is None or row["type"] in types]


def count_all(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())
    finally:
        engine.dispose()


def issued(url: str) -> Counter[tuple[str, str, str]]:
    """(subject, obligation, kind) -> number of `ReminderIssued` events."""
    return Counter((e["payload"]["subject"], e["payload"]["obligation"], e["payload"]["kind"])
                   for e in events(url, ("ReminderIssued",)))


def issued_keys(url: str) -> set[tuple[str, str, str]]:
    counts = issued(url)
    assert all(n == 1 for n in counts.values()), counts  # never issued twice
    return set(counts)


def ids_by_key(url: str) -> dict[tuple[str, str], str]:
    """(obligation, kind) -> reminder id of every issued reminder."""
    return {(e["payload"]["obligation"], e["payload"]["kind"]): e["payload"]["reminder_id"]
            for e in events(url, ("ReminderIssued",))}


def of_type(url: str, kind: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events(url, (kind,))]


def copy_sqlite(source: Path, target: Path) -> str:
    """A consistent copy of a WAL database (sqlite3's online backup); its URL."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return f"sqlite:///{target}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a webhook receiver --------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Webhook:
    """`mode`: `ok` answers 200, `fail` answers 500, `hang` holds the first request that
    arrives until `release()` (then answers 200) and answers the others 200."""

    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hung: int = 0
    url: str = ""

    def answer(self, got: Received) -> int:
        with self.lock:
            self.received.append(got)
            hang = self.mode == "hang" and self.hung == 0
            if hang:
                self.hung += 1
            mode = self.mode
        if hang:
            self.released.wait(timeout=60)
            return 200
        return 500 if mode == "fail" else 200

    def release(self) -> None:
        self.released.set()

    def ids(self) -> list[str]:
        with self.lock:
            return [r.body["id"] for r in self.received]


@contextmanager
def webhook_server(mode: str = "ok") -> Iterator[Webhook]:
    hook = Webhook(mode)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            status = hook.answer(Received(self.path, dict(self.headers.items()), body))
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender was killed while we held its request

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/trialflow"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- an SMTP server ------------------------------------------------------------------------


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def by_reminder(self) -> dict[str, list[EmailMessage]]:
        out: dict[str, list[EmailMessage]] = {}
        for _, mail in self.messages:
            out.setdefault(str(mail["X-Trialflow-Reminder-Id"]), []).append(mail)
        return out


@contextmanager
def smtp_server(port: int | None = None) -> Iterator[Mailbox]:
    """A real SMTP server on 127.0.0.1 (on `port`, else a free one) keeping what it got."""
    from aiosmtpd.controller import Controller

    box = Mailbox("127.0.0.1", port or free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mail = email.message_from_bytes(envelope.original_content or envelope.content,
                                            policy=email.policy.default)
            assert isinstance(mail, EmailMessage)
            box.messages.append((list(envelope.rcpt_tos), mail))
            return "250 Message accepted for delivery"

    controller = Controller(Handler(), hostname=box.host, port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def body_of(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())
