"""Regenerate docs/cli.md from real command output: `.venv/bin/python docs/generate_cli.py`.

Runs a tour against a fresh SQLite file (`tour.db`) in a temporary directory, which is also
the working directory, so files the commands write (`--out`) and the paths they print are
relative and the same on every run. Writes every command with what it printed and its exit
code, so the page cannot drift from the program. The calendar is today's (a candidate
consents three days ago), so dates, days left and the reminders due move with the day the
page is generated; positions, rules and exit codes do not.

Placeholders in a command are filled from earlier output: POSITION (the vitals form the tour
records, before its corrections), QUERY (the query the monitor opens), HEAD (the last
position written so far), DIGEST (the digest `protocol preview` prints). The amendment's
candidate file is written into the directory first (`_candidate`).

Writes prove the acting user by a password (docs/identity.md): on a terminal a hidden prompt
asks for it. The tour passes `--password-stdin` and feeds the passwords below on stdin (for
`init --admin NAME` the first admin's; for `users add NAME` the acting admin's, then NAME's
first, temporary one; for `users passwd NAME` the acting user's, then the new one); the pages
show the commands as typed on a terminal, without them. The scheduler presents the secret
`init` wrote beside the database.

The table of who may send which message is printed from the executor's own table
(workflow/commands/roles.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TODAY = date.today()
CONSENT = (TODAY - timedelta(days=3)).isoformat()
PASSWORDS = {"ada": "tour-admin-secret", "cora": "tour-coordinator-secret",
             "ivan": "tour-investigator-secret", "mona": "tour-monitor-secret",
             "dora": "tour-data-manager-secret"}
FIRST = "handed-over-at-the-site-1"  # the temporary password an admin gives a new user

TOUR: list[tuple[str, str]] = [
    ("Create the database and the first admin", "trialflow init --admin ada"),
    ("Running it again is safe", "trialflow init"),
    ("Sites and users (admin)", "trialflow --user ada sites add PKU3 --tz Asia/Shanghai"),
    ("", "trialflow --user ada users add cora --role coordinator --site PKU3"),
    ("", "trialflow --user ada users add ivan --role investigator --site PKU3"),
    ("", "trialflow --user ada users add mona --role monitor"),
    ("", "trialflow --user ada users add dora --role data_manager"),
    ("A new user's first password is temporary: nothing else is accepted until they change it "
     "(exit 1)", f"trialflow --user cora consent S-001 --on {CONSENT} "
     "--consent-form-version 2.0"),
    ("Each sets their own (the temporary one, then the new one)",
     "trialflow --user cora users passwd cora"),
    ("", "trialflow --user ivan users passwd ivan"),
    ("", "trialflow --user mona users passwd mona"),
    ("", "trialflow --user dora users passwd dora"),
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
    ("A form outside the phases and visits the protocol places it is refused, naming where "
     "it belongs (exit 1)",
     f"trialflow --user cora record S-001 cart_persistence copies_per_ug=120 --on {CONSENT}"),
    ("Eligibility is confirmed only when every criterion is met (exit 1)",
     "trialflow --user ivan confirm-eligibility S-001"),
    ("Only an investigator confirms eligibility (exit 1)",
     "trialflow --user cora --json confirm-eligibility S-001"),
    ("A command out of phase names the rule (exit 1)",
     "trialflow --user cora leukapheresis S-001 --on " + CONSENT + " --coi-id C-1"),
    ("Correct a form, with a reason (the original stays)",
     "trialflow --user cora correct S-001 POSITION weight_kg=58.5 --reason 'transcription "
     "error'"),
    ("An adverse event", f"trialflow --user cora record S-001 adverse_event term=headache "
     f"onset_date={CONSENT} grade=1 --on {CONSENT}"),
    ("The same event entered twice is refused, naming the first (exit 1)",
     f"trialflow --user cora record S-001 adverse_event term=Headache onset_date={CONSENT} "
     f"grade=1 --on {CONSENT}"),
    ("A record entered in error is voided, with a reason (it stays in the log; every read "
     "model, export and signature follows)",
     "trialflow --user cora void S-001 HEAD --reason 'entered for the wrong subject'"),
    ("Status", "trialflow status S-001 --json"),
    ("Eligibility, criterion by criterion", "trialflow eligibility S-001"),
    ("What the system showed then: --as-of a position (or an ISO time)",
     "trialflow eligibility S-001 --as-of @POSITION --json"),
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
    ("After a code change: every read model rebuilt beside the live ones, the differences per "
     "subject and read model, then the swap in one transaction",
     "trialflow projections rebuild --shadow"),
    ("", "trialflow projections diff"),
    ("", "trialflow projections promote"),
    ("Data queries: a monitor asks about a value",
     "trialflow --user mona query open S-001 POSITION --field weight_kg --text 'The scale "
     "printout says 58.2 kg: please check.'"),
    ("Only a monitor or a data manager opens queries (exit 1)",
     "trialflow --user cora query open S-001 POSITION --field weight_kg --text 'Mine?'"),
    ("The site answers, correcting the form in the same append",
     "trialflow --user cora query answer QUERY --text 'Checked: 58.2 kg on the printout.' "
     "weight_kg=58.2 --reason 'scale printout'"),
    ("", "trialflow queries"),
    ("The monitor closes it", "trialflow --user mona query close QUERY"),
    ("Source data verification (a later correction clears the mark)",
     "trialflow --user mona sdv S-001 POSITION"),
    ("", "trialflow sdv-status S-001"),
    ("Study lock: every subject write is refused while it holds (exit 1) until an admin "
     "unlocks", "trialflow --user dora study lock --reason 'interim analysis'"),
    ("", f"trialflow --user cora record S-001 vitals temperature_c=36.9 --on {CONSENT}"),
    ("", "trialflow --user ada study unlock --reason 'interim analysis done'"),
    ("The audit trail of a stream: corrections old → new, with who and why",
     "trialflow audit log S-001"),
    ("Every subject as the system showed it at a moment",
     "trialflow audit replay --as-of @POSITION"),
    ("What changed between two moments", "trialflow audit diff @POSITION @HEAD"),
    ("Verify every hash chain", "trialflow audit verify"),
    ("Reminders: one scheduler pass issues what came due and delivers it (to the log here); "
     "the scheduler is a service account and presents its own secret",
     "trialflow --secret-file tour.scheduler-secret scheduler tick"),
    ("A service account may send reminder messages only (exit 1)",
     "trialflow --user scheduler --secret-file tour.scheduler-secret --json consent S-009 "
     f"--on {CONSENT} --consent-form-version 2.0"),
    ("A wrong password is refused and recorded; five in a row lock the account (exit 1)",
     "trialflow --user ivan --json sign S-001 POSITION --meaning reviewed"),
    ("", "trialflow users list"),
    ("", "trialflow reminders S-001"),
    ("Exports: CDISC ODM, FHIR R5, CSV per form, a subject's visit calendar",
     "trialflow --user dora export odm --out study.xml"),
    ("", "trialflow export fhir --out study.json"),
    ("", "trialflow export csv --out csv"),
    ("", "trialflow export ics S-001 --out S-001.ics"),
    ("Reports: swimmer, SLEDAI-2K and persistence plots, the monitoring page",
     "trialflow report swimmer --out swimmer.png"),
    ("", "trialflow report html --out report.html --json"),
    ("Clinical instruments", "trialflow calc sledai2k arthritis proteinuria low_complement"),
    ("", "trialflow calc crs temperature_c=39 hypotension=one_vasopressor hypoxia=low_flow "
     "--json"),
    ("", "trialflow calc icans ice_score=11"),
    ("A protocol amendment, previewed before it takes effect: a candidate file "
     "(`im19_sle_v3.toml`: version 2 with a minimum weight of 60 kg and D28 ±1 day) judged "
     "against every subject; nothing is written",
     "trialflow protocol preview im19_sle_v3.toml"),
    ("Loaded, it cannot be put in force without the reviewed digest (exit 1)",
     "trialflow --user ada protocol load im19_sle_v3.toml"),
    ("", "trialflow --user ada protocol amend 3"),
    ("", "trialflow --user ada protocol amend 3 --reviewed DIGEST"),
    ("The demo: the IM19-SLE story in a database of its own (`make demo`), its reports "
     "beside it", "trialflow --db sqlite:///demo.db demo"),
]

HEADER = (Path(__file__).parent / "cli-header.md").read_text(encoding="utf-8")


def _passwords(argv: list[str], changed: set[str]) -> list[str]:
    """What the command reads on stdin with --password-stdin, in order. `changed`: the users
    who have set their own password so far."""
    if argv[1:3] == ["init", "--admin"]:
        return [PASSWORDS[argv[3]]]
    user = argv[argv.index("--user") + 1] if "--user" in argv else None
    if user not in PASSWORDS:  # a read, or the scheduler (its secret file)
        return []
    if "sign" in argv:
        return ["not-ivan-s-password"]  # the tour's one wrong password
    feed = [PASSWORDS[user] if user in changed or user == "ada" else FIRST]
    if "users" in argv and argv[argv.index("users") + 1] == "add":
        feed.append(FIRST)
    if "users" in argv and argv[argv.index("users") + 1] == "passwd":
        feed.append(PASSWORDS[argv[argv.index("users") + 2]])
        changed.add(user)
    return feed


def main() -> None:
    filled: dict[str, str] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("COLUMNS", "TRIALFLOW_COLOR"):  # tables at their natural width, no colour
        env.pop(name, None)
    for name in ("TRIALFLOW_DB", "TRIALFLOW_USER", "TRIALFLOW_SESSION"):
        env.pop(name, None)
    changed: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        _candidate(Path(tmp) / "im19_sle_v3.toml")
        parts = [HEADER, _roles_table()]
        for title, command in TOUR:
            for name, value in filled.items():
                command = command.replace(name, value)
            argv = shlex.split(command)
            feed = _passwords(argv, changed)
            options = ([] if "--db" in argv else ["--db", "sqlite:///tour.db"]) + (
                ["--password-stdin"] if feed else [])
            done = subprocess.run(
                [sys.executable, "-m", "cli", *options, *argv[1:]], cwd=tmp, env=env,
                input="".join(f"{p}\n" for p in feed), capture_output=True, text=True,
                check=False,
            )
            _remember(filled, command, done.stdout)
            if title:
                parts.append(f"\n### {title}\n")
            output = (done.stdout + done.stderr).rstrip()
            parts.append(f"```console\n$ {command}\n{output}\n[exit {done.returncode}]\n```\n")
        (ROOT / "docs" / "cli.md").write_text("".join(parts), encoding="utf-8")


def _roles_table() -> str:
    """Who may send which message: the executor's own table (workflow/commands/roles.py)."""
    sys.path.insert(0, str(ROOT))
    from workflow.commands.roles import table

    rows = "".join(f"| `{r['message']}` | `{r['command']}` | {r['roles']} | {r['note']} |\n"
                   for r in table())
    return ("\n## Who may send which message\n\nEvery write is a message carried out by one "
            "executor, which checks this table (and, beside it, that a coordinator or "
            "investigator writes only subjects of their own site) for every message, from "
            "every caller. Printed from `workflow/commands/roles.py`.\n\n"
            "| message | command | roles | note |\n|---|---|---|---|\n" + rows)


def _candidate(path: Path) -> None:
    """The tour's amendment: version 2 with weight >= 60 kg and visit D28 within ±1 day."""
    text = (ROOT / "workflow" / "protocols" / "im19_sle_v2.toml").read_text(encoding="utf-8")
    for old, new in (("version = 2\n", "version = 3\n"),
                     ("weight_min_kg = 40", "weight_min_kg = 60"),
                     ("[visits.D28]\ntarget_day = 28\nwindow_days = 2",
                      "[visits.D28]\ntarget_day = 28\nwindow_days = 1")):
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")


def _remember(filled: dict[str, str], command: str, output: str) -> None:
    digest = re.search(r"Digest: ([0-9a-f]{64})", output)
    if digest:
        filled["DIGEST"] = digest.group(1)
    positions = re.findall(r"Positions?: ([0-9][0-9, .-]*)", output)
    if positions:
        filled["HEAD"] = re.findall(r"\d+", positions[-1])[-1]
        if " vitals weight_kg=58 height_cm" in command:
            filled["POSITION"] = re.findall(r"\d+", positions[-1])[0]
    query = re.search(r"\bQ-\d+\b", output)
    if " query open " in command and query:
        filled["QUERY"] = query.group(0)


if __name__ == "__main__":
    main()
