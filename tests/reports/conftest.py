"""The demo study (`trialflow demo`, ~5 s, built once per test run: tests/support/demo.py) for
the report tests: each test module reads a copy of its own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from projections.queries import Clock
from projections.reports.data import SubjectHistory, load_histories
from projections.views import View, open_view
from tests.support.demo import copy_demo
from workflow.bootstrap import App, build_app

# After the demo's last event (2026-01-18): every subject's story is told.
AFTER_STUDY = datetime(2026, 2, 1, tzinfo=UTC)


@dataclass
class Demo:
    url: str
    app: App
    view: View
    clock: Clock
    histories: list[SubjectHistory]

    def history(self, subject: str) -> SubjectHistory:
        return next(h for h in self.histories if h.subject == subject)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo(tmp_path_factory, tmp_path_factory.mktemp("reports") / "demo.db")


@pytest.fixture(scope="module")
def demo(demo_url: str) -> Iterator[Demo]:
    app = build_app(demo_url)
    view = open_view(app.engine, app.store)
    yield Demo(demo_url, app, view, Clock(view, AFTER_STUDY), load_histories(view, app.store))
    app.engine.dispose()


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path
