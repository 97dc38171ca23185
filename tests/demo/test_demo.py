"""`trialflow demo`: the story happens through the commands, deterministically, and a database
that already holds a study is never overwritten without --replace."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest

from cli.app import run
from workflow.bootstrap import build_app


def _demo(db: str, *extra: str) -> tuple[int, dict[str, object], str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", db, "--json", "demo", *extra], stdout=out, stderr=err, environ={})
    return status, (json.loads(out.getvalue()) if out.getvalue() else {}), err.getvalue()


def _story(db: str) -> list[tuple[str, str, str, str]]:
    store = build_app(db).store
    return [(e.stream_id, e.type, e.payload_text, e.occurred_at) for e in store.read_all()
            if not e.type.startswith("Reminder")] + [
        (e.stream_id, e.type, json.dumps({k: v for k, v in e.payload.items()}), e.occurred_at)
        for e in store.read_all() if e.type == "ReminderIssued"]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    db = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.db'}"
    status, _, err = _demo(db)
    assert status == 0, err
    return db


def test_the_story_happens(demo_db: str) -> None:
    status, data, _ = _demo(demo_db, "--replace")
    assert status == 0
    study = data["status"]
    assert isinstance(study, dict)
    assert study["phases"]["completed"] == 6 and study["phases"]["screen_failed"] == 2
    assert study["enrolled"] == 6
    assert [c["filled"] for c in study["cohorts"]] == [3, 3]
    store = build_app(demo_db).store
    events = list(store.read_all())
    types = Counter(e.type for e in events)
    fails = sorted(e.payload["reason"] for e in events if e.type == "ScreenFailed")
    assert fails == ["active_infection", "weight"]  # two different criteria
    assert types["ProtocolAmended"] == 1 and types["SubjectReconsented"] == 2
    assert types["InfusionGiven"] == 6 and types["SubjectCompleted"] == 6
    aes = {a["subject"]: a for a in data["adverse_events"]}  # type: ignore[union-attr]
    assert aes["S-001"]["crs_grade"] == 2 and aes["S-001"]["in_safety_window"]
    assert aes["S-002"]["icans_grade"] == 1 and aes["S-002"]["in_safety_window"]
    assert aes["S-004"]["serious"] and aes["S-004"]["relatedness"] == "possible"
    reports = [e for e in events if e.type == "FormRecorded" and e.payload["form"] ==
               "sae_report"]
    assert len(reports) == 1 and reports[0].stream_id == "S-004"
    missed = [e for e in events if e.type == "VisitRecorded" and e.payload["status"] ==
              "missed"]
    assert [(e.stream_id, e.payload["visit"]) for e in missed] == [("S-005", "D60")]
    out = io.StringIO()
    run(["--db", demo_db, "--json", "deviations"], stdout=out, stderr=io.StringIO(), environ={})
    deviations = json.loads(out.getvalue())
    assert [(d["subject"], d["kind"], d["visit"]) for d in deviations] == [
        ("S-002", "visit_out_of_window", "D14")]
    kinds = Counter(e.payload["kind"] for e in events if e.type == "ReminderIssued")
    assert kinds["window_opening"] > 50 and kinds["due"] > 50
    assert kinds["overdue"] == 1 and kinds["sae_report_due"] == 1
    assert {e.actor for e in events} == {"ada", "cora", "ivan", "scheduler"}
    assert data["events"] == events[-1].position


def test_same_seed_same_events(demo_db: str, tmp_path: Path) -> None:
    again = f"sqlite:///{tmp_path / 'again.db'}"
    assert _demo(again)[0] == 0
    assert _story(again) == _story(demo_db)


def test_a_database_with_a_study_is_not_overwritten(demo_db: str) -> None:
    before = build_app(demo_db).store.last_position()
    status, data, _ = _demo(demo_db)
    assert status == 1 and data["rule"] == "database_not_empty"
    assert build_app(demo_db).store.last_position() == before
