"""Fixtures of the scheduler's tests: a copy of the study template per test, a webhook
receiver and an SMTP server (both real, on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scheduler.study import build_infused
from tests.scheduler.support import Mailbox, Webhook, copy_sqlite, smtp_server, webhook_server


@pytest.fixture(autouse=True)
def _no_trialflow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TRIALFLOW_* setting of the shell running the tests reaches a command (the in-process
    `reminders` reads its channels from os.environ)."""
    import os

    for name in [n for n in os.environ if n.startswith("TRIALFLOW_")]:
        monkeypatch.delenv(name)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def infused_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "infused.db"
    flow = build_infused(f"sqlite:///{path}")
    flow.store.engine.dispose()
    return path


@pytest.fixture
def infused(infused_template: Path, tmp_path: Path) -> str:
    """A SQLite file of its own holding S-001 infused on 2025-02-05."""
    return copy_sqlite(infused_template, tmp_path / "trialflow.db")


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with webhook_server() as hook:
        yield hook


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box
