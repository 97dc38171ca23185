"""One demo study (`trialflow demo`, ~4 s) shared by the report tests; they only read it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.app import run
from projections.queries import Clock
from projections.reports.data import SubjectHistory, load_histories
from projections.views import View, open_view
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


@pytest.fixture(scope="session")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('reports') / 'demo.db'}"
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", url, "demo"], stdout=out, stderr=err, environ={}) == 0, err.getvalue()
    return url


@pytest.fixture(scope="session")
def demo(demo_url: str) -> Iterator[Demo]:
    app = build_app(demo_url)
    view = open_view(app.engine, app.store)
    yield Demo(demo_url, app, view, Clock(view, AFTER_STUDY), load_histories(view, app.store))
    app.engine.dispose()


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path
