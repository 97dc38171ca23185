"""Visit schedule: planned rows from a folded subject, and their state on a given day."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from workflow.protocol import Protocol, builtin_protocol
from workflow.records import Consent
from workflow.schedule import ROW_KEYS, planned_visits, visit_state
from workflow.subject import PhaseRecord, SubjectState

P2 = builtin_protocol(2)
# Version 3 for the tests: D28 ±4 instead of ±2, screening 21 days instead of 28.
P3 = replace(
    P2, version=3, screening_window_days=21,
    visits=tuple(replace(v, window_days=4) if v.code == "D28" else v for v in P2.visits),
)
PROTOCOLS = {2: P2, 3: P3}
CONSENTED = date(2025, 2, 10)
DOSE_DAYS = (date(2025, 3, 23), date(2025, 3, 24), date(2025, 3, 25))  # D-5, D-4, D-3
D0 = date(2025, 3, 28)  # Europe/Berlin: summer time starts on 2025-03-30 (D2)
EXITED_REASON = "consent_withdrawn"
LEAD = 3


def protocol_of(version: int) -> Protocol:
    return PROTOCOLS[version]


def visit(code: str, on: date, status: str = "done", position: int = 100) -> PhaseRecord:
    return PhaseRecord(position, on, {"visit": code, "status": status,
                                      "visit_date": on.isoformat()})


def subject(*, doses: int = 0, infused: bool = False, confirmed: bool = True,
            visits: tuple[PhaseRecord, ...] = (), exited_on: date | None = None,
            version: int = 2) -> SubjectState:
    s = SubjectState("S-001", phase="screening", consent=Consent(
        "S-001", CONSENTED, "ICF-2.0", version, position=1), protocol_version=version,
        protocol_versions=[(1, version)])
    if confirmed:
        s.eligibility_confirmed_on = CONSENTED + timedelta(days=20)
    for index, on in enumerate(DOSE_DAYS[:doses]):
        s.doses.append(PhaseRecord(10 + index, on, {"given_on": on.isoformat(),
                                                    "regimen_day": -5 + index}))
    if infused:
        s.infused_on = D0
        s.infusion = PhaseRecord(20, D0, {"infused_at": "2025-03-28T09:30:00+01:00",
                                          "cells": 1e8, "target_cells": 1e8})
    s.visit_records = {record.payload["visit"]: record for record in visits}
    if exited_on is not None:
        s.exited_on, s.exit_reason = exited_on, EXITED_REASON
    return s


def row_of(s: SubjectState, code: str) -> dict[str, Any]:
    rows = {row["visit"]: row for row in planned_visits(s, protocol_of)}
    return rows[code]


# --- planned_visits: screening ------------------------------------------------------------


def test_no_rows_before_consent() -> None:
    assert planned_visits(SubjectState("S-001"), protocol_of) == []


def test_open_screening_row() -> None:
    rows = planned_visits(subject(confirmed=False), protocol_of)
    assert rows == [{
        "subject": "S-001", "visit": "screening", "anchor": "consent", "target_day": None,
        "target_date": "2025-02-10", "window_start": "2025-02-10", "window_end": "2025-03-10",
        "recorded_status": None, "done_on": None, "missed_reason": None, "missed_note": None,
        "protocol_version": 2,
    }]
    assert tuple(rows[0]) == ROW_KEYS


def test_screening_done_on_confirmation() -> None:
    row = row_of(subject(confirmed=True), "screening")
    assert (row["recorded_status"], row["done_on"], row["missed_reason"]) == (
        "done", "2025-03-02", None)


def test_screening_missed_when_the_subject_exits_before_confirmation() -> None:
    row = row_of(subject(confirmed=False, exited_on=date(2025, 3, 11)), "screening")
    assert (row["recorded_status"], row["done_on"], row["missed_reason"]) == (
        "missed", None, "subject_exited")


def test_screening_stays_done_when_the_subject_exits_later() -> None:
    row = row_of(subject(confirmed=True, doses=1, exited_on=date(2025, 3, 24)), "screening")
    assert row["recorded_status"] == "done"


def test_screening_window_is_the_current_versions() -> None:
    row = row_of(subject(confirmed=False, version=3), "screening")
    assert (row["window_end"], row["protocol_version"]) == ("2025-03-03", 3)


# --- planned_visits: D0 -------------------------------------------------------------------


@pytest.mark.parametrize("doses", [0, 1, 2])
def test_no_infusion_row_before_the_last_dose(doses: int) -> None:
    visits = [row["visit"] for row in planned_visits(subject(doses=doses), protocol_of)]
    assert visits == ["screening"]


def test_infusion_row_after_the_last_dose() -> None:
    row = row_of(subject(doses=3), "D0")
    assert row == {
        "subject": "S-001", "visit": "D0", "anchor": "lymphodepletion", "target_day": 0,
        "target_date": "2025-03-27", "window_start": "2025-03-27", "window_end": "2025-04-01",
        "recorded_status": None, "done_on": None, "missed_reason": None, "missed_note": None,
        "protocol_version": 2,
    }


def test_infusion_row_done_on_the_infusion_date() -> None:
    row = row_of(subject(doses=3, infused=True), "D0")
    assert (row["recorded_status"], row["done_on"]) == ("done", "2025-03-28")


def test_infusion_missed_when_the_subject_goes_off_study_before_it() -> None:
    row = row_of(subject(doses=3, exited_on=date(2025, 3, 26)), "D0")
    assert (row["recorded_status"], row["missed_reason"]) == ("missed", "subject_exited")


# --- planned_visits: follow-up ------------------------------------------------------------


def test_no_follow_up_rows_before_infusion() -> None:
    visits = [row["visit"] for row in planned_visits(subject(doses=3), protocol_of)]
    assert visits == ["screening", "D0"]


def test_follow_up_rows_in_schedule_order_anchored_on_d0() -> None:
    rows = planned_visits(subject(doses=3, infused=True), protocol_of)
    assert [row["visit"] for row in rows] == ["screening", "D0", *P2.visit_codes]
    assert {row["anchor"] for row in rows[2:]} == {"D0"}
    assert [row["target_day"] for row in rows[2:]] == [v.target_day for v in P2.visits]


@pytest.mark.parametrize(("code", "start", "target", "end"), [
    ("D1", "2025-03-29", "2025-03-29", "2025-03-29"),   # ±0
    ("D28", "2025-04-23", "2025-04-25", "2025-04-27"),  # ±2
    ("D360", "2026-03-09", "2026-03-23", "2026-04-06"),  # ±14
])
def test_follow_up_windows_of_the_default_protocol(code: str, start: str, target: str,
                                                   end: str) -> None:
    row = row_of(subject(doses=3, infused=True), code)
    assert (row["window_start"], row["target_date"], row["window_end"]) == (start, target, end)


def test_dates_across_a_dst_change_are_calendar_dates() -> None:
    # D0 on Friday 2025-03-28 in Berlin; clocks go forward on Sunday 2025-03-30 (D2), so
    # D0 to D7 is 167 elapsed hours: counting study days in hours would land on D6.
    berlin = ZoneInfo("Europe/Berlin")
    elapsed = (datetime.combine(date(2025, 4, 4), time(0), berlin)
               - datetime.combine(D0, time(0), berlin).astimezone(UTC))
    assert elapsed == timedelta(hours=167)
    row = row_of(subject(doses=3, infused=True), "D7")
    assert (row["window_start"], row["target_date"], row["window_end"]) == (
        "2025-04-03", "2025-04-04", "2025-04-05")
    assert row_of(subject(doses=3, infused=True), "D4")["window_start"] == "2025-03-31"


def test_recorded_done_and_missed_visits() -> None:
    s = subject(doses=3, infused=True, visits=(
        visit("D1", date(2025, 3, 29)), visit("D4", date(2025, 4, 1), "missed")))
    d1, d4 = row_of(s, "D1"), row_of(s, "D4")
    assert (d1["recorded_status"], d1["done_on"], d1["missed_reason"]) == (
        "done", "2025-03-29", None)
    assert (d4["recorded_status"], d4["done_on"], d4["missed_reason"]) == (
        "missed", None, "recorded")
    assert d4["missed_note"] is None  # recorded before a missed visit needed a reason


def test_a_recorded_miss_shows_the_reason_of_its_event() -> None:
    missed = PhaseRecord(100, date(2025, 4, 1), {"visit": "D4", "status": "missed",
                                                 "visit_date": "2025-04-01"},
                         "subject in hospital")
    row = row_of(subject(doses=3, infused=True, visits=(missed,)), "D4")
    assert (row["recorded_status"], row["missed_reason"], row["missed_note"]) == (
        "missed", "recorded", "subject in hospital")
    implied = row_of(subject(doses=3, infused=True, visits=(visit("D10", date(2025, 4, 7)),)),
                     "D4")
    assert (implied["missed_reason"], implied["missed_note"]) == ("next_visit_done", None)


def test_a_later_visit_done_implies_the_earlier_one_missed() -> None:
    s = subject(doses=3, infused=True, visits=(visit("D10", date(2025, 4, 7)),))
    statuses = {code: (row_of(s, code)["recorded_status"], row_of(s, code)["missed_reason"])
                for code in ("D1", "D7", "D10", "D14")}
    assert statuses == {
        "D1": ("missed", "next_visit_done"), "D7": ("missed", "next_visit_done"),
        "D10": ("done", None), "D14": (None, None),
    }


def test_a_later_visit_recorded_missed_does_not_imply_missed() -> None:
    s = subject(doses=3, infused=True, visits=(visit("D10", date(2025, 4, 7), "missed"),))
    assert row_of(s, "D7")["recorded_status"] is None


@pytest.mark.parametrize(("exited_on", "d60"), [
    (date(2025, 5, 19), ("missed", "subject_exited")),  # the day before D60's window opens
    (date(2025, 5, 20), (None, None)),                   # D60's window opens on the exit day
])
def test_exit_marks_visits_whose_window_starts_after_it_missed(
        exited_on: date, d60: tuple[str | None, str | None]) -> None:
    s = subject(doses=3, infused=True, exited_on=exited_on,
                visits=(visit("D28", date(2025, 4, 25)),))
    row = row_of(s, "D60")
    assert (row["recorded_status"], row["missed_reason"]) == d60
    assert row_of(s, "D360")["missed_reason"] == "subject_exited"
    assert row_of(s, "D28")["recorded_status"] == "done"


def test_follow_up_windows_come_from_the_current_protocol_version() -> None:
    s = subject(doses=3, infused=True, version=3)
    row = row_of(s, "D28")
    assert (row["window_start"], row["window_end"], row["protocol_version"]) == (
        "2025-04-21", "2025-04-29", 3)


def test_rows_are_json_scalars() -> None:
    rows = planned_visits(subject(doses=3, infused=True,
                                  visits=(visit("D1", date(2025, 3, 29)),)), protocol_of)
    assert json.loads(json.dumps(rows)) == rows


# --- visit_state ---------------------------------------------------------------------------


def d28_row(**changes: Any) -> dict[str, Any]:
    return {**row_of(subject(doses=3, infused=True), "D28"), **changes}


@pytest.mark.parametrize(("today", "status", "days_left", "reminder"), [
    ("2025-04-19", "upcoming", None, None),
    ("2025-04-20", "upcoming", None, ("window_opening", "2025-04-20")),
    ("2025-04-22", "upcoming", None, ("window_opening", "2025-04-20")),
    ("2025-04-23", "due", 4, ("due", "2025-04-23")),
    ("2025-04-27", "due", 0, ("due", "2025-04-23")),
    ("2025-04-28", "overdue", None, ("overdue", "2025-04-28")),
    ("2025-06-30", "overdue", None, ("overdue", "2025-04-28")),
])
def test_status_and_reminders_at_the_window_boundaries(
        today: str, status: str, days_left: int | None,
        reminder: tuple[str, str] | None) -> None:
    state = visit_state(d28_row(), date.fromisoformat(today), lead_days=LEAD)
    assert (state["status"], state["days_left"], state["outside_window"]) == (
        status, days_left, False)
    expected = [] if reminder is None else [
        {"kind": reminder[0], "obligation": "visit:D28@2025-04-25", "due_on": reminder[1]}]
    assert state["reminders_due"] == expected


def test_state_keeps_the_row_and_adds_the_day_dependent_keys() -> None:
    row = d28_row()
    state = visit_state(row, date(2025, 4, 24), lead_days=LEAD)
    assert {k: state[k] for k in ROW_KEYS} == row
    assert set(state) == {*ROW_KEYS, "status", "outside_window", "days_left", "reminders_due"}
    assert "status" not in row


def test_no_window_opening_reminder_with_zero_lead() -> None:
    state = visit_state(d28_row(), date(2025, 4, 22), lead_days=0)
    assert (state["status"], state["reminders_due"]) == ("upcoming", [])


@pytest.mark.parametrize(("done_on", "outside"), [
    ("2025-04-22", True), ("2025-04-23", False), ("2025-04-27", False), ("2025-04-28", True),
])
def test_done_visits_inside_and_outside_the_window(done_on: str, outside: bool) -> None:
    state = visit_state(d28_row(recorded_status="done", done_on=done_on), date(2025, 5, 30),
                        lead_days=LEAD)
    assert (state["status"], state["outside_window"], state["days_left"],
            state["reminders_due"]) == ("done", outside, None, [])


def test_missed_visit_has_no_reminder_even_when_its_window_closed() -> None:
    state = visit_state(d28_row(recorded_status="missed", missed_reason="next_visit_done"),
                        date(2025, 5, 30), lead_days=LEAD)
    assert (state["status"], state["reminders_due"]) == ("missed", [])


def test_infusion_row_reminders_name_d0() -> None:
    row = row_of(subject(doses=3), "D0")
    state = visit_state(row, date(2025, 3, 27), lead_days=LEAD)
    assert state["reminders_due"] == [
        {"kind": "due", "obligation": "visit:D0@2025-03-27", "due_on": "2025-03-27"}]
    assert state["days_left"] == 5


@pytest.mark.parametrize(("today", "status", "reminders"), [
    ("2025-03-02", "due", []),  # 8 days before the window's last day
    ("2025-03-03", "due", [{"kind": "screening_expiring", "obligation": "screening:2025-02-10",
                            "due_on": "2025-03-03"}]),  # 7 days before it
    ("2025-03-10", "due", [{"kind": "screening_expiring", "obligation": "screening:2025-02-10",
                            "due_on": "2025-03-03"}]),
    ("2025-03-11", "overdue", []),  # the coordinator records the screen failure
])
def test_screening_expiring_in_the_windows_last_lead_days(
        today: str, status: str, reminders: list[dict[str, str]]) -> None:
    row = row_of(subject(confirmed=False), "screening")
    state = visit_state(row, date.fromisoformat(today), lead_days=7)
    assert (state["status"], state["reminders_due"]) == (status, reminders)


def test_screening_has_no_opening_or_due_reminder() -> None:
    row = row_of(subject(confirmed=False), "screening")
    states = [visit_state(row, CONSENTED + timedelta(days=n), lead_days=7) for n in (-2, 0, 10)]
    assert [s["reminders_due"] for s in states] == [[], [], []]
    assert [s["status"] for s in states] == ["upcoming", "due", "due"]


def test_confirmed_screening_has_no_reminder() -> None:
    row = row_of(subject(confirmed=True), "screening")
    state = visit_state(row, date(2025, 3, 5), lead_days=7)
    assert (state["status"], state["reminders_due"]) == ("done", [])
