"""One `trialflow demo` (with its reports) per test run, shared by the test processes.

The demo is deterministic for its seed (tests/demo/test_demo.py checks that a second run gives
the same events), so tests that only need *a* demo study read a copy of one build instead of
playing the story again (about 5 s of CPU each). The build goes into a folder of the test run
(under xdist: the run's temporary root, which both workers share; never a folder of an earlier
run, so the build always comes from the code under test), guarded by a file lock: the first
process to ask builds it, the others wait for it and reuse it.

Tests never use the shared file itself: `copy_demo` gives each caller a copy of its own, made
with SQLite's backup API (not a file copy: a reader must not depend on the WAL's state).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DONE = "demo.json"  # written last: the build finished (the demo's --json output)


@dataclass(frozen=True)
class SharedDemo:
    """A finished build: the database file, its reports folder and the demo's --json output."""

    path: Path
    data: dict[str, Any]

    @property
    def reports(self) -> Path:
        return self.path.with_name(f"{self.path.stem}-reports")


def _run_root(factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this test run that every process of it shares."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_demo(factory: pytest.TempPathFactory) -> SharedDemo:
    """The run's demo build (`trialflow demo --json`, default seed, reports beside it), made by
    the first process that asks."""
    from cli.app import run

    folder = _run_root(factory) / "shared-demo"
    folder.mkdir(exist_ok=True)
    path = folder / "demo.db"
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = folder / DONE
        if not done.exists():
            for stale in folder.glob("demo.db*"):  # an interrupted build of this run
                stale.unlink()
            out, err = io.StringIO(), io.StringIO()
            status = run(["--db", f"sqlite:///{path}", "--json", "demo"], stdout=out,
                         stderr=err, environ={})
            assert status == 0, err.getvalue()
            done.write_text(out.getvalue(), encoding="utf-8")
        return SharedDemo(path, json.loads(done.read_text(encoding="utf-8")))


def copy_demo(factory: pytest.TempPathFactory, target: Path) -> str:
    """A private copy of the run's demo study at `target` (a new file); its URL."""
    source = shared_demo(factory).path
    with sqlite3.connect(source) as reader, sqlite3.connect(target) as writer:
        reader.backup(writer)
    reader.close()  # the context managers commit; they do not close
    writer.close()
    return f"sqlite:///{target}"
