"""`trialflow void` and `trialflow correct` of procedures through the CLI entry point (issue 15,
"every record mendable"): exit codes (docs/cli.md "Exit codes": 1 refused by a rule, 2 bad
input), the sentences that name what is refused, the `--json` document, nothing written on a
refusal, and a signature on a voided record shown as stale by `trialflow signatures`.

The study is built once through the executor on a fake clock that ends before today (the CLI
decides on the real clock, and every date typed below is in the past):
- S-001, infused 100 days ago, with its D90 visit done and the three forms D90 requires;
- S-002, given its three lymphodepletion days (phase infusion), not yet infused.
Each test runs on its own copy of that SQLite file.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from events.envelope import RecordedEvent
from tests.support.auth import run_cli
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    new_study,
    on_day,
    through_infusion,
    to_lymphodepletion,
)
from workflow import event_types as T
from workflow.bootstrap import build_app
from workflow.commands import messages as M

D90_FORMS = (
    ("disease_activity", ("pga=0.5", "new_activity=no", "hemolytic_anemia=no", "gi_activity=no",
                          "maintenance_tolerated=yes")),
    ("labs", ("upcr_g_per_g=0.35", "egfr_ml_min=95")),
    ("cart_persistence", ("copies_per_ug=180",)),
)


@dataclass(frozen=True)
class Study:
    """A copy of the study and the positions and dates the tests name."""

    url: str
    eligibility_on: date  # S-001's eligibility confirmation
    leukapheresis: int  # S-001's
    collected_on: date
    release: int  # S-001's product release
    released_on: date
    labs: int  # S-001's D90 labs form
    cart_persistence: int  # S-001's D90 CAR-T persistence form
    phase_change: int  # a PhaseChanged event of S-001 (no record)
    first_dose: int  # S-002's regimen day D-5
    last_dose: int  # S-002's regimen day D-3


def _events(url: str, subject: str) -> list[RecordedEvent]:
    app = build_app(url)
    try:
        return list(app.store.read_stream(subject))
    finally:
        app.engine.dispose()


def head(url: str) -> int:
    """The last position of the log (a refusal must leave it where it was)."""
    app = build_app(url)
    try:
        return app.store.last_position()
    finally:
        app.engine.dispose()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Study:
    path = tmp_path_factory.mktemp("mending") / "study.db"
    url = f"sqlite:///{path}"
    today = datetime.now(UTC).date()
    start = today - timedelta(days=130)
    clock = FakeClock(datetime.combine(start, datetime.min.time(), UTC))
    flow = new_study(url, clock)
    d0 = through_infusion(flow, "S-001", start, clock)
    d90 = d0 + timedelta(days=90)  # ten days ago: its window (±7 days) has closed
    on_day(clock, d90)
    recorded = {form: flow.send(COORDINATOR, M.RecordForm("S-001", form, tokens, d90, "D90"))
                .result.positions[0] for form, tokens in D90_FORMS}
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D90", "done", d90))
    start_2 = today - timedelta(days=40)
    to_lymphodepletion(flow, "S-002", start_2, clock)
    d0_2 = start_2 + timedelta(days=30)
    doses = []
    for offset, cyclophosphamide in ((-5, 0.0), (-4, 0.0), (-3, 1620.0)):
        day = d0_2 + timedelta(days=offset)
        on_day(clock, day)
        doses.append(flow.send(COORDINATOR, M.GiveLymphodepletion(
            "S-002", day, 40.5, cyclophosphamide)).result.positions[0])
    s1 = flow.subject("S-001")
    assert flow.subject("S-002").phase == "infusion" and s1.phase == "follow_up"
    flow.executor.engine.dispose()
    events = _events(url, "S-001")
    (collection,) = [e for e in events if e.type == T.LEUKAPHERESIS_RECORDED]
    (release,) = [e for e in events if e.type == T.PRODUCT_RELEASED]
    phase_change = next(e for e in events if e.type == T.PHASE_CHANGED)
    assert s1.eligibility_confirmed_on is not None
    return Study(url, s1.eligibility_confirmed_on, collection.position,
                 date.fromisoformat(collection.payload["collected_on"]), release.position,
                 start + timedelta(days=20), recorded["labs"], recorded["cart_persistence"],
                 phase_change.position, doses[0], doses[-1])


@pytest.fixture
def study(built: Study, tmp_path: Path) -> Study:
    """A private copy of the built study (a test may append to it)."""
    target = tmp_path / "trialflow.db"
    shutil.copyfile(built.url.removeprefix("sqlite:///"), target)
    return replace(built, url=f"sqlite:///{target}")


def call(db: str, *argv: str, user: str | None = COORDINATOR) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *(["--user", user] if user else []), *argv], stdout=out,
                     stderr=err)
    return status, out.getvalue(), err.getvalue()


def refused(study: Study, expected: int, *argv: str) -> dict[str, Any]:
    """Run a write that must be refused with `expected` (with --json): nothing is written;
    returns the error document."""
    before = head(study.url)
    status, out, err = call(study.url, "--json", *argv)
    assert status == expected, (argv, out, err)
    assert head(study.url) == before, argv
    error: dict[str, Any] = json.loads(out)
    return error


def refused_text(study: Study, expected: int, *argv: str) -> str:
    """The same without --json: the one sentence on stderr (nothing on stdout)."""
    before = head(study.url)
    status, out, err = call(study.url, *argv)
    assert status == expected, (argv, out, err)
    assert head(study.url) == before, argv
    assert out == ""
    return err


def voids(study: Study, subject: str) -> list[RecordedEvent]:
    return [e for e in _events(study.url, subject) if e.type == T.RECORD_VOIDED]


# --- void: a reason, a record, once -------------------------------------------------------


def test_a_void_needs_a_reason_and_writes_nothing_without_one(study: Study) -> None:
    labs = str(study.labs)
    err = refused_text(study, 2, "void", "S-001", labs)
    assert "--reason" in err, err
    error = refused(study, 2, "void", "S-001", labs)
    assert "--reason" in error["error"] and error["rule"] == "usage"
    error = refused(study, 2, "void", "S-001", labs, "--reason", "   ")  # blank: no reason
    assert error["rule"] == "invalid_input" and error["detail"]["field"] == "reason"
    assert voids(study, "S-001") == []

    before = head(study.url)
    status, out, err = call(study.url, "void", "S-001", labs, "--reason",
                            "labs of another patient")
    assert status == 0, (out, err)
    assert out.startswith(f"Record at position {labs} of S-001 voided. Positions: "), out
    (void,) = voids(study, "S-001")
    assert void.position == before + 1 == head(study.url)
    assert void.payload == {"target_position": study.labs, "form": "labs"}
    assert void.reason == "labs of another patient"
    assert (void.actor, void.role) == (COORDINATOR, "coordinator")


def test_an_unknown_position_is_bad_input_naming_subject_and_position(study: Study) -> None:
    for position in (999_999, study.phase_change, study.first_dose):  # nothing; no record;
        error = refused(study, 2, "void", "S-001", str(position),  # S-002's record
                        "--reason", "entered in error")
        assert error["rule"] == "invalid_input" and error["detail"]["field"] == "position"
        message = error["error"]
        assert "S-001" in message and f"position {position}" in message, message
        assert message.count(". ") == 0 and message.endswith("."), message  # one sentence
    err = refused_text(study, 2, "void", "S-001", "999999", "--reason", "entered in error")
    assert len(err.strip().splitlines()) == 1, err
    assert "S-001" in err and "position 999999" in err, err
    assert voids(study, "S-001") == voids(study, "S-002") == []


def test_voiding_twice_is_refused_naming_the_void(study: Study) -> None:
    labs = str(study.labs)
    status, out, _ = call(study.url, "--json", "void", "S-001", labs, "--reason", "wrong patient")
    assert status == 0, out
    (void_position,) = json.loads(out)["positions"]
    error = refused(study, 1, "void", "S-001", labs, "--reason", "again")
    assert error["rule"] == "record_voided"
    assert f"position {labs}" in error["error"], error
    assert f"voided at position {void_position}" in error["error"], error
    # nor can the voided record be corrected: record it anew instead
    error = refused(study, 1, "correct", "S-001", labs, "egfr_ml_min=90", "--reason", "typo")
    assert error["rule"] == "record_voided"
    assert len(voids(study, "S-001")) == 1


def test_a_leukapheresis_a_release_rests_on_cannot_be_voided(study: Study) -> None:
    error = refused(study, 1, "void", "S-001", str(study.leukapheresis), "--reason",
                    "wrong bag")
    assert error["rule"] == "record_has_dependants"
    message = error["error"]
    assert f"leukapheresis at position {study.leukapheresis}" in message, message
    assert f"product release at position {study.release}" in message, message
    assert str(study.released_on) in message, message
    err = refused_text(study, 1, "void", "S-001", str(study.leukapheresis), "--reason",
                       "wrong bag")
    assert f"product release at position {study.release}" in err, err
    assert voids(study, "S-001") == []


def test_the_consent_and_other_sites_and_roles_cannot_void(study: Study) -> None:
    consent = _events(study.url, "S-001")[0]
    assert consent.type == T.SUBJECT_CONSENTED
    error = refused(study, 1, "void", "S-001", str(consent.position), "--reason", "x")
    assert error["rule"] == "not_voidable" and "trialflow correct" in error["error"]
    labs = str(study.labs)
    for user, rule in (("otto", "site"), ("mona", "role")):
        before = head(study.url)
        status, out, _ = call(study.url, "--json", "void", "S-001", labs, "--reason", "x",
                              user=user)
        assert status == 1, out
        assert json.loads(out)["rule"] == rule
        assert head(study.url) == before
    assert voids(study, "S-001") == []


# --- void: what the document says --------------------------------------------------------


def test_void_json_names_the_record_the_phase_and_no_warnings(study: Study) -> None:
    """Voiding S-002's last regimen day takes the subject back to lymphodepletion."""
    before = head(study.url)
    status, out, err = call(study.url, "--json", "void", "S-002", str(study.last_dose),
                            "--reason", "dose charted for the wrong day")
    assert status == 0, (out, err)
    body = json.loads(out)
    assert {"voided", "form", "phase", "deviations_resolved", "positions"} <= set(body)
    assert (body["subject"], body["voided"], body["form"], body["phase"]) == (
        "S-002", study.last_dose, "lymphodepletion", "lymphodepletion")
    assert "warnings" not in body and body["deviations_resolved"] == []  # no deviation
    assert body["positions"] == [before + 1, before + 2] and body["repeated"] is False
    events = _events(study.url, "S-002")
    void, change = events[-2:]
    assert void.type == T.RECORD_VOIDED and void.reason == "dose charted for the wrong day"
    assert void.payload == {"target_position": study.last_dose, "form": "lymphodepletion"}
    assert change.type == T.PHASE_CHANGED
    assert (change.payload["from"], change.payload["to"], change.payload["trigger"]) == (
        "infusion", "lymphodepletion", "void_last_dose")
    status, out, _ = call(study.url, "--json", "status", "S-002", user=None)
    assert status == 0 and json.loads(out)["phase"] == "lymphodepletion"


def test_a_void_that_leaves_a_done_visit_without_a_required_form_warns(study: Study) -> None:
    status, out, err = call(study.url, "--json", "void", "S-001", str(study.labs),
                            "--reason", "labs of another patient")
    assert status == 0, (out, err)
    body = json.loads(out)
    assert (body["voided"], body["form"], body["phase"]) == (study.labs, "labs", "follow_up")
    (warning,) = body["warnings"]
    for word in ("assessment_missing", "S-001", "D90", "labs"):
        assert word in warning, (word, warning)
    assert "warning:" not in err  # with --json only in the document
    deviations = json.loads(call(study.url, "--json", "deviations", user=None)[1])
    assert [(d["subject"], d["kind"], d["visit"]) for d in deviations] == [
        ("S-001", "assessment_missing", "D90")]

    # without --json the outcome is on stdout and each warning on stderr
    status, out, err = call(study.url, "void", "S-001", str(study.cart_persistence),
                            "--reason", "sample of another patient")
    assert status == 0, (out, err)
    assert out.startswith(f"Record at position {study.cart_persistence} of S-001 voided.")
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "cart_persistence" in warnings[0], err


# --- correct: procedures -------------------------------------------------------------------


def test_a_leukapheresis_dated_before_eligibility_is_refused(study: Study) -> None:
    early = study.eligibility_on - timedelta(days=1)
    argv = ("correct", "S-001", str(study.leukapheresis), f"collected_on={early}",
            "--reason", "date per the apheresis record")
    error = refused(study, 1, *argv)
    assert error["rule"] == "phase_order" and error["detail"]["field"] == "collected_on"
    message = error["error"]
    assert str(early) in message and str(study.eligibility_on) in message, message
    assert "eligibility confirmation" in message, message
    err = refused_text(study, 1, *argv)
    assert str(early) in err and str(study.eligibility_on) in err, err
    assert not [e for e in _events(study.url, "S-001") if e.type == T.FORM_CORRECTED]

    later = study.collected_on + timedelta(days=1)  # still before the release: accepted
    status, out, _ = call(study.url, "--json", "correct", "S-001", str(study.leukapheresis),
                          f"collected_on={later}", "--reason", "date per the apheresis record")
    assert status == 0, out
    body = json.loads(out)
    assert (body["form"], body["changes"], body["previous"]) == (
        "leukapheresis", {"collected_on": str(later)}, {"collected_on": str(study.collected_on)})


def test_a_dose_correction_lists_the_deviation_it_implies_then_resolves(study: Study) -> None:
    dose = str(study.first_dose)
    status, out, _ = call(study.url, "--json", "correct", "S-002", dose, "fludarabine_mg=80",
                          "--reason", "pharmacy record")
    assert status == 0, out
    body = json.loads(out)
    assert body["changes"] == {"fludarabine_mg": 80.0}
    assert body["previous"] == {"fludarabine_mg": 40.5}
    (warning,) = body["warnings"]
    assert "dose_off_regimen" in warning and "fludarabine 80 mg" in warning, warning
    assert body["deviations_resolved"] == []
    status, out, _ = call(study.url, "--json", "correct", "S-002", dose, "fludarabine_mg=40.5",
                          "--reason", "pharmacy record, second page")
    assert status == 0, out
    body = json.loads(out)
    assert "warnings" not in body
    (resolved,) = body["deviations_resolved"]
    assert "fludarabine 80 mg" in resolved, resolved


def test_a_second_leukapheresis_points_to_correct_and_void(study: Study) -> None:
    first = study.leukapheresis
    argv = ("leukapheresis", "S-001", "--on", str(study.collected_on + timedelta(days=1)),
            "--coi-id", "COI-S-001-B")
    error = refused(study, 1, *argv)
    assert error["rule"] == "already_recorded"
    message = error["error"]
    assert f"position {first}" in message and str(study.collected_on) in message, message
    assert f"trialflow correct S-001 {first}" in message, message
    assert f"trialflow void S-001 {first} --reason" in message, message
    err = refused_text(study, 1, *argv)
    assert f"position {first}" in err, err


# --- signatures ------------------------------------------------------------------------------


def test_a_signature_on_a_voided_record_is_shown_stale(study: Study) -> None:
    labs = str(study.labs)
    status, out, err = call(study.url, "sign", "S-001", labs, "--meaning", "authored")
    assert status == 0, (out, err)
    status, out, _ = call(study.url, "--json", "signatures", "S-001", user=None)
    (signature,) = json.loads(out)
    assert (signature["target_position"], signature["state"]) == (study.labs, "valid")

    status, out, _ = call(study.url, "--json", "void", "S-001", labs, "--reason",
                          "labs of another patient")
    assert status == 0, out
    (void_position,) = json.loads(out)["positions"]
    status, out, _ = call(study.url, "--json", "signatures", "S-001", user=None)
    (signature,) = json.loads(out)
    assert signature["state"] == "earlier_version"
    assert signature["superseded_by"] == void_position
    assert signature["corrected_after_signing_by"] == [void_position]
    assert str(void_position) in signature["manifestation"]
    status, out, _ = call(study.url, "signatures", "S-001", user=None)
    assert status == 0
    (row,) = [line for line in out.splitlines() if f"@{labs}" in line]
    assert row.split()[-1] == "earlier_version", out
