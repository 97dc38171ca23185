"""The auditor's commands end to end through the CLI (`cli.app.run` in-process): the trail of a
subject with corrections (text, --json, --csv), `--as-of`, the whole log as resumable JSON lines
in bounded memory, replay at a moment, diff between two moments, and verify/seal over every
stream (`study` and `reminders-*` included).

The study is built through the real command handlers with a fake clock that also stamps
`recorded_at` (noon at the site, 04:00 UTC, on each day below), so moments can be named:

    S-001 consent 2025-01-06, enrolled 2025-01-09, leukapheresis 2025-01-13, released
    2025-01-26, lymphodepletion 2025-01-31..2025-02-02, infusion (D0) 2025-02-05;
    CRS grade 2 recorded 2025-02-06, causality 2025-02-07, weight corrected 2025-02-08,
    CRS grade corrected to 3 on 2025-02-09; S-002 consents 2025-02-10 (screening).
"""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from events.envelope import NewEvent
from events.schema import upgrade
from events.store import AppendContext, StreamAppend
from projections.audit_trail import CSV_COLUMNS
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    SITE,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.bootstrap import build_app
from workflow.commands import messages as M

TRAIL_KEYS = {"position", "stream", "version", "type", "actor", "role", "recorded_at",
              "occurred_at", "reason", "changes", "payload"}
VISIT_KEYS = ("visit", "target_date", "window_start", "window_end", "status", "done_on")
STATUS_KEYS = ("phase", "days_in_phase", "study_day", "cohort", "next_step")


# --- running the CLI -----------------------------------------------------------------------


def call(db: str, *argv: str, stdout: Any = None) -> tuple[int, str, str]:
    from tests.support.auth import run_cli

    out, err = stdout or io.StringIO(), io.StringIO()
    status = int(run_cli(["--db", db, *argv], stdout=out, stderr=err,
                     environ=None))
    return status, out.getvalue() if stdout is None else "", err.getvalue()


def query(db: str, *argv: str) -> Any:
    status, out, err = call(db, "--json", *argv)
    assert status == 0, (argv, out, err)
    return json.loads(out)


def lines(db: str, *argv: str) -> list[dict[str, Any]]:
    status, out, err = call(db, *argv)
    assert status == 0, (argv, out, err)
    assert out == "" or out.endswith("\n")
    return [json.loads(line) for line in out.splitlines()]  # every line parses on its own


# --- the study -----------------------------------------------------------------------------


@dataclass
class Trial:
    db: str
    vitals: int  # position of S-001's vitals form
    crs: int  # position of the CRS adverse event
    weight_fix: int  # position of the weight correction
    grade_fix: int  # position of the CRS grade correction


def build(url: str) -> Trial:
    clock = FakeClock("2025-01-01T04:00:00+00:00")
    flow = new_study(url, clock, recorded_by_clock=True,
                     people=((COORDINATOR, "coordinator", SITE),
                             (INVESTIGATOR, "investigator", SITE)))
    through_infusion(flow, "S-001", date(2025, 1, 6), clock)
    vitals = flow.subject("S-001").forms_of("vitals")[0].position

    def at(day: int) -> None:
        on_day(clock, date(2025, 2, day))

    at(6)
    crs = flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        # graded by hand (no CRS signs recorded), so a correction of the grade alone stands
        "term=Cytokine release syndrome", "category=crs", "onset_date=2025-02-06", "grade=2"),
        date(2025, 2, 6))
    ).result.positions[0]
    at(7)
    flow.send(INVESTIGATOR, M.RecordForm("S-001", "causality", (
        f"ae_position={crs}", "relatedness=probable"), date(2025, 2, 7)))
    at(8)
    weight_fix = flow.send(COORDINATOR, M.CorrectRecord(
        "S-001", vitals, ("weight_kg=58.5",), "transcription error")).result.positions[0]
    at(9)
    grade_fix = flow.send(COORDINATOR, M.CorrectRecord(
        "S-001", crs, ("grade=3",), "reassessed by the investigator")).result.positions[0]
    screen_eligible(flow, "S-002", date(2025, 2, 10), clock=clock)
    return Trial(url, vitals, crs, weight_fix, grade_fix)


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Trial:
    """One SQLite study for the tests that only read it."""
    return build(f"sqlite:///{tmp_path_factory.mktemp('audit') / 'trialflow.db'}")


def trail(db: str, stream: str, *options: str) -> list[dict[str, Any]]:
    document = query(db, "audit", "log", stream, *options)
    assert document["stream"] == stream
    events: list[dict[str, Any]] = document["events"]
    return events


def head(db: str) -> int:
    return build_app(db).store.last_position()


# --- 1. the trail of a subject -------------------------------------------------------------


def test_a_correction_shows_old_and_new_with_reason_next_to_the_original(db_url: str) -> None:
    s = build(db_url)
    events = trail(s.db, "S-001")
    assert all(set(e) >= TRAIL_KEYS for e in events)
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert [e["position"] for e in events] == sorted(e["position"] for e in events)
    by_position = {e["position"]: e for e in events}

    original = by_position[s.crs]
    assert (original["type"], original["actor"], original["role"], original["reason"]) == (
        "FormRecorded", COORDINATOR, "coordinator", None)
    assert original["occurred_at"] == "2025-02-06T00:00:00+08:00"
    assert original["recorded_at"] == "2025-02-06T04:00:00.000000Z"
    assert {"form": "adverse_event", "field": "grade", "old": None, "new": 2,
            "target_position": None} in original["changes"]
    assert original["payload"]["values"]["grade"] == 2  # the original is never rewritten

    correction = by_position[s.grade_fix]
    assert (correction["type"], correction["actor"], correction["role"]) == (
        "FormCorrected", COORDINATOR, "coordinator")
    assert correction["reason"] == "reassessed by the investigator"
    assert correction["recorded_at"] == "2025-02-09T04:00:00.000000Z"
    assert correction["changes"] == [{"form": "adverse_event", "field": "grade", "old": 2,
                                      "new": 3, "target_position": s.crs}]
    assert by_position[s.weight_fix]["changes"] == [{
        "form": "vitals", "field": "weight_kg", "old": 58.0, "new": 58.5,
        "target_position": s.vitals}]
    phase = next(e for e in events if e["type"] == "PhaseChanged")
    assert phase["changes"] == [] and phase["payload"]["to"] == "cell_collection"

    status, out, err = call(s.db, "audit", "log", "S-001")
    assert status == 0 and err == ""
    rows = out.splitlines()
    fixed = next(r for r in rows if r.startswith(f"{s.grade_fix} "))
    assert "cora (coordinator)" in fixed and f"FormCorrected of @{s.crs}" in fixed
    assert "adverse_event.grade: 2 → 3" in fixed and "reassessed by the investigator" in fixed
    original_row = next(r for r in rows if r.startswith(f"{s.crs} "))
    assert "adverse_event:" in original_row and "FormRecorded" in original_row
    assert any("grade=2" in r for r in rows[rows.index(original_row):][:4])


def test_as_of_limits_the_trail(trial: Trial) -> None:
    db = trial.db
    every = trail(db, "S-001")
    assert every[-1]["position"] == trial.grade_fix
    upto = trail(db, "S-001", "--as-of", f"@{trial.crs}")
    assert upto == [e for e in every if e["position"] <= trial.crs]
    assert upto[-1]["position"] == trial.crs
    # an ISO time: what had been recorded by then (no offset means UTC)
    before_fix = trail(db, "S-001", "--as-of", "2025-02-09T03:59:59")
    assert before_fix[-1]["position"] == trial.weight_fix
    assert "FormCorrected" in {e["type"] for e in before_fix}
    at_fix = trail(db, "S-001", "--as-of", "2025-02-09T12:00:00+08:00")
    assert at_fix[-1]["position"] == trial.grade_fix
    assert trail(db, "S-001", "--as-of", "2024-12-31T00:00:00Z") == []
    status, out, _ = call(db, "audit", "log", "S-001", "--as-of", f"@{trial.crs}")
    assert status == 0 and f"as of @{trial.crs}: {len(upto)} events" in out
    assert "→ 3" not in out
    status, out, _ = call(db, "--json", "audit", "log", "S-001", "--as-of", "yesterday")
    assert status == 2 and json.loads(out)["detail"] == {"field": "as_of"}


def test_csv_parses_back_one_row_per_change(trial: Trial, tmp_path: Path) -> None:
    db = trial.db
    target = tmp_path / "trail.csv"
    status, out, _ = call(db, "audit", "log", "S-001", "--csv", str(target))
    events = trail(db, "S-001")
    expected_rows = sum(max(1, len(e["changes"])) for e in events)
    assert status == 0 and out == (f"Wrote {expected_rows} rows ({len(events)} events of "
                                   f"S-001) to {target}.\n")
    with target.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == expected_rows
    assert sorted({int(r["position"]) for r in rows}) == [e["position"] for e in events]
    (fix,) = [r for r in rows if int(r["position"]) == trial.grade_fix]
    assert {k: fix[k] for k in ("type", "actor", "role", "reason", "form", "field", "old", "new",
                                "target_position")} == {
        "type": "FormCorrected", "actor": COORDINATOR, "role": "coordinator",
        "reason": "reassessed by the investigator", "form": "adverse_event", "field": "grade",
        "old": "2", "new": "3", "target_position": str(trial.crs)}
    crs_rows = [r for r in rows if int(r["position"]) == trial.crs]
    assert {r["field"] for r in crs_rows} >= {"term", "grade", "onset_date"}
    assert next(r for r in crs_rows if r["field"] == "term")["new"] == "Cytokine release syndrome"
    phase_rows = [r for r in rows if r["type"] == "PhaseChanged"]
    assert len(phase_rows) == 4 and all(r["field"] == "" for r in phase_rows)  # one row each
    assert json.loads(phase_rows[0]["payload"])["to"] == "cell_collection"
    # `-` writes the same CSV to stdout
    status, out, _ = call(db, "audit", "log", "S-001", "--csv", "-")
    assert status == 0 and list(csv.DictReader(io.StringIO(out))) == rows


def test_any_stream_study_and_reminders(db_url: str) -> None:
    s = build(db_url)
    status, out, err = call(s.db, "--user", "scheduler", "--json", "scheduler", "tick",
                            "--now", "2025-02-10T04:00:00Z")
    assert status == 0, (out, err)
    reminders = trail(s.db, "reminders-S-001")
    assert reminders and {e["stream"] for e in reminders} == {"reminders-S-001"}
    assert "ReminderIssued" in {e["type"] for e in reminders}
    assert {(e["actor"], e["role"]) for e in reminders} == {("scheduler", "scheduler")}
    study = trail(s.db, "study")
    assert [e["type"] for e in study[:2]] == ["StudyInitialised", "UserAdded"]
    assert {"form": None} not in [e["changes"] for e in study]
    status, out, _ = call(s.db, "audit", "log", "reminders-S-001")
    assert status == 0 and "scheduler (scheduler)" in out and "ReminderIssued" in out


def test_usage_errors_exit_2(trial: Trial) -> None:
    for argv in (["audit", "log"], ["audit", "log", "S-001", "--all"],
                 ["audit", "log", "S-001", "--after", "3"],
                 ["audit", "log", "--all", "--csv", "x.csv"],
                 ["audit", "log", "not a stream"], ["audit", "replay"],
                 ["audit", "diff", "@20"]):
        status, out, _ = call(trial.db, "--json", *argv)
        assert status == 2, argv
        assert set(json.loads(out)) == {"error", "rule", "detail"}, argv


# --- 2. the whole log as JSON lines --------------------------------------------------------


def test_all_jsonl_resumes_exactly_after_a_position(db_url: str) -> None:
    s = build(db_url)
    last = head(s.db)
    full = lines(s.db, "audit", "log", "--all", "--jsonl")
    assert [e["position"] for e in full] == list(range(1, last + 1))
    assert all(set(e) >= TRAIL_KEYS for e in full)
    assert {e["stream"] for e in full} == {"study", "S-001", "S-002"}
    assert [e for e in full if e["stream"] == "S-001"] == trail(s.db, "S-001")
    for n in (0, 1, s.crs, last - 1, last):
        resumed = lines(s.db, "audit", "log", "--all", "--jsonl", "--after", str(n))
        assert resumed == full[n:], n
    # --json with --all still means JSON lines (not one document)
    assert lines(s.db, "--json", "audit", "log", "--all") == full
    bounded = lines(s.db, "audit", "log", "--all", "--jsonl", "--after", "10", "--as-of",
                    f"@{s.crs}")
    assert [e["position"] for e in bounded] == list(range(11, s.crs + 1))


class Sink(io.TextIOBase):
    """stdout that keeps nothing but counts (so the test measures the command, not a buffer)."""

    def __init__(self) -> None:
        self.lines = 0
        self.last = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        if text.strip():
            self.last = text.rstrip("\n").rsplit("\n", 1)[-1]  # the last line written
        return len(text)


def fill(url: str, count: int) -> None:
    """`count` form events over 50 subject streams, appended 1,000 at a time."""
    app = build_app(url)
    upgrade(app.engine)
    context = AppendContext(actor=COORDINATOR, role="coordinator", site=SITE)
    for start in range(0, count, 1000):
        appends = [StreamAppend(f"S-{k:03d}", None, [
            NewEvent("FormRecorded", {"form": "vitals", "on": "2025-01-06", "visit": None,
                                      "values": {"weight_kg": 58 + i % 7, "height_cm": 162,
                                                 "note": f"entry {i:06d}" + "x" * 80}})
            for i in range(start + k, min(start + 1000, count), 50)]) for k in range(50)]
        app.store.append_streams([a for a in appends if a.events], context)
    assert app.store.last_position() == count


def peak_of_whole_log(url: str, count: int) -> int:
    sink = Sink()
    tracemalloc.start()
    try:
        status, _, err = call(url, "audit", "log", "--all", "--jsonl", stdout=sink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 0, err
    assert sink.lines == count
    assert json.loads(sink.last)["position"] == count
    return peak


@pytest.mark.slow
def test_all_jsonl_streams_in_bounded_memory(tmp_path: Path) -> None:
    small, large = f"sqlite:///{tmp_path / 'small.db'}", f"sqlite:///{tmp_path / 'large.db'}"
    fill(small, 2_000)
    fill(large, 20_000)
    peak_of_whole_log(small, 2_000)  # warm up: imports and first-use caches
    small_peak = peak_of_whole_log(small, 2_000)
    large_peak = peak_of_whole_log(large, 20_000)
    # ten times the events, the same peak (one batch of 1,000 events and its lines); a command
    # that collected the log would need about ten times as much
    assert large_peak < 1.3 * small_peak, (small_peak, large_peak)


# --- 3. replay -----------------------------------------------------------------------------


def read_models(db: str) -> dict[str, Any]:
    """The projections' checkpoints and row counts (None while a table does not exist)."""
    engine = build_app(db).engine
    names = ["projection_checkpoints", "rm_subjects", "rm_visits"]
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for name in names:
            if not inspect(conn).has_table(name):
                found[name] = None
            elif name == "projection_checkpoints":
                found[name] = sorted(tuple(r) for r in conn.execute(text(
                    "SELECT name, position FROM projection_checkpoints")))
            else:
                found[name] = conn.execute(text(f"SELECT count(*) FROM {name}")).scalar()
    return found


def assert_replay_matches_queries(db: str, as_of: str, now: str) -> dict[str, Any]:
    replayed = query(db, "audit", "replay", "--as-of", as_of)
    assert replayed["at"] == now
    at = ("--as-of", as_of, "--now", now)
    subjects = {r["subject"]: r for r in replayed["subjects"]}
    visits = query(db, "visits", *at)
    assert sorted(subjects) == sorted({v["subject"] for v in visits})
    for name, row in subjects.items():
        status = query(db, "status", name, *at)
        assert {k: row[k] for k in STATUS_KEYS} == {k: status[k] for k in STATUS_KEYS}, name
        assert row["visits"] == [{k: v[k] for k in VISIT_KEYS} for v in visits
                                 if v["subject"] == name], name
        assert row["eligibility"] == query(db, "eligibility", name, *at)["overall"], name
        windows = query(db, "ae", "windows", name, *at)
        assert row["safety_window"] == (
            {k: windows["windows"][0][k] for k in row["safety_window"]}
            if windows["windows"] else None), name
        assert [a["position"] for a in row["adverse_events"]] == [
            a["position"] for a in query(db, "ae", "list", name, "--as-of", as_of)], name
    study = query(db, "status", *at)
    assert replayed["study"] == study
    return replayed


def test_replay_at_a_moment_equals_status_and_visits_then(db_url: str) -> None:
    s = build(db_url)
    before = read_models(s.db)
    # D5 at the site, noon: S-001 in follow-up with its CRS (grade 3 since the correction)
    replayed = assert_replay_matches_queries(s.db, "2025-02-10T04:00:00Z",
                                             "2025-02-10T04:00:00Z")
    one = {r["subject"]: r for r in replayed["subjects"]}["S-001"]
    assert (one["phase"], one["study_day"]) == ("follow_up", 5)
    assert one["adverse_events"][0]["grade"] == 3
    assert {v["visit"]: v["status"] for v in one["visits"]}["D1"] == "overdue"
    assert one["safety_window"]["state"] == "open"
    # @N: the clock is the recorded time of event N (the CRS grade was still 2 then)
    replayed = assert_replay_matches_queries(s.db, f"@{s.crs}", "2025-02-06T04:00:00Z")
    assert [r["subject"] for r in replayed["subjects"]] == ["S-001"]
    assert replayed["subjects"][0]["adverse_events"][0]["grade"] == 2
    assert replayed["position"] == s.crs
    # screening, before enrolment
    replayed = assert_replay_matches_queries(s.db, "2025-01-07T00:00:00Z",
                                             "2025-01-07T00:00:00Z")
    assert replayed["subjects"][0]["phase"] == "screening"
    # no table was read or written by the replays (the queries above fold in memory too)
    assert read_models(s.db) == before


def test_replay_text_and_empty_moments(trial: Trial) -> None:
    status, out, _ = call(trial.db, "audit", "replay", "--as-of", f"@{trial.crs}")
    assert status == 0
    assert out.startswith(f"As of @{trial.crs} (position {trial.crs}, clock "
                          "2025-02-06T04:00:00Z)")
    assert any(line.split()[:3] == ["S-001", "follow_up", "1"] for line in out.splitlines())
    assert any(line.split()[:2] == ["S-001", "D1"] and "due" in line
               for line in out.splitlines())
    assert query(trial.db, "audit", "replay", "--as-of", "@0")["subjects"] == []
    early = query(trial.db, "audit", "replay", "--as-of", "2020-01-01")
    assert (early["position"], early["at"], early["subjects"]) == (0, "2020-01-01T00:00:00Z",
                                                                   [])


# --- 4. diff -------------------------------------------------------------------------------


def test_diff_lists_a_phase_change_and_a_corrected_ae_grade(db_url: str) -> None:
    s = build(db_url)
    everything = lines(s.db, "audit", "log", "--all", "--jsonl")

    def between(first: int, last: int) -> dict[str, Any]:
        types: dict[str, int] = {}
        for e in everything[first:last]:
            types[e["type"]] = types.get(e["type"], 0) + 1
        return {"count": last - first, "types": dict(sorted(types.items()))}

    # enrolment: screening -> cell_collection (2025-01-09), leukapheresis (2025-01-13)
    d = query(s.db, "audit", "diff", "2025-01-08T12:00:00Z", "2025-01-14T00:00:00Z")
    (one,) = d["subjects"]
    assert one["subject"] == "S-001" and not one["new_subject"]
    assert one["phase"] == {"from": "screening", "to": "cell_collection"}
    assert {v["visit"]: (v["from"], v["to"]) for v in one["visits"]}["screening"] == (
        "due", "done")
    assert d["events"] == between(d["from"]["position"], d["to"]["position"])
    assert d["events"]["types"]["PhaseChanged"] == 1
    assert d["study_events"] == {"count": 1, "types": {"EnrolmentPlaceTaken": 1}}
    assert one["events"]["count"] == d["events"]["count"] - 1

    # the CRS grade corrected from 2 to 3 (2025-02-09) and S-002 consented (2025-02-10)
    d = query(s.db, "audit", "diff", f"@{s.weight_fix}", "2025-02-10T04:00:00Z")
    subjects = {x["subject"]: x for x in d["subjects"]}
    one = subjects["S-001"]
    assert one["phase"] is None
    assert one["adverse_events"] == {"added": [], "changed": [{
        "position": s.crs, "term": "Cytokine release syndrome",
        "changes": {"grade": {"from": 2, "to": 3}}}]}
    assert one["events"] == {"count": 1, "types": {"FormCorrected": 1}}
    assert subjects["S-002"]["new_subject"] and subjects["S-002"]["phase"] == {
        "from": None, "to": "screening"}
    assert d["events"] == between(s.weight_fix, head(s.db))

    status, out, _ = call(s.db, "audit", "diff", f"@{s.weight_fix}", "2025-02-10T04:00:00Z")
    assert status == 0
    assert f"AE @{s.crs} changed (Cytokine release syndrome): grade 2 → 3" in out
    assert "S-002 (new)" in out
    status, out, _ = call(s.db, "audit", "diff", "2025-01-08T12:00:00Z", "2025-01-14")
    assert status == 0 and "phase: screening → cell_collection" in out

    status, out, _ = call(s.db, "--json", "audit", "diff", "@40", "@20")
    assert status == 2 and "earlier" in json.loads(out)["error"]


def test_diff_of_a_moment_with_itself_is_empty(trial: Trial) -> None:
    d = query(trial.db, "audit", "diff", f"@{trial.crs}", f"@{trial.crs}")
    assert d["subjects"] == [] and d["events"] == {"count": 0, "types": {}}


# --- 5. verify and seal over every stream --------------------------------------------------


def tamper(db: str, sql: str) -> None:
    """Edit the log behind the store's back, the way tests/contract does: switch the
    append-only triggers off first."""
    engine = build_app(db).engine
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for trigger in ("events_refuse_update", "events_refuse_delete"):
                conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
        else:
            conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER USER")
        conn.exec_driver_sql(sql)


@pytest.mark.parametrize("stream", ["reminders-S-001", "study"])
def test_verify_and_seal_cover_study_and_reminder_streams(db_url: str, stream: str,
                                                          tmp_path: Path) -> None:
    s = build(db_url)
    status, out, err = call(s.db, "--user", "scheduler", "scheduler", "tick", "--now",
                            "2025-02-10T04:00:00Z")
    assert status == 0, (out, err)
    key = tmp_path / "seal.key"
    assert call(s.db, "audit", "keygen", "--out", str(key))[0] == 0
    status, out, _ = call(s.db, "audit", "seal", "--key", str(key))
    seal = json.loads(out)
    assert status == 0 and {"study", "S-001", "S-002", "reminders-S-001"} <= set(seal["streams"])
    assert seal["streams"][stream]["version"] >= 2
    verified = query(s.db, "audit", "verify")
    assert (verified["events"], verified["position"]) == (head(s.db), head(s.db))
    assert verified["streams"] == len(seal["streams"])

    tamper(s.db, "UPDATE events SET payload = '{\"tampered\":true}' "
                 f"WHERE stream_id = '{stream}' AND version = 2")
    status, out, _ = call(s.db, "--json", "audit", "verify")
    assert status == 4
    assert json.loads(out)["detail"] == {"stream": stream, "version": 2}
    assert call(s.db, "audit", "seal", "--key", str(key))[0] == 4
