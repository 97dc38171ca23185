"""`trialflow demo --subjects N` scales the story under a protocol variant whose cap is N (and
refuses fewer subjects than the story has); a URI-form SQLite URL names the same file (split
from test_demo.py so that the two files can run side by side)."""

from __future__ import annotations

import io
from pathlib import Path

from cli.app import run
from projections.demo_story import protocol_variant
from tests.demo.support import cli_json as _cli
from tests.demo.support import demo_json as _demo
from workflow.bootstrap import build_app
from workflow.protocol import builtin_protocol, load_protocol_text


def test_more_subjects_are_enrolled_under_a_protocol_variant(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'twelve.db'}"
    status, data, err = _demo(db, "--subjects", "12", "--no-reports")
    assert status == 0, err
    assert data["reports"] == [] and not (tmp_path / "twelve-reports").exists()
    # the variant: version 2's text with cap 12 and the cohorts scaled, loaded as 102
    study = data["status"]
    assert data["protocol_version"] == study["protocol_version"] == 102
    assert data["subjects"] == study["subjects"] == 12 and data["copies"] == 4
    assert study["cap"] == 12 and study["enrolled"] == 10  # 12 candidates, 2 screen failures
    assert study["phases"]["completed"] == 10 and study["phases"]["screen_failed"] == 2
    assert [(c["cohort"], c["places"], c["filled"]) for c in study["cohorts"]] == [
        ("1e6_per_kg", 6, 6), ("1e8_flat", 6, 4)]
    store = build_app(db).store
    events = list(store.read_all())
    loaded = [e for e in events if e.type == "ProtocolLoaded" and e.payload["version"] == 102]
    assert len(loaded) == 1 and loaded[0].payload["content"] == protocol_variant(12)
    variant = load_protocol_text(loaded[0].payload["content"], "variant")
    assert variant.cohorts == builtin_protocol(2).with_cap(12).cohorts
    amended = [e.payload for e in events if e.type == "ProtocolAmended"]
    assert {k: v for k, v in amended[-1].items() if k != "preview"} == {
        "version": 102, "from_version": 2}
    # the cap and the cohorts change: the admin reviewed the preview (docs/amendments.md)
    assert amended[-1]["preview"]["reviewed"] is True and amended[-1]["preview"]["changes"] > 0
    # enrolment orders 7..10 under version 102: cohort, consent and infusion agree with it
    places = [e.payload for e in events if e.type == "EnrolmentPlaceTaken"]
    assert sorted(p["order"] for p in places) == list(range(1, 11))
    amendment = next(e.position for e in events if e.type == "ProtocolAmended"
                     and e.payload["version"] == 102)
    for place in places:
        if place["order"] <= 6:
            continue
        assert place["cohort"] == variant.cohort_for(place["order"]).code
        subject = place["subject"]
        _, shown, _ = _cli(db, "status", subject)
        assert shown["phase"] == "completed" and shown["cohort"] == place["cohort"]
        assert shown["enrolment_order"] == place["order"]
        history = list(store.read_stream(subject))
        assert history[0].position > amendment
        assert {e.payload["protocol_version"] for e in history
                if "protocol_version" in e.payload} == {102}
        assert not any(e.type == "SubjectReconsented" for e in history)
        # copied through the executor by the admin (CopySubjects, a demo study's only)
        assert {(e.actor, e.role) for e in history} == {("ada", "admin")}
    _, deviations, _ = _cli(db, "deviations")
    assert [(d["subject"], d["kind"]) for d in deviations] == [
        ("S-002", "visit_out_of_window")]
    assert _cli(db, "audit", "verify")[0] == 0


def test_fewer_subjects_than_the_story_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'few.db'}"
    status, data, _ = _demo(db, "--subjects", "5")
    assert status == 2 and "--subjects" in data["error"]
    assert not (tmp_path / "few.db").exists()


def test_a_uri_form_sqlite_url_is_the_same_file(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    assert run(["--db", f"sqlite:///{real}", "--password-stdin", "init", "--admin", "ada"],
               stdout=io.StringIO(), stderr=io.StringIO(), environ={},
               stdin=io.StringIO("correct-horse-battery\n")) == 0
    before = real.read_bytes()
    status, data, _ = _demo(f"sqlite:///file:{real}?uri=true", "--replace", "--no-reports")
    assert status == 1 and data["rule"] == "not_a_demo_database"
    assert real.read_bytes() == before
