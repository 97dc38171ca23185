"""A two-subject study for the export tests, and the CLI called in-process.

The study is built once per test session through the real commands (`workflow.demo.run_subject`
drives each subject from consent to completion, with a corrected adverse event) and copied
into each test that needs its own database.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Mapping
from datetime import date
from pathlib import Path

from events.store import EventStore
from tests.support.clock import FakeClock
from tests.support.study import new_study, on_day
from workflow.bootstrap import build_app
from workflow.demo import run_subject

SUBJECTS = {"S-001": date(2025, 1, 6), "S-002": date(2025, 2, 10)}
CORRECTION_REASON = "oxygen 2 L/min per nursing chart"  # the one run_subject gives
ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"


def build_study(path: Path, subjects: dict[str, date] = SUBJECTS) -> Path:
    """A SQLite file holding the study; its engine is disposed so the file is complete."""
    clock = FakeClock()
    flow = new_study(f"sqlite:///{path}", clock)
    for subject, start in subjects.items():
        run_subject(flow.actors, subject, start, lambda day: on_day(clock, day))
    flow.store.engine.dispose()
    return path


def copy_db(source: Path, target_dir: Path) -> str:
    target = target_dir / "trialflow.db"
    shutil.copyfile(source, target)
    return f"sqlite:///{target}"


def read_only_url(url: str) -> str:
    return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"


def store_of(url: str) -> EventStore:
    return build_app(url).store


def cli(db: str, *argv: str, user: str | None = None,
        environ: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    from tests.support.auth import run_cli

    out, err = io.StringIO(), io.StringIO()
    args = ["--db", db, *(["--user", user] if user else []), *argv]
    status = run_cli(args, stdout=out, stderr=err, environ=environ)
    return int(status), out.getvalue(), err.getvalue()


def odm_schema_path() -> Path:
    """The official ODM 1.3.2 schema as odmlib ships it."""
    import odmlib

    path = Path(os.path.dirname(odmlib.__file__)) / "schemas" / "odm" / "1.3.2" / "ODM1-3-2.xsd"
    assert path.is_file(), path
    return path
