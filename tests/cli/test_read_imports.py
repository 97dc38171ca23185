"""A worklist read with nothing to catch up imports none of the write side's machinery: no
protocol parser, no state machine, no clinical rules it does not apply at read time
(docs/performance.md, "Start-up and read commands"). Each read is a real `trialflow`
process; the modules it imported are read off `sys.modules` at its exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.demo import copy_demo

ROOT = Path(__file__).resolve().parents[2]
# the write side's modules: the parser and its forms, the machine and its library, the rules
# a read of the tables does not apply
NOT_FOR_READS = ("workflow.protocol", "workflow.forms", "workflow.machine", "transitions",
                 "tomllib", "workflow.eligibility", "workflow.endpoints", "workflow.deviations")
PROBE = """
import atexit, json, os, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=open(os.environ["OUT"], "w")))
from cli import main
sys.argv = ["trialflow", *sys.argv[1:]]
main()
"""


def imported(db: str, tmp_path: Path, *argv: str) -> set[str]:
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, "--db", db, *argv], cwd=ROOT,
                          env={**os.environ, "OUT": str(out)}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text(encoding="utf-8")))


@pytest.mark.parametrize("argv", [("todo",), ("subjects",)])
def test_a_worklist_read_imports_no_write_machinery(tmp_path_factory: pytest.TempPathFactory,
                                                   tmp_path: Path, argv: tuple[str, ...]
                                                   ) -> None:
    db = copy_demo(tmp_path_factory, tmp_path / "demo.db")  # no subject in screening
    first = imported(db, tmp_path, *argv)  # catches the read models up if they lag
    assert "projections.runner" in first or "projections.views" in first
    modules = imported(db, tmp_path, *argv)  # nothing to catch up now
    assert "projections.todo" in modules  # the worklist's own code did run
    assert "projections.runner" not in modules
    assert sorted(m for m in NOT_FOR_READS if m in modules) == []
