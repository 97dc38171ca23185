"""`protocol preview` and `protocol amend --reviewed` (workflow/amendment.py, the executor's
`amendment` load, admin.amend_protocol): a shrinking visit window names exactly the visits
that would become deviations; the preview writes nothing and is deterministic; the amendment
is refused without the reviewed digest, with a stale one, and records the one reviewed.

    S-001 (on study, follow-up): D14 done at +2 days, D21 at +1, D28 at -2, D60 at +5.
    S-003 (off study after D14 at +2): keeps its version (it will not re-consent).
    Candidate version 3: D14 and D28 ±1 instead of ±2, D60 ±3 instead of ±7.
"""

from __future__ import annotations

import io
import json
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from events.engine import create_store_engine
from events.store import EventStore
from projections.amendment import preview_of
from projections.runner import Runner
from projections.tables import metadata
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    Desk,
    new_study,
    on_day,
    refused,
    through_infusion,
)
from workflow import event_types as T
from workflow.commands import messages as M
from workflow.protocol import builtin_protocol_text

START = date(2025, 1, 6)
NARROWER = {"D14": 1, "D28": 1, "D60": 3}  # window_days of the candidate (v2: 2, 2, 7)


def candidate_text(version: int = 3, windows: dict[str, int] = NARROWER) -> str:
    text = re.sub(r"^version = 2$", f"version = {version}", builtin_protocol_text(2),
                  count=1, flags=re.M)
    for visit, days in windows.items():
        text, found = re.subn(rf"(\[visits\.{visit}\]\ntarget_day = \d+\nwindow_days = )\d+",
                              rf"\g<1>{days}", text)
        assert found == 1, visit
    return text


def visit(desk: Desk, subject: str, code: str, d0: date, offset: int) -> None:
    day = d0 + timedelta(days=offset)
    on_day(desk.clock, day)
    desk.send(COORDINATOR, M.RecordVisit(subject, code, "done", day))


def build(url: str) -> Desk:
    clock = FakeClock()
    desk = new_study(url, clock)
    d0 = through_infusion(desk, "S-001", START, clock)
    d0_3 = through_infusion(desk, "S-003", START + timedelta(days=2), clock)
    for code, day in (("D1", 1), ("D4", 4), ("D7", 7), ("D10", 10)):
        visit(desk, "S-001", code, d0, day)
        visit(desk, "S-003", code, d0_3, day)
    visit(desk, "S-003", "D14", d0_3, 16)
    desk.send(COORDINATOR, M.TakeOffStudy("S-003", "investigator_decision"))
    for code, day in (("D14", 16), ("D21", 22), ("D28", 26), ("D60", 65)):
        visit(desk, "S-001", code, d0, day)
    return desk


def with_candidate_file(url: str, folder: Path) -> tuple[Desk, Path]:
    path = folder / "im19_sle_v3.toml"
    path.write_text(candidate_text(), encoding="utf-8")
    return build(url), path


@pytest.fixture
def study(db_url: str, tmp_path: Path) -> tuple[Desk, Path]:
    return with_candidate_file(db_url, tmp_path)


@pytest.fixture
def study_file(sqlite_url: str, tmp_path: Path) -> tuple[Desk, Path]:
    """On a SQLite file only: for rules no store takes part in."""
    return with_candidate_file(sqlite_url, tmp_path)


def tables(engine: Engine, *, stamped: bool = True) -> dict[str, list[str]]:
    """Every read-model table and the checkpoints, row by row; `stamped=False` leaves out the
    checkpoints' `updated_at` (the wall clock of the last catch-up, not what was folded)."""
    with engine.connect() as conn:
        return {t.name: sorted(repr(tuple(r)) for r in conn.execute(
                    t.select() if stamped or "updated_at" not in t.c
                    else t.select().with_only_columns(
                        *(c for c in t.c if c.name != "updated_at"))).all())
                for t in metadata.sorted_tables}


def changes_of(data: dict[str, Any], subject: str, model: str) -> list[dict[str, Any]]:
    found = [s for s in data["subjects"] if s["subject"] == subject]
    return [c for c in (found[0]["changes"] if found else []) if c["model"] == model]


def test_a_shrinking_window_names_exactly_the_visits_that_become_deviations(
        study: tuple[Desk, Path]) -> None:
    desk, path = study
    data = preview_of(desk.store, str(path)).to_json()
    deviations = changes_of(data, "S-001", "deviations")
    assert {(c["item"].split("(")[-1].rstrip(")"), c["before"] is None) for c in deviations} \
        == {("D14", True), ("D28", True), ("D60", True)}
    assert all("visit_out_of_window" in c["item"] and "outside its window" in c["after"]
               for c in deviations)
    windows = {c["item"]: c["after"] for c in changes_of(data, "S-001", "visits")}
    assert set(windows) == {"D14", "D28", "D60"}  # D21: window unchanged
    assert "window 2025-02-18..2025-02-20; done 2025-02-21, outside the window" in windows["D14"]
    # the subject who left keeps its version: nothing of it changes, it does not re-consent
    assert changes_of(data, "S-003", "deviations") == [] and changes_of(data, "S-003",
                                                                         "visits") == []
    entry = {s["subject"]: s for s in data["subjects"]}
    assert entry["S-001"]["reconsent"] and "S-003" not in entry
    assert [c["item"] for c in data["protocol_changes"]] == [
        "visits.D14.window_days", "visits.D28.window_days", "visits.D60.window_days"]
    assert data["subjects_compared"] == 2 and data["subjects_changed"] == 1


def test_preview_writes_nothing_and_is_deterministic(study: tuple[Desk, Path]) -> None:
    desk, path = study
    engine = create_store_engine(desk.executor.app.engine.url.render_as_string(
        hide_password=False))
    Runner(engine, EventStore(engine)).catch_up()
    before, head = tables(engine), desk.store.last_position()
    first = preview_of(desk.store, str(path))
    second = preview_of(desk.store, str(path))
    assert first.to_json() == second.to_json() and first.digest == second.digest
    assert desk.store.last_position() == head and tables(engine) == before
    # the digest is of the consequences, not of the moment: an unrelated event leaves it
    desk.send(ADMIN, M.AddSite("THIRD", "UTC"))
    assert preview_of(desk.store, str(path)).digest == first.digest
    engine.dispose()


def test_amend_needs_the_reviewed_digest_and_records_it(study: tuple[Desk, Path]) -> None:
    desk, path = study
    reviewed = preview_of(desk.store, str(path)).digest
    desk.send(ADMIN, M.LoadProtocol(path.read_text(encoding="utf-8"), str(path)))
    assert preview_of(desk.store, "3").digest == reviewed  # loaded: the same consequences
    refused(desk, ADMIN, M.AmendProtocol(3), "preview_not_reviewed", "protocol preview 3",
            "--reviewed")
    refused(desk, ADMIN, M.AmendProtocol(3, "0" * 64), "preview_changed", "000000000000")
    outcome = desk.send(ADMIN, M.AmendProtocol(3, reviewed))
    (event,) = [e for e in desk.store.read_stream("study")
                if e.position in outcome.result.positions]
    assert event.type == T.PROTOCOL_AMENDED
    recorded = event.payload["preview"]
    assert (recorded["digest"], recorded["reviewed"]) == (reviewed, True)
    assert recorded["changes"] >= 9 and recorded["subjects_changed"] == 1
    assert recorded["position"] == event.position - 1  # the log as the preview read it
    # an auditor gets the digest again from the log as it stood then
    assert preview_of(desk.store, "3", up_to=recorded["position"]).digest == reviewed


def test_a_relevant_change_after_the_review_makes_the_digest_stale(
        study: tuple[Desk, Path]) -> None:
    desk, path = study
    desk.send(ADMIN, M.LoadProtocol(path.read_text(encoding="utf-8"), str(path)))
    reviewed = preview_of(desk.store, "3").digest
    desk.send(COORDINATOR, M.ConsentSubject("S-004", desk.clock().date(), "2.0"))
    assert preview_of(desk.store, "3").digest != reviewed  # one more subject to re-consent
    refused(desk, ADMIN, M.AmendProtocol(3, reviewed), "preview_changed",
            "run `trialflow protocol preview 3` again")


def test_review_policy_optional_records_the_unreviewed_preview(
        study_file: tuple[Desk, Path]) -> None:
    desk, path = study_file
    desk.send(ADMIN, M.SetAmendmentReview(False))
    desk.send(ADMIN, M.LoadProtocol(path.read_text(encoding="utf-8"), str(path)))
    digest = preview_of(desk.store, "3").digest
    outcome = desk.send(ADMIN, M.AmendProtocol(3))
    assert outcome.summary["preview"]["digest"] == digest
    assert outcome.summary["preview"]["reviewed"] is False


def test_no_change_needs_no_review(sqlite_url: str) -> None:
    """A version that changes nothing but its number and title (no subject yet)."""
    desk = new_study(sqlite_url, FakeClock())
    text = candidate_text(windows={})
    desk.send(ADMIN, M.LoadProtocol(text, "same.toml"))
    found = preview_of(desk.store, "3")
    assert found.change_count == 0
    assert desk.send(ADMIN, M.AmendProtocol(3)).summary["preview"]["changes"] == 0


def test_a_cap_below_a_subjects_place_is_said_not_raised(sqlite_url: str,
                                                         tmp_path: Path) -> None:
    clock = FakeClock()
    desk = new_study(sqlite_url, clock)
    through_infusion(desk, "S-001", START, clock)
    through_infusion(desk, "S-002", START + timedelta(days=1), clock)  # place 2
    text = re.sub(r"^cap = 6$", "cap = 1", candidate_text(windows={}), count=1, flags=re.M)
    text = re.sub(r"\[\[enrolment\.cohorts\]\]\ncode = \"1e8_flat\"\nfirst = 4\nlast = 6\n"
                  r"flat_dose = 1e8\n", "", text)
    text = re.sub(r"(code = \"1e6_per_kg\"\nfirst = 1\nlast = )3", r"\g<1>1", text)
    path = tmp_path / "cap1.toml"
    path.write_text(text, encoding="utf-8")
    data = preview_of(desk.store, str(path)).to_json()
    assert changes_of(data, "S-001", "cohort") == []
    cohort = {c["item"]: c["after"] for c in changes_of(data, "S-002", "cohort")}
    assert "outside the enrolment cap 1" in str(cohort["cohort"])
    # the rules that need the cohort say so instead of failing the preview
    assert any(c["item"] == "cannot be judged" and "outside 1..1" in str(c["after"])
               for c in changes_of(data, "S-002", "deviations"))


def test_a_file_reusing_a_loaded_version_is_refused(study_file: tuple[Desk, Path],
                                                    tmp_path: Path) -> None:
    desk, _ = study_file
    path = tmp_path / "v2-changed.toml"
    path.write_text(builtin_protocol_text(2).replace("window_days = 7", "window_days = 6", 1),
                    encoding="utf-8")
    from workflow.errors import RuleViolation

    with pytest.raises(RuleViolation) as caught:
        preview_of(desk.store, str(path))
    assert caught.value.rule == "protocol_version_exists"


def test_cli_preview_text_json_and_progress(study: tuple[Desk, Path]) -> None:
    from cli.app import run

    desk, path = study
    url = desk.executor.app.engine.url.render_as_string(hide_password=False)
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", url, "--json", "protocol", "preview", str(path), "--now",
                "2025-04-20T00:00:00Z"], stdout=out, stderr=err, environ={}) == 0, err.getvalue()
    data = json.loads(out.getvalue())
    assert data["digest"] == preview_of(desk.store, str(path)).digest
    assert data["now"] == "2025-04-20T00:00:00+00:00"
    out, err = io.StringIO(), io.StringIO()
    assert run(["--db", url, "protocol", "preview", str(path)], stdout=out, stderr=err,
               environ={"TRIALFLOW_PROGRESS": "1", "COLUMNS": "200"}) == 0, err.getvalue()
    text = out.getvalue()
    assert "nothing was written" in text and "visits.D14.window_days: 2 -> 1" in text
    assert f"trialflow protocol amend 3 --reviewed {data['digest']}" in text
    assert "previewing" in err.getvalue() and "2/2" in err.getvalue()
    status = run(["--db", url, "protocol", "preview", str(path.with_name("missing.toml"))],
                 stdout=io.StringIO(), stderr=(err := io.StringIO()), environ={})
    assert status == 2 and "missing.toml" in err.getvalue()
