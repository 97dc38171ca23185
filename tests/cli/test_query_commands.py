"""The query commands end to end through the CLI: JSON contracts (docs/design.md "Command-line
contract"), time computed at query time (`--now`), `--as-of` and `--on`, filters, projections
status and rebuild, and errors.

The study is built through the real command handlers with a fake clock that also stamps
`recorded_at` (so `--as-of TIME` can be asked about clinical-looking times); later writes go
through the CLI itself with the real clock. Every date below follows from:

    consent 2025-01-06, enrolled 2025-01-09, leukapheresis 2025-01-13, released 2025-01-26,
    lymphodepletion 2025-01-31..2025-02-02, infusion (D0) 2025-02-05 10:00+08:00 at PKU3
    (Asia/Shanghai, UTC+8, no daylight saving).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    SITE,
    new_study,
    screen_eligible,
    through_infusion,
)
from workflow.bootstrap import build_app

START = date(2025, 1, 6)
D0 = "2025-02-05"
NOON_D5 = "2025-02-10T04:00:00Z"  # 12:00 at the site on 2025-02-10 (D5)
SUBJECT_KEYS = {"subject", "phase", "days_in_phase", "study_day", "cohort", "next_step"}
STUDY_KEYS = {"phases", "enrolled", "cap", "cohorts", "open_safety_windows", "overdue_visits",
              "overdue_reports"}
VISIT_KEYS = {"subject", "visit", "target_date", "window_start", "window_end", "status",
              "done_on"}
AE_KEYS = {"subject", "position", "term", "onset_date", "study_day", "grade", "serious",
           "relatedness", "in_safety_window", "crs_grade", "icans_grade"}
FOLLOW_UP = ["D1", "D4", "D7", "D10", "D14", "D21", "D28", "D60", "D90", "D180", "D270",
             "D360"]


# --- running the CLI -----------------------------------------------------------------------


def call(db: str, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], out, err)
    return status, out.getvalue(), err.getvalue()


def run_cli(argv: list[str], out: io.StringIO, err: io.StringIO) -> int:
    from tests.support.auth import run_cli as authenticated

    return authenticated(argv, stdout=out, stderr=err)


def query(db: str, *argv: str) -> Any:
    """A read command with --json: exit 0 and stdout exactly one JSON document."""
    status, out, err = call(db, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)  # raises on anything but exactly one document


def write(db: str, user: str, *argv: str) -> dict[str, Any]:
    status, out, err = call(db, "--user", user, "--json", *argv)
    assert status == 0, (argv, out, err)
    body: dict[str, Any] = json.loads(out)
    return body


def head(db: str) -> int:
    return build_app(db).store.last_position()


def lags(db: str) -> dict[str, int | None]:
    return {p["name"]: p["lag"] for p in query(db, "projections", "status")}


def by_visit(rows: list[dict[str, Any]], subject: str = "S-001") -> dict[str, dict[str, Any]]:
    return {r["visit"]: r for r in rows if r["subject"] == subject}


def audit_positions(db: str, subject: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = query(db, "audit", "log", subject)["events"]
    return events


def position_of(db: str, subject: str, type_: str, form: str | None = None) -> int:
    for event in audit_positions(db, subject):
        if event["type"] == type_ and (form is None or event["payload"].get("form") == form):
            return int(event["position"])
    raise AssertionError(f"no {type_} {form or ''} in {subject}")


# --- the study -----------------------------------------------------------------------------


@dataclass
class Study:
    db: str
    aes: dict[str, int] = field(default_factory=dict)  # name -> position


def build(url: str, *, adverse_events: bool = True, second_subject: bool = True) -> Study:
    """S-001 infused on D0 2025-02-05; S-002 consented 2025-02-06 (screening); three AEs of
    S-001 recorded through the CLI."""
    clock = FakeClock("2025-01-01T00:00:00+00:00")
    flow = new_study(url, clock, recorded_by_clock=True,
                     people=((COORDINATOR, "coordinator", SITE),
                             (INVESTIGATOR, "investigator", SITE)))
    assert through_infusion(flow, "S-001", START, clock).isoformat() == D0
    if second_subject:
        screen_eligible(flow, "S-002", date(2025, 2, 6), clock=clock)
    study = Study(url)
    if adverse_events:
        study.aes["crs"] = record_ae(url, [
            "term=Cytokine release syndrome", "category=crs", "onset_date=2025-02-06",
            "grade=2", "serious_criteria=hospitalisation",
            "awareness_at=2025-02-06T20:00:00+08:00", "temperature_c=39.2",
            "hypotension=no_vasopressors", "hypoxia=low_flow"], "2025-02-06")
        study.aes["icans"] = record_ae(url, [
            "term=ICANS", "category=icans", "onset_date=2025-02-09", "grade=2",
            "ice_score=5"], "2025-02-09")
        study.aes["infection"] = record_ae(url, [
            "term=Upper respiratory infection", "category=infection",
            "onset_date=2025-03-08", "grade=1"], "2025-03-08")
        write(url, INVESTIGATOR, "record", "S-001", "causality",
              f"ae_position={study.aes['crs']}", "relatedness=probable", "--on", "2025-02-07")
    return study


def record_ae(db: str, fields: list[str], on: str) -> int:
    body = write(db, COORDINATOR, "record", "S-001", "adverse_event", *fields, "--on", on)
    (position,) = body["positions"]
    return int(position)


# --- 1. JSON contracts ---------------------------------------------------------------------


def test_json_contracts_of_every_query(db_url: str) -> None:
    s = build(db_url)
    db = s.db

    study = query(db, "status", "--now", NOON_D5)
    assert set(study) >= STUDY_KEYS
    assert study["phases"] == {"screening": 1, "cell_collection": 0, "lymphodepletion": 0,
                               "infusion": 0, "follow_up": 1, "completed": 0,
                               "screen_failed": 0, "off_study": 0}
    assert (study["enrolled"], study["cap"]) == (1, 6)
    assert study["cohorts"] == [{"cohort": "1e6_per_kg", "places": 3, "filled": 1},
                                {"cohort": "1e8_flat", "places": 3, "filled": 0}]
    assert study["open_safety_windows"] == ["S-001"]
    assert study["overdue_visits"] == [{"subject": "S-001", "visit": "D1",
                                        "window_end": "2025-02-06"}]
    assert study["overdue_reports"] == [{"subject": "S-001", "ae_position": s.aes["crs"],
                                         "clock": "sae_report",
                                         "due_at": "2025-02-07T20:00:00+08:00"}]

    subject = query(db, "status", "S-001", "--now", NOON_D5)
    assert set(subject) >= SUBJECT_KEYS
    assert {k: subject[k] for k in SUBJECT_KEYS} == {
        "subject": "S-001", "phase": "follow_up", "days_in_phase": 5, "study_day": 5,
        "cohort": "1e6_per_kg", "next_step": (  # the first task (workflow/tasks.py)
            f"send the initial report of the serious AE at position {s.aes['crs']} "
            "(sae_report clock due 2025-02-07T20:00:00+08:00, overdue by 64.0 hours) and "
            "record it")}
    assert subject["next_task"]["kind"] == "sae_report"
    screening = query(db, "status", "S-002", "--now", NOON_D5)
    assert (screening["phase"], screening["days_in_phase"], screening["study_day"],
            screening["cohort"]) == ("screening", 4, None, None)

    visits = query(db, "visits", "--now", NOON_D5)
    assert all(set(v) >= VISIT_KEYS for v in visits)
    mine = by_visit(visits)
    assert list(mine) == ["screening", "D0", *FOLLOW_UP]
    assert {k: mine["D7"][k] for k in VISIT_KEYS} == {
        "subject": "S-001", "visit": "D7", "target_date": "2025-02-12",
        "window_start": "2025-02-11", "window_end": "2025-02-13", "status": "upcoming",
        "done_on": None}
    assert (mine["D0"]["status"], mine["D0"]["done_on"]) == ("done", D0)
    assert (mine["D360"]["target_date"], mine["D360"]["window_start"],
            mine["D360"]["window_end"]) == ("2026-01-31", "2026-01-17", "2026-02-14")
    assert [v["visit"] for v in visits if v["subject"] == "S-002"] == ["screening"]

    aes = query(db, "ae", "list")
    assert all(set(a) >= AE_KEYS for a in aes)
    assert {k: aes[0][k] for k in AE_KEYS} == {
        "subject": "S-001", "position": s.aes["crs"], "term": "Cytokine release syndrome",
        "onset_date": "2025-02-06", "study_day": 1, "grade": 2, "serious": True,
        "relatedness": "probable", "in_safety_window": True, "crs_grade": 2,
        "icans_grade": None}
    assert [a["position"] for a in aes] == [s.aes["crs"], s.aes["icans"], s.aes["infection"]]

    endpoints = query(db, "endpoints", "S-001")
    assert endpoints["subject"] == "S-001"
    assert set(endpoints["sledai2k"]) >= {"baseline", "D90", "D180", "D360", "change_D360",
                                          "improved_D360"}
    assert set(endpoints["lldas"]) >= {"D180", "D360"}
    assert set(endpoints["renal_response"]) >= {"D180", "D360"}
    assert set(endpoints["persistence"]) >= {
        "peak_copies_per_ug", "peak_day", "last_detectable_day", "detectable_D90",
        "detectable_D180", "detectable_D360"}
    # baseline: arthritis 4 + proteinuria 4 + low_complement 2 + increased_dna_binding 2
    assert endpoints["sledai2k"]["baseline"] == 12
    assert endpoints["sledai2k"]["D90"] is None
    assert "D90 window (2025-04-29 to 2025-05-13)" in endpoints["missing"]["sledai2k.D90"]
    assert endpoints["persistence"]["peak_copies_per_ug"] is None
    assert "cart_persistence" in endpoints["missing"]["persistence.peak_copies_per_ug"]
    for section in ("sledai2k", "lldas", "renal_response", "persistence"):
        for key, value in endpoints[section].items():
            if value is None:
                assert endpoints["missing"].get(f"{section}.{key}"), (section, key)
    every = query(db, "endpoints")
    assert [e["subject"] for e in every] == ["S-001", "S-002"]

    assert query(db, "deviations") == []

    windows = query(db, "ae", "windows", "--now", NOON_D5)
    assert windows["windows"] == [{"subject": "S-001", "d0": D0, "window_start": D0,
                                   "window_end": "2025-03-05", "state": "open",
                                   "days_left": 23}]
    (clock,) = windows["sae_clocks"]
    assert (clock["ae_position"], clock["clock"], clock["due_at"], clock["state"]) == (
        s.aes["crs"], "sae_report", "2025-02-07T20:00:00+08:00", "overdue")
    assert windows["primary_endpoint"]["events"] == 1  # the related CRS only

    status, out, _ = call(db, "--json", "visits", "S-404")
    body = json.loads(out)
    assert status == 2 and set(body) == {"error", "rule", "detail"} and "S-404" in body["error"]


def test_text_output_is_readable(sqlite_url: str) -> None:
    s = build(sqlite_url)
    status, out, _ = call(s.db, "status", "--now", NOON_D5)
    assert status == 0
    assert "Enrolled: 1 of 6" in out and "Overdue visits: S-001 D1" in out
    assert f"S-001 sae_report (AE {s.aes['crs']})" in out
    status, out, _ = call(s.db, "visits", "S-001", "--now", NOON_D5)
    assert status == 0
    assert any(line.split()[:2] == ["S-001", "D7"] and "2025-02-11..2025-02-13" in line
               and "upcoming" in line for line in out.splitlines())


# --- 2. time is computed at query time -----------------------------------------------------


def test_due_overdue_and_clocks_follow_now(db_url: str) -> None:
    s = build(db_url)
    db = s.db
    before = head(db)

    def d7(now: str) -> dict[str, Any]:
        return by_visit(query(db, "visits", "S-001", "--now", now))["D7"]

    # D7: window 2025-02-11..2025-02-13 in the site's calendar (UTC+8)
    assert d7(NOON_D5)["status"] == "upcoming"
    assert d7("2025-02-10T15:59:59Z")["status"] == "upcoming"  # 23:59:59 on 02-10 local
    due = d7("2025-02-10T16:30:00Z")  # 00:30 on 02-11 at the site, still 02-10 in UTC
    assert (due["status"], due["days_left"]) == ("due", 2)
    last = d7("2025-02-13T15:59:59Z")
    assert (last["status"], last["days_left"]) == ("due", 0)
    late = d7("2025-02-13T16:00:00Z")
    assert (late["status"], late["days_left"]) == ("overdue", None)

    def window(now: str) -> dict[str, Any]:
        (row,) = query(db, "ae", "windows", "--now", now)["windows"]
        return {"state": row["state"], "days_left": row["days_left"]}

    assert window("2025-02-04T15:59:59Z") == {"state": "not_started", "days_left": None}
    assert window(NOON_D5) == {"state": "open", "days_left": 23}
    assert window("2025-03-05T15:59:59Z") == {"state": "open", "days_left": 0}
    assert window("2025-03-05T16:00:00Z") == {"state": "closed", "days_left": None}
    assert query(db, "status", "--now", "2025-03-05T16:00:00Z")["open_safety_windows"] == []

    def sae(now: str) -> dict[str, Any]:
        (row,) = query(db, "ae", "windows", "--now", now)["sae_clocks"]
        clock: dict[str, Any] = row
        return clock

    on_time, too_late = "2025-02-07T10:00:00+08:00", "2025-02-08T10:00:00+08:00"
    assert (sae(on_time)["state"], sae(on_time)["hours_left"]) == ("due", 10.0)
    assert (sae(too_late)["state"], sae(too_late)["hours_left"]) == ("overdue", -14.0)
    assert query(db, "status", "--now", on_time)["overdue_reports"] == []
    assert [r["ae_position"] for r in query(db, "status", "--now", too_late)[
        "overdue_reports"]] == [s.aes["crs"]]
    assert head(db) == before, "a query appended events"

    report = write(db, COORDINATOR, "record", "S-001", "sae_report",
                   f"ae_position={s.aes['crs']}", "report_kind=initial",
                   "sent_at=2025-02-08T11:00:00+08:00", "--on", "2025-02-08")
    (report_position,) = report["positions"]
    for now in (on_time, too_late, "2025-06-01T00:00:00Z"):
        stopped = sae(now)
        assert (stopped["state"], stopped["stopped_at"], stopped["stopped_by"],
                stopped["late"], stopped["hours_left"]) == (
            "stopped", "2025-02-08T11:00:00+08:00", report_position, True, None)
    assert query(db, "status", "--now", too_late)["overdue_reports"] == []
    assert head(db) == report_position


def test_safety_clocks_outlive_the_phase(sqlite_url: str) -> None:
    s = build(sqlite_url, second_subject=False)
    db = s.db
    write(db, INVESTIGATOR, "off-study", "S-001", "--reason", "investigator_decision")
    later = "2030-01-01T00:00:00Z"
    study = query(db, "status", "--now", later)
    assert study["phases"]["off_study"] == 1
    assert [(r["subject"], r["ae_position"], r["clock"]) for r in study[
        "overdue_reports"]] == [("S-001", s.aes["crs"], "sae_report")]
    (clock,) = query(db, "ae", "windows", "S-001", "--now", later)["sae_clocks"]
    assert clock["state"] == "overdue"
    write(db, COORDINATOR, "record", "S-001", "sae_report", f"ae_position={s.aes['crs']}",
          "report_kind=initial", "sent_at=2025-02-07T18:00:00+08:00", "--on", "2025-02-07")
    (clock,) = query(db, "ae", "windows", "S-001", "--now", later)["sae_clocks"]
    assert (clock["state"], clock["late"]) == ("stopped", False)
    assert query(db, "status", "--now", later)["overdue_reports"] == []


def test_queries_write_nothing(sqlite_url: str) -> None:
    s = build(sqlite_url)
    db = s.db
    query(db, "status")  # the first query catches the read models up
    before_head = head(db)
    before = query(db, "projections", "status")
    for argv in (["status"], ["status", "S-001"], ["eligibility", "S-002"], ["visits"],
                 ["visits", "--due"], ["deviations"], ["endpoints", "S-001"], ["ae", "list"],
                 ["ae", "windows"], ["status", "--as-of", "@20"], ["visits", "--on", D0]):
        query(db, *argv, "--now", NOON_D5)
    assert head(db) == before_head
    after = query(db, "projections", "status")
    assert [(p["name"], p["checkpoint"], p["head"]) for p in after] == [
        (p["name"], p["checkpoint"], p["head"]) for p in before]


# --- 3. --as-of and --on -------------------------------------------------------------------


def test_as_of_shows_what_the_system_showed_then(db_url: str) -> None:
    s = build(db_url, adverse_events=False, second_subject=False)
    db = s.db
    infusion = position_of(db, "S-001", "InfusionGiven")
    before = f"@{infusion - 1}"

    then = query(db, "visits", "S-001", "--as-of", before, "--now", NOON_D5)
    assert [v["visit"] for v in then] == ["screening", "D0"]
    # then, the infusion window (2025-02-04..2025-02-09) had closed without an infusion
    assert by_visit(then)["D0"]["status"] == "overdue"
    now = query(db, "visits", "S-001", "--now", NOON_D5)
    assert [v["visit"] for v in now] == ["screening", "D0", *FOLLOW_UP]

    status_then = query(db, "status", "S-001", "--as-of", before, "--now", NOON_D5)
    assert (status_then["phase"], status_then["study_day"]) == ("infusion", None)
    assert query(db, "status", "--as-of", before)["position"] == infusion - 1
    assert query(db, "ae", "windows", "--as-of", before)["windows"] == []
    # recorded times: the fake clock stamped the infusion at 2025-02-05T04:00:00Z
    by_time = query(db, "visits", "S-001", "--as-of", "2025-02-05T03:59:59Z")
    assert [v["visit"] for v in by_time] == ["screening", "D0"]
    by_time = query(db, "visits", "S-001", "--as-of", "2025-02-05T04:00:00Z")
    assert len(by_time) == 2 + len(FOLLOW_UP)
    for moment, rows in (("2025-02-05T11:59:59+08:00", 2), ("2025-02-05T12:00:00+08:00", 14),
                         ("2025-02-05T03:59:59", 2), ("2025-02-05T04:00:00", 14)):
        assert len(query(db, "visits", "S-001", "--as-of", moment)) == rows, moment


def test_a_correction_changes_every_read_model_and_as_of_shows_the_old_values(
        db_url: str) -> None:
    s = build(db_url, second_subject=False)
    db = s.db
    crs = s.aes["crs"]
    activity = position_of(db, "S-001", "FormRecorded", "disease_activity")
    assert query(db, "eligibility", "S-001")["overall"] == "eligible"
    before = head(db)

    corrected = write(db, COORDINATOR, "correct", "S-001", str(crs), "grade=3",
                      "hypoxia=high_flow", "awareness_at=2025-02-07T08:00:00+08:00",
                      "--reason", "Source document: grade 3 (oxygen by mask)")
    (grade_fix,) = corrected["positions"]
    write(db, COORDINATOR, "correct", "S-001", str(activity), "arthritis=no",
          "--reason", "Arthritis not confirmed on examination")
    old = f"@{before}"

    def crs_row(*argv: str) -> dict[str, Any]:
        return next(a for a in query(db, "ae", "list", "S-001", *argv) if a["position"] == crs)

    assert (crs_row("--as-of", old)["grade"], crs_row("--as-of", old)["corrected"]) == (
        2, False)
    assert (crs_row()["grade"], crs_row()["corrected"]) == (3, True)
    assert crs_row("--as-of", f"@{grade_fix}")["grade"] == 3
    # --on: a correction belongs to the record it corrects, so that day shows the fix
    assert crs_row("--on", "2025-02-06")["grade"] == 3
    then, now = (query(db, "ae", "windows", *argv, "--now", NOON_D5)
                 for argv in (["--as-of", old], []))
    assert (then["primary_endpoint"]["by_grade"]["2"],
            then["primary_endpoint"]["by_grade"]["3"]) == (1, 0)
    assert (now["primary_endpoint"]["by_grade"]["2"],
            now["primary_endpoint"]["by_grade"]["3"]) == (0, 1)
    # the SAE clock runs from the corrected awareness
    assert [c["due_at"] for c in then["sae_clocks"]] == ["2025-02-07T20:00:00+08:00"]
    assert [c["due_at"] for c in now["sae_clocks"]] == ["2025-02-08T08:00:00+08:00"]

    # the screening SLEDAI-2K loses arthritis (4): baseline 12 -> 8, below the threshold 10
    assert query(db, "endpoints", "S-001", "--as-of", old)["sledai2k"]["baseline"] == 12
    assert query(db, "endpoints", "S-001")["sledai2k"]["baseline"] == 8

    def criterion(*argv: str) -> str:
        found = query(db, "eligibility", "S-001", *argv)["criteria"]
        return str(next(c["status"] for c in found if c["code"] == "sledai2k_screening"))

    # eligibility stays as the investigator confirmed it; the corrected screening score is a
    # post-enrolment finding for the investigator and the monitor
    assert criterion("--as-of", old) == "met"
    assert criterion() == "met"
    findings = query(db, "eligibility", "S-001")["post_enrolment_findings"]
    assert {(f["criterion"], f["position"]) for f in findings
            if f["criterion"] == "sledai2k_screening"} == {("sledai2k_screening", activity)}

    trail = audit_positions(db, "S-001")
    original = next(e for e in trail if e["position"] == crs)
    assert (original["type"], original["payload"]["values"]["grade"]) == ("FormRecorded", 2)
    fix = next(e for e in trail if e["position"] == grade_fix)
    assert fix["type"] == "FormCorrected"
    assert fix["payload"]["target_position"] == crs
    # oxygen by mask is ASTCT high-flow hypoxia, CRS grade 3 (the grade follows the signs)
    assert fix["payload"]["changes"] == {"grade": 3, "hypoxia": "high_flow",
                                         "awareness_at": "2025-02-07T08:00:00+08:00"}
    assert fix["payload"]["previous"] == {"grade": 2, "hypoxia": "low_flow",
                                          "awareness_at": "2025-02-06T20:00:00+08:00"}
    assert fix["reason"] == "Source document: grade 3 (oxygen by mask)"


def test_on_shows_what_was_true_that_clinical_day(sqlite_url: str) -> None:
    s = build(sqlite_url, second_subject=False)
    db = s.db

    lympho = query(db, "status", "S-001", "--on", "2025-01-28")
    assert (lympho["phase"], lympho["days_in_phase"], lympho["study_day"],
            lympho["cohort"]) == ("lymphodepletion", 2, None, "1e6_per_kg")
    day2 = query(db, "status", "S-001", "--on", "2025-02-07")
    assert (day2["phase"], day2["study_day"]) == ("follow_up", 2)

    assert [v["visit"] for v in query(db, "visits", "S-001", "--on", "2025-02-03")] == [
        "screening", "D0"]
    assert by_visit(query(db, "visits", "--on", "2025-02-03"))["D0"]["status"] == "upcoming"
    assert query(db, "ae", "list", "--on", "2025-02-05") == []
    assert [a["position"] for a in query(db, "ae", "list", "--on", "2025-02-06")] == [
        s.aes["crs"]]
    assert query(db, "ae", "list", "--on", "2025-02-06")[0]["relatedness"] == "unassessed"
    assert query(db, "ae", "list", "--on", "2025-02-07")[0]["relatedness"] == "probable"

    # the SAE clock at the end of the day asked about (due 2025-02-07 20:00 at the site)
    assert query(db, "ae", "windows", "--on", "2025-02-06")["sae_clocks"][0]["state"] == "due"
    assert query(db, "ae", "windows", "--on", "2025-02-07")["sae_clocks"][0][
        "state"] == "overdue"

    write(db, COORDINATOR, "visit", "S-001", "D7", "--done", "--on", "2025-02-12")
    assert by_visit(query(db, "visits", "--on", "2025-02-11"))["D7"]["status"] == "due"
    on_day = by_visit(query(db, "visits", "--on", "2025-02-12"))["D7"]
    assert (on_day["status"], on_day["done_on"]) == ("done", "2025-02-12")
    assert by_visit(query(db, "visits", "--on", "2025-02-11"))["D4"]["status"] == "overdue"
    assert by_visit(query(db, "visits", "--on", "2025-02-12"))["D4"]["status"] == "missed"


def test_study_status_on_a_day_before_enrolment_counts_no_enrolment(sqlite_url: str) -> None:
    s = build(sqlite_url, adverse_events=False, second_subject=False)
    # 2025-01-07: S-001 consented (01-06) but not yet enrolled (eligibility confirmed 01-09)
    day = query(s.db, "status", "--on", "2025-01-07")
    assert day["phases"]["screening"] == 1 and day["phases"]["cell_collection"] == 0
    assert day["enrolled"] == 0
    assert [c["filled"] for c in day["cohorts"]] == [0, 0]


# --- 4. filters, deviations, adverse events ------------------------------------------------


def test_visit_filters(sqlite_url: str) -> None:
    s = build(sqlite_url, adverse_events=False)
    db = s.db

    def pairs(*flags: str) -> set[tuple[str, str]]:
        return {(v["subject"], v["visit"]) for v in query(db, "visits", *flags, "--now",
                                                          NOON_D5)}

    # 2025-02-10 at the site: D1 (02-06) is overdue, D4 (02-08..02-10) due, S-002 screening
    # (consented 02-06, window to 03-06) due
    assert pairs("--due") == {("S-001", "D4"), ("S-002", "screening")}
    assert pairs("--overdue") == {("S-001", "D1")}
    assert pairs("--due", "--overdue") == {("S-001", "D1"), ("S-001", "D4"),
                                           ("S-002", "screening")}
    assert {(v["visit"], v["status"]) for v in query(db, "visits", "S-001", "--overdue",
                                                     "--now", NOON_D5)} == {("D1", "overdue")}
    later = {v["visit"] for v in query(db, "visits", "S-001", "--overdue", "--now",
                                       "2025-02-14T04:00:00Z")}
    assert later == {"D1", "D4", "D7"}


def test_a_visit_done_outside_its_window_is_a_deviation(db_url: str) -> None:
    s = build(db_url, adverse_events=False)
    db = s.db
    done = write(db, COORDINATOR, "visit", "S-001", "D7", "--done", "--on", "2025-02-15")
    (position,) = done["positions"]

    (deviation,) = query(db, "deviations")
    assert {k: deviation[k] for k in ("subject", "kind", "position", "visit", "on",
                                      "protocol_version")} == {
        "subject": "S-001", "kind": "visit_out_of_window", "position": position,
        "visit": "D7", "on": "2025-02-15", "protocol_version": 2}
    assert "2025-02-11 to 2025-02-13" in deviation["detail"]
    assert "protocol version 2" in deviation["detail"]
    assert query(db, "deviations", "S-001") == [deviation]
    assert query(db, "deviations", "S-002") == []
    assert query(db, "deviations", "--as-of", f"@{position - 1}") == []

    visits = by_visit(query(db, "visits", "S-001", "--now", "2025-02-16T04:00:00Z"))
    assert (visits["D7"]["status"], visits["D7"]["done_on"],
            visits["D7"]["outside_window"]) == ("done", "2025-02-15", True)
    assert [visits[v]["status"] for v in ("D1", "D4", "D10")] == ["missed", "missed", "due"]


def test_next_step_skips_visits_missed_because_a_later_one_is_done(sqlite_url: str) -> None:
    s = build(sqlite_url, adverse_events=False, second_subject=False)
    write(s.db, COORDINATOR, "visit", "S-001", "D7", "--done", "--on", "2025-02-12")
    visits = by_visit(query(s.db, "visits", "S-001", "--now", "2025-02-13T04:00:00Z"))
    assert visits["D1"]["status"] == "missed"
    step = query(s.db, "status", "S-001", "--now", "2025-02-13T04:00:00Z")["next_step"]
    assert step.startswith("record visit D10 (target 2025-02-15, window 2025-02-14..")


def test_ae_list_flags_and_grades(sqlite_url: str) -> None:
    s = build(sqlite_url, second_subject=False)
    db = s.db
    before_d0 = record_ae(db, ["term=Nausea", "category=other", "onset_date=2025-02-03",
                               "grade=1"], "2025-02-03")
    masked = record_ae(db, ["term=CRS after tocilizumab", "category=crs",
                            "onset_date=2025-03-05", "grade=3", "fever_masked",
                            "hypotension=one_vasopressor", "hypoxia=low_flow"], "2025-03-05")
    no_temperature = record_ae(db, ["term=CRS suspected", "category=crs",
                                    "onset_date=2025-03-06", "grade=1"], "2025-03-06")
    rows = {a["position"]: a for a in query(db, "ae", "list", "S-001")}

    def pick(position: int) -> tuple[Any, ...]:
        r = rows[position]
        return (r["study_day"], r["in_safety_window"], r["crs_grade"], r["icans_grade"],
                r["serious"], r["relatedness"])

    assert pick(s.aes["crs"]) == (1, True, 2, None, True, "probable")  # 39.2 °C + low flow
    assert pick(s.aes["icans"]) == (4, True, None, 2, False, "unassessed")  # ICE 5
    assert pick(s.aes["infection"]) == (31, False, None, None, False, "unassessed")
    assert pick(before_d0) == (-2, False, None, None, False, "unassessed")
    assert pick(masked) == (28, True, 3, None, False, "unassessed")  # D28: last window day
    assert pick(no_temperature) == (29, False, None, None, False, "unassessed")
    assert [a["position"] for a in query(db, "ae", "list")] == sorted(rows)


# --- 5. projections ------------------------------------------------------------------------


QUERIES = [
    ["status"], ["eligibility", "S-001"], ["visits"], ["visits", "S-001", "--overdue"],
    ["deviations"], ["endpoints", "S-001"], ["ae", "list"], ["ae", "windows", "S-001"],
    ["status", "S-001"],
]


@pytest.mark.parametrize("argv", QUERIES)
def test_projections_have_no_lag_after_a_query(sqlite_url: str, argv: list[str]) -> None:
    s = build(sqlite_url, second_subject=False)
    db = s.db
    query(db, "status")
    write(db, COORDINATOR, "record", "S-001", "vitals", "weight_kg=57", "--on", "2025-02-10")
    assert set(lags(db).values()) == {1}
    query(db, *argv, "--now", NOON_D5)
    after = query(db, "projections", "status")
    assert {p["lag"] for p in after} == {0}
    assert {p["checkpoint"] for p in after} == {head(db)}


def test_rebuild_gives_identical_query_output(db_url: str) -> None:
    s = build(db_url)
    db = s.db
    write(db, COORDINATOR, "visit", "S-001", "D7", "--done", "--on", "2025-02-15")
    probes = [["status"], ["status", "S-001"], ["visits"], ["visits", "--due"],
              ["deviations"], ["endpoints"], ["ae", "list"], ["ae", "windows"],
              ["eligibility", "S-002"]]

    def snapshot() -> list[Any]:
        return [query(db, *argv, "--now", NOON_D5) for argv in probes]

    first = snapshot()
    assert first[4] and first[6]  # a deviation and adverse events to rebuild
    everything = query(db, "projections", "rebuild")
    assert everything["head"] == head(db) and everything["subjects"] == 2
    assert "visits" in everything["rebuilt"] and "endpoints" in everything["rebuilt"]
    assert snapshot() == first
    one = query(db, "projections", "rebuild", "visits")
    assert one["rebuilt"] == ["visits"]
    assert snapshot() == first
    assert {p["lag"] for p in query(db, "projections", "status")} == {0}


def test_rebuild_of_an_unknown_projection_is_refused(sqlite_url: str) -> None:
    s = build(sqlite_url, adverse_events=False, second_subject=False)
    db = s.db
    query(db, "status")
    before = query(db, "projections", "status")
    status, out, err = call(db, "projections", "rebuild", "vists")
    assert (status, out) == (2, "")
    (line,) = err.strip().splitlines()
    assert "'vists'" in line and "visits" in line and line.count(". ") == 0
    status, out, _ = call(db, "--json", "projections", "rebuild", "vists")
    assert status == 2 and "'vists'" in json.loads(out)["error"]
    assert query(db, "projections", "status") == before


# --- 6. errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["status", "S-404"], ["eligibility", "S-404"], ["visits", "S-404"],
    ["deviations", "S-404"], ["endpoints", "S-404"], ["ae", "list", "S-404"],
    ["ae", "windows", "S-404"], ["visits", "S-001", "--as-of", "@12"],
    ["status", "S-001", "--as-of", "@12"],
])
def test_an_unknown_subject_exits_2_naming_it(sqlite_url: str, argv: list[str]) -> None:
    s = build(sqlite_url, adverse_events=False, second_subject=False)
    subject = next(a for a in argv if a.startswith("S-"))
    assert position_of(s.db, "S-001", "SubjectConsented") == 13  # @12: not consented yet
    before = head(s.db)
    status, out, err = call(s.db, *argv)
    assert (status, out) == (2, "")
    assert err.startswith("Error: ") and subject in err
    status, out, _ = call(s.db, "--json", *argv)
    body = json.loads(out)
    assert status == 2 and subject in body["error"] and body["detail"]["subject"] == subject
    assert head(s.db) == before


@pytest.mark.parametrize("as_of", ["yesterday", "@x", "@-1", "@", "2025-13-01T00:00:00Z"])
def test_a_bad_as_of_exits_2(sqlite_url: str, as_of: str) -> None:
    s = build(sqlite_url, adverse_events=False, second_subject=False)
    for argv in (["status"], ["visits", "S-001"], ["ae", "list"]):
        status, out, err = call(s.db, *argv, "--as-of", as_of)
        assert (status, out) == (2, ""), (argv, as_of)
        assert "--as-of" in err and as_of in err
        status, out, _ = call(s.db, "--json", *argv, "--as-of", as_of)
        assert status == 2 and json.loads(out)["detail"]["field"] == "as_of"


def test_now_without_offset_is_handled_alike_by_every_query(sqlite_url: str) -> None:
    s = build(sqlite_url, second_subject=False)
    naive = "2025-02-10T12:00:00"
    codes = {tuple(argv): call(s.db, *argv, "--now", naive)[0]
             for argv in (["visits"], ["ae", "windows"], ["status"])}
    assert len(set(codes.values())) == 1, codes
