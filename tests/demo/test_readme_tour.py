"""The README's tour is the demo's real output: regenerating it changes nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.demo import copy_demo

ROOT = Path(__file__).resolve().parents[2]
DEMO_STEP = "trialflow demo --no-reports"  # the generator's first command


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_readme_tour", ROOT / "docs" / "generate_readme_tour.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tour_is_what_the_demo_prints(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`docs/generate_readme_tour.py --check`, each tour command run as the script runs it (a
    `python -m cli` process in the demo's folder); only its first step, `trialflow demo
    --no-reports` into that folder, is a copy of the test run's demo build (the same events:
    the demo is deterministic, and reports add none; tests/demo/test_demo.py checks both)."""
    generator = _generator()
    run_command = generator._run
    steps: list[str] = []

    def run(folder: str, command: str) -> str:
        steps.append(command)
        if command == DEMO_STEP:
            assert not (Path(folder) / "demo.db").exists()
            copy_demo(tmp_path_factory, Path(folder) / "demo.db")
            return ""
        return str(run_command(folder, command))

    monkeypatch.setattr(generator, "_run", run)
    status = generator.main(["--check"])
    captured = capsys.readouterr()
    assert status == 0, captured.err + captured.out
    assert steps == [DEMO_STEP, *generator.TOUR]


def test_the_readme_state_diagram_is_the_machine_s() -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "protocol", "diagram"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.strip() == done.stdout.strip()
