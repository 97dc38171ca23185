"""`trialflow demo`: the story happens through the commands, deterministically (events and
report files), a database that already holds a study is never overwritten without --replace
(`--subjects N` and URI-form URLs: test_demo_variants.py)."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.app import run
from projections.demo_story import DEMO_PASSWORD
from tests.demo.support import cli_json as _cli
from tests.demo.support import demo_json as _demo
from workflow.bootstrap import build_app

PNG = b"\x89PNG\r\n\x1a\n"
HTML_SECTIONS = ("status", "subjects", "visits", "adverse-events", "deviations", "endpoints",
                 "swimmer", "sledai", "persistence")


def _story(db: str) -> list[tuple[str, str, str, str]]:
    store = build_app(db).store
    return [(e.stream_id, e.type, e.payload_text, e.occurred_at) for e in store.read_all()
            if not e.type.startswith("Reminder")] + [
        (e.stream_id, e.type, json.dumps({k: v for k, v in e.payload.items()}), e.occurred_at)
        for e in store.read_all() if e.type == "ReminderIssued"]


@dataclass
class Run:
    db: str
    folder: Path
    data: dict[str, Any]
    story: list[tuple[str, str, str, str]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("demo")
    db = f"sqlite:///{folder / 'demo.db'}"
    status, data, err = _demo(db)
    assert status == 0, err
    return Run(db, folder, data, _story(db))


def test_the_story_happens(demo: Run) -> None:
    data = demo.data
    study = data["status"]
    assert study["phases"]["completed"] == 6 and study["phases"]["screen_failed"] == 2
    assert study["enrolled"] == 6 and study["cap"] == 6 and data["protocol_version"] == 2
    assert [c["filled"] for c in study["cohorts"]] == [3, 3]
    store = build_app(demo.db).store
    events = list(store.read_all())
    types = Counter(e.type for e in events)
    fails = sorted(e.payload["reason"] for e in events if e.type == "ScreenFailed")
    assert fails == ["active_infection", "weight"]  # two different criteria
    notes = [e.payload.get("note") for e in events if e.type == "ScreenFailed"]
    assert all(notes), notes  # each with a code and a free-text note
    assert types["ProtocolAmended"] == 1 and types["SubjectReconsented"] == 2
    assert types["InfusionGiven"] == 6 and types["SubjectCompleted"] == 6
    aes = {a["subject"]: a for a in data["adverse_events"]}
    assert aes["S-001"]["crs_grade"] == 2 and aes["S-001"]["in_safety_window"]
    assert aes["S-002"]["icans_grade"] == 1 and aes["S-002"]["in_safety_window"]
    assert aes["S-004"]["serious"] and aes["S-004"]["relatedness"] == "possible"
    reports = [e for e in events if e.type == "FormRecorded" and e.payload["form"] ==
               "sae_report"]
    assert len(reports) == 1 and reports[0].stream_id == "S-004"
    missed = [e for e in events if e.type == "VisitRecorded" and e.payload["status"] ==
              "missed"]
    assert [(e.stream_id, e.payload["visit"]) for e in missed] == [("S-005", "D60")]
    _, deviations, _ = _cli(demo.db, "deviations")
    assert [(d["subject"], d["kind"], d["visit"]) for d in deviations] == [
        ("S-002", "visit_out_of_window", "D14")]
    kinds = Counter(e.payload["kind"] for e in events if e.type == "ReminderIssued")
    assert kinds["window_opening"] > 50 and kinds["due"] > 50
    assert kinds["overdue"] == 1 and kinds["sae_report_due"] == 1
    # each user of the story set their own password after the admin added them
    assert {e.actor for e in events} == {"ada", "cora", "ivan", "mona", "dora", "audrey",
                                         "scheduler"}
    assert data["events"] == events[-1].position
    assert _cli(demo.db, "audit", "verify")[0] == 0


def test_a_monitor_query_is_answered_with_a_correction(demo: Run) -> None:
    [query] = demo.data["queries"]
    assert (query["subject"], query["form"], query["field"]) == (
        "S-002", "cart_persistence", "copies_per_ug")
    assert query["opened_by"] == "mona" and query["answered_by"] == "cora"
    assert query["state"] == "closed" and query["closed_by"] == "mona"
    wrong, right = query["value"], query["current_value"]
    assert wrong == pytest.approx(10 * right)
    # read models show the corrected value: the endpoint's peak is D10's corrected copies
    _, endpoints, _ = _cli(demo.db, "endpoints", "S-002")
    assert endpoints["persistence"]["peak_copies_per_ug"] == right
    assert endpoints["persistence"]["peak_day"] == 10
    _, listed, _ = _cli(demo.db, "queries", "S-002")
    assert [(q["id"], q["state"], q["correction_position"]) for q in listed] == [
        (query["id"], "closed", query["correction_position"])]
    # the audit trail shows the original and the correction, old -> new, with its reason
    _, trail, _ = _cli(demo.db, "audit", "log", "S-002")
    by_position = {e["position"]: e for e in trail["events"]}
    original = by_position[query["position"]]
    assert original["type"] == "FormRecorded"
    assert original["payload"]["values"]["copies_per_ug"] == wrong
    correction = by_position[query["correction_position"]]
    assert correction["type"] == "FormCorrected" and correction["actor"] == "cora"
    assert correction["changes"] == [{"form": "cart_persistence", "field": "copies_per_ug",
                                      "old": wrong, "new": right,
                                      "target_position": query["position"]}]
    assert "qPCR report" in correction["reason"]
    assert correction["payload"]["query"] == query["id"]
    # the monitor source-verified the corrected form afterwards
    _, forms, _ = _cli(demo.db, "sdv-status", "S-002")
    [verified] = [f for f in forms if f["position"] == query["position"]]
    assert verified["verified"] and verified["verified_by"] == "mona"
    assert verified["corrected_by"] == [query["correction_position"]]


def test_the_reports_are_written_beside_the_database(demo: Run) -> None:
    folder = demo.folder / "demo-reports"
    files = {Path(r["file"]).name: r for r in demo.data["reports"]}
    assert list(files) == ["swimmer.png", "sledai.png", "persistence.png", "report.html"]
    for name, written in files.items():
        assert Path(written["file"]) == folder / name
    for name in ("swimmer.png", "sledai.png", "persistence.png"):
        assert (folder / name).read_bytes().startswith(PNG)
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    for section in HTML_SECTIONS:
        assert f'id="{section}"' in page
    assert page.count("data:image/png;base64,") == 3


def test_replace_gives_the_same_events(demo: Run) -> None:
    status, data, err = _demo(demo.db, "--replace", "--no-reports")  # reports: 3 s more
    assert status == 0, err
    assert _story(demo.db) == demo.story
    assert {k: v for k, v in data.items() if k != "reports"} == {
        k: v for k, v in demo.data.items() if k != "reports"}


def test_a_database_with_a_study_is_not_overwritten(demo: Run, tmp_path: Path) -> None:
    before = build_app(demo.db).store.last_position()
    status, data, _ = _demo(demo.db, "--reports", str(tmp_path / "r"))
    assert status == 1 and data["rule"] == "database_not_empty"
    assert build_app(demo.db).store.last_position() == before
    assert not (tmp_path / "r").exists()


def test_the_investigator_signs_each_completion(demo: Run) -> None:
    store = build_app(demo.db).store
    completions = {e.stream_id: e for e in store.read_all() if e.type == "SubjectCompleted"}
    rows = demo.data["signatures"]
    assert sorted(r["subject"] for r in rows) == sorted(completions)
    for row in rows:
        completed = completions[row["subject"]]
        assert row["target_position"] == completed.position
        assert row["target_hash"] == completed.hash
        assert (row["meaning"], row["printed_name"], row["role"], row["state"]) == (
            "approved", "ivan", "investigator", "valid")
    _, listed, _ = _cli(demo.db, "signatures", "S-004")
    assert [(s["target_position"], s["state"]) for s in listed] == [
        (completions["S-004"].position, "valid")]


def test_demo_users_can_write_with_the_documented_password(demo: Run, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'copy.db'}"
    Path(tmp_path / "copy.db").write_bytes(Path(demo.db.removeprefix("sqlite:///")).read_bytes())
    out, err = io.StringIO(), io.StringIO()
    ok = run(["--db", db, "--json", "--user", "mona", "--password-stdin", "query", "open",
              "S-002", str(demo.data["queries"][0]["position"]), "--field",
              "copies_per_ug", "--text", "Please check again."], stdout=out, stderr=err,
             environ={}, stdin=io.StringIO(f"{DEMO_PASSWORD}\n"))
    assert ok == 0, out.getvalue() + err.getvalue()
    out = io.StringIO()
    wrong = run(["--db", db, "--json", "--user", "mona", "--password-stdin", "query", "open",
                 "S-001", "1", "--field", "x", "--text", "y"], stdout=out,
                stderr=io.StringIO(), environ={}, stdin=io.StringIO("not-the-password\n"))
    assert wrong == 1 and json.loads(out.getvalue())["rule"] == "authentication_failed"


def test_the_demo_marks_its_database_and_replaces_nothing_else(demo: Run,
                                                               tmp_path: Path) -> None:
    from workflow.study import load_study

    assert load_study(build_app(demo.db).store).purpose == "demo"
    # a real study (initialised by `trialflow init`) is never replaced, with or without
    # --replace; neither is a file that is no database
    real = f"sqlite:///{tmp_path / 'real.db'}"
    init = run(["--db", real, "--password-stdin", "init", "--admin", "ada"],
               stdout=io.StringIO(), stderr=io.StringIO(), environ={},
               stdin=io.StringIO("correct-horse-battery\n"))
    assert init == 0
    before = build_app(real).store.last_position()
    for options in ((), ("--replace",)):
        status, data, _ = _demo(real, *options, "--no-reports")
        assert status == 1 and data["rule"] == "not_a_demo_database", options
    assert build_app(real).store.last_position() == before
    junk = tmp_path / "notes.db"
    junk.write_text("my notes, not a database\n")
    status, data, _ = _demo(f"sqlite:///{junk}", "--replace", "--no-reports")
    assert status == 1 and data["rule"] == "not_a_demo_database"
    assert junk.read_text() == "my notes, not a database\n"
