"""The README's tour is the demo's real output: regenerating it changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_tour_is_what_the_demo_prints() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "generate_readme_tour.py"),
                           "--check"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_readme_state_diagram_is_the_machine_s() -> None:
    done = subprocess.run([sys.executable, "-m", "cli", "protocol", "diagram"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.strip() == done.stdout.strip()
