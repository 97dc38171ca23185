"""Regenerate docs/cli.md from real command output: `.venv/bin/python docs/generate_cli.py`.

Runs a short tour against a fresh SQLite file in a temporary directory and writes every
command with what it printed and its exit code, so the page cannot drift from the program.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TODAY = date.today()
CONSENT = (TODAY - timedelta(days=3)).isoformat()

TOUR: list[tuple[str, str]] = [
    ("Create the database and the first admin", "trialflow init --admin ada"),
    ("Running it again is safe", "trialflow init"),
    ("Sites and users (admin)", "trialflow --user ada sites add PKU3 --tz Asia/Shanghai"),
    ("", "trialflow --user ada users add cora --role coordinator --site PKU3"),
    ("", "trialflow --user ada users add ivan --role investigator --site PKU3"),
    ("", "trialflow users list"),
    ("The protocol in force", "trialflow protocol show"),
    ("The state diagram, generated from the machine", "trialflow protocol diagram"),
    ("Consent a candidate (coordinator)",
     f"trialflow --user cora consent S-001 --on {CONSENT} --consent-form-version 2.0"),
    ("Record forms", f"trialflow --user cora record S-001 vitals weight_kg=58 height_cm=162 "
     f"--on {CONSENT}"),
    ("An assessment dated before consent is refused (exit 1)",
     f"trialflow --user cora record S-001 vitals weight_kg=58 --on "
     f"{(TODAY - timedelta(days=30)).isoformat()}"),
    ("A bad value is refused (exit 2)",
     f"trialflow --user cora record S-001 vitals weight_kg=-3 --on {CONSENT}"),
    ("Phase forms go through their command (exit 2)",
     "trialflow --user cora record S-001 infusion cells=1"),
    ("Eligibility is confirmed only when every criterion is met (exit 1)",
     "trialflow --user ivan confirm-eligibility S-001"),
    ("Only an investigator confirms eligibility (exit 1)",
     "trialflow --user cora --json confirm-eligibility S-001"),
    ("A command out of phase names the rule (exit 1)",
     "trialflow --user cora leukapheresis S-001 --on " + CONSENT + " --coi-id C-1"),
    ("Correct a form, with a reason (the original stays)",
     "trialflow --user cora correct S-001 POSITION weight_kg=58.5 --reason 'transcription "
     "error'"),
    ("Status", "trialflow status S-001 --json"),
    ("Eligibility, criterion by criterion", "trialflow eligibility S-001"),
    ("What the system showed then: --as-of a position (or an ISO time)",
     "trialflow eligibility S-001 --as-of @13 --json"),
    ("The study at a glance", "trialflow status"),
    ("Planned visits with windows and the reminders due (screening is anchored on consent)",
     "trialflow visits S-001"),
    ("", "trialflow visits --due --json"),
    ("Adverse events, safety windows, SAE clocks, deviations, endpoints",
     "trialflow ae list"),
    ("", "trialflow ae windows --json"),
    ("", "trialflow deviations"),
    ("", "trialflow endpoints S-001"),
    ("The read models: checkpoint and lag of each, rebuild from the log",
     "trialflow projections status"),
    ("", "trialflow projections rebuild visits"),
    ("The audit trail of a stream", "trialflow audit log S-001"),
    ("Verify every hash chain", "trialflow audit verify"),
    ("Clinical instruments", "trialflow calc sledai2k arthritis proteinuria low_complement"),
    ("", "trialflow calc crs temperature_c=39 hypotension=one_vasopressor hypoxia=low_flow "
     "--json"),
    ("", "trialflow calc icans ice_score=11"),
]

HEADER = (Path(__file__).parent / "cli-header.md").read_text(encoding="utf-8")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/tour.db"
        parts = [HEADER]
        position = None
        for title, command in TOUR:
            if "POSITION" in command:
                command = command.replace("POSITION", str(position))
            argv = shlex.split(command)
            done = subprocess.run(
                [sys.executable, "-m", "cli", "--db", db, *argv[1:]], cwd=ROOT,
                capture_output=True, text=True, check=False,
            )
            if "vitals weight_kg=58 height_cm" in command:
                position = done.stdout.rsplit("Positions: ", 1)[1].strip(". \n")
            if title:
                parts.append(f"\n### {title}\n")
            output = (done.stdout + done.stderr).rstrip()
            parts.append(f"```console\n$ {command}\n{output}\n[exit {done.returncode}]\n```\n")
        (ROOT / "docs" / "cli.md").write_text("".join(parts), encoding="utf-8")


if __name__ == "__main__":
    main()
