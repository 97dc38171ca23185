"""`trialflow todo`, `trialflow subjects` and `status SUBJECT`'s next step, end to end through
the CLI (in-process) on a study built through the executor: urgency order, roles, commands,
`--mine`, `--site`, `--phase`, and the next step of `status` being the subject's first task.
Every clock is `--now`.

    S-001 (PKU3): D0 2025-02-05, a serious AE known 2025-02-06 20:00+08:00 (report due
          2025-02-07 20:00+08:00), its causality unassessed, visit D1 not recorded.
    S-002 (PKU3): consented 2025-02-03, every screening form: eligible.
    S-009 (OTHER, Europe/Berlin): consented 2025-02-03, nothing else.
"""

from __future__ import annotations

import io
import json
from datetime import date
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import messages as M

NOW = "2025-02-07T04:00:00Z"  # 12:00 at PKU3
TASK_KEYS = {"subject", "site", "kind", "state", "role", "roles", "action", "command", "due",
             "window_start", "window_end", "days_left", "hours_left", "position", "ref"}
SERIOUS_AE = ("term=Pneumonia", "category=infection", "onset_date=2025-02-06", "grade=3",
              "serious_criteria=hospitalisation", "awareness_at=2025-02-06T20:00:00+08:00")


def call(db: str, *argv: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`cli.app.run` itself: no session, no password on stdin (reads need none)."""
    from cli.app import run

    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", db, *argv], stdout=out, stderr=err, stdin=io.StringIO(""),
                 environ=environ or {})
    return status, out.getvalue(), err.getvalue()


def query(db: str, *argv: str) -> Any:
    status, out, err = call(db, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)


@pytest.fixture
def study(db_url: str) -> str:
    clock = FakeClock()
    desk = new_study(db_url, clock)
    through_infusion(desk, "S-001", date(2025, 1, 6), clock)
    on_day(clock, date(2025, 2, 6))
    desk.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", SERIOUS_AE, date(2025, 2, 6)))
    screen_eligible(desk, "S-002", date(2025, 2, 3), clock=clock)
    desk.send("otto", M.ConsentSubject("S-009", date(2025, 2, 3), "2.0"))
    return db_url


def test_todo_lists_every_task_most_urgent_first(study: str) -> None:
    tasks = query(study, "todo", "--now", NOW)
    assert all(set(t) >= TASK_KEYS for t in tasks)
    first = tasks[0]
    assert (first["subject"], first["kind"], first["state"], first["role"], first["due"],
            first["hours_left"]) == ("S-001", "sae_report", "due", "investigator",
                                     "2025-02-07T20:00:00+08:00", 8.0)
    assert first["command"].startswith("trialflow record S-001 sae_report ae_position=")
    assert (tasks[1]["kind"], tasks[1]["ref"], tasks[1]["state"], tasks[1]["due"]) == (
        "visit", "D1", "overdue", "2025-02-06")
    states = [t["state"] for t in tasks[1:] if t["kind"] != "sdv"]
    assert {t["kind"] for t in tasks[len(states) + 1:]} == {"sdv"}  # the backlog comes last
    order = ["overdue", "due", "open", "upcoming"]
    assert states == sorted(states, key=order.index)  # overdue, due, open, upcoming
    due = [t for t in tasks if t["state"] == "due"]
    assert [t["due"] for t in due] == sorted(t["due"] for t in due)
    by_kind = {(t["subject"], t["kind"]): t for t in tasks}
    assert by_kind[("S-002", "confirm_eligibility")]["role"] == "investigator"
    assert by_kind[("S-002", "confirm_eligibility")]["command"] == \
        "trialflow confirm-eligibility S-002"
    assert by_kind[("S-001", "causality")]["roles"] == ["investigator"]
    assert by_kind[("S-001", "sdv")]["role"] == "monitor"
    assert by_kind[("S-009", "screening_form")]["role"] == "coordinator"
    status, out, err = call(study, "todo", "--now", NOW)
    assert status == 0, err
    assert out.splitlines()[0].split() == ["subject", "state", "due", "role", "task", "command"]
    assert "None" not in out and "8.0 h left" in out


def test_site_and_mine_filter(study: str) -> None:
    other = query(study, "todo", "--now", NOW, "--site", "OTHER")
    assert other and {t["subject"] for t in other} == {"S-009"}
    assert {t["site"] for t in other} == {"OTHER"}
    ivan = query(study, "--user", "ivan", "todo", "--mine", "--now", NOW)
    assert {(t["subject"], t["kind"]) for t in ivan} == {
        ("S-001", "sae_report"), ("S-001", "visit"), ("S-001", "causality"),
        ("S-002", "confirm_eligibility")}
    assert all("investigator" in t["roles"] and t["site"] == "PKU3" for t in ivan)
    otto = query(study, "--user", "otto", "todo", "--mine", "--now", NOW)
    assert otto and {t["subject"] for t in otto} == {"S-009"}
    mona = query(study, "--user", "mona", "todo", "--mine", "--now", NOW)
    assert {t["kind"] for t in mona} == {"sdv"}
    assert {t["subject"] for t in mona} == {"S-001", "S-002"}  # S-009: no record yet
    everything = query(study, "todo", "--now", NOW)
    assert [t for t in everything if t["kind"] == "sdv"] == mona  # same order, same tasks
    assert query(study, "--user", "audrey", "todo", "--mine", "--now", NOW) == []
    status, out, _ = call(study, "--json", "todo", "--mine")
    assert status == 2 and json.loads(out)["detail"]["field"] == "user"
    status, out, _ = call(study, "--json", "--user", "nobody", "todo", "--mine")
    assert status == 2
    status, out, _ = call(study, "--json", "todo", "--site", "NOWHERE")
    assert status == 2


def test_status_next_step_is_the_first_task(study: str) -> None:
    tasks = query(study, "todo", "--now", NOW)
    for subject in ("S-001", "S-002", "S-009"):
        status = query(study, "status", subject, "--now", NOW)
        first = next(t for t in tasks if t["subject"] == subject)
        assert status["next_task"] == first
        assert status["next_step"] == first["action"]
    code, out, err = call(study, "status", "S-001", "--now", NOW)
    assert code == 0, err
    assert "next_command: trialflow record S-001 sae_report" in out
    assert "next_task" not in out


def test_subjects_one_row_each_with_the_next_task(study: str) -> None:
    rows = query(study, "subjects", "--now", NOW)
    tasks = query(study, "todo", "--now", NOW)
    assert [r["subject"] for r in rows] == ["S-001", "S-002", "S-009"]
    s1 = rows[0]
    assert (s1["site"], s1["phase"], s1["cohort"], s1["d0"]) == (
        "PKU3", "follow_up", "1e6_per_kg", "2025-02-05")
    for row in rows:
        assert row["next_task"] == next(t for t in tasks if t["subject"] == row["subject"])
    assert [r["subject"] for r in query(study, "subjects", "--phase", "screening",
                                        "--now", NOW)] == ["S-002", "S-009"]
    assert [r["subject"] for r in query(study, "subjects", "--site", "OTHER",
                                        "--now", NOW)] == ["S-009"]
    code, out, err = call(study, "subjects", "--now", NOW)
    assert code == 0, err
    assert out.splitlines()[0].split()[:5] == ["subject", "site", "phase", "cohort", "d0"]
