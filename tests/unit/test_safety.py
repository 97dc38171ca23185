"""Adverse-event read model: safety window, relatedness, corrections, CRS/ICANS, SAE clocks."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from workflow.errors import InvalidInput
from workflow.protocol import default_protocol
from workflow.records import RecordedForm
from workflow.safety import (
    adverse_events,
    clock_state,
    primary_safety_counts,
    sae_clocks,
    safety_window,
    window_state,
)
from workflow.subject import SubjectState

PROTOCOL = default_protocol()
D0 = date(2025, 3, 1)
CST = timezone(timedelta(hours=8))
AE_KEYS = {
    "subject", "position", "term", "category", "onset_date", "study_day", "grade", "serious",
    "serious_criteria", "expected", "relatedness", "relatedness_position", "related",
    "in_safety_window", "period", "counts_for_primary", "crs_grade", "icans_grade", "outcome",
    "resolved_on", "awareness_at", "sponsor_aware_at", "corrected",
}
CLOCK_KEYS = {
    "subject", "ae_position", "clock", "due_at", "starts_at", "stopped_at", "stopped_by",
    "basis",
}


def day(n: int) -> str:
    return (D0 + timedelta(days=n)).isoformat()


def subject(*forms: RecordedForm, infused_on: date | None = D0, name: str = "S-001",
            phase: str = "follow_up") -> SubjectState:
    state = SubjectState(name, site="PKU3", phase=phase, infused_on=infused_on)
    state.forms = {form.position: form for form in forms}
    return state


def ae(position: int, onset: str = "2025-03-05", grade: int = 2, *,
       corrected_by: tuple[int, ...] = (), **values: Any) -> RecordedForm:
    fields = {"term": "Pyrexia", "category": "other", "onset_date": onset, "grade": grade,
              **values}
    return RecordedForm(position, "S-001", "adverse_event", fields, date.fromisoformat(onset),
                        corrected_by=corrected_by)


def causality(position: int, ae_position: int, relatedness: str, *,
              corrected_by: tuple[int, ...] = ()) -> RecordedForm:
    return RecordedForm(position, "S-001", "causality",
                        {"ae_position": ae_position, "relatedness": relatedness},
                        D0, corrected_by=corrected_by)


def report(position: int, ae_position: int, kind: str, sent_at: str) -> RecordedForm:
    return RecordedForm(position, "S-001", "sae_report",
                        {"ae_position": ae_position, "report_kind": kind, "sent_at": sent_at},
                        D0)


def only_row(state: SubjectState) -> dict[str, Any]:
    rows = adverse_events(state, PROTOCOL)
    assert len(rows) == 1
    return rows[0]


def clocks_by_kind(state: SubjectState) -> dict[str, dict[str, Any]]:
    rows = sae_clocks(state, PROTOCOL)
    by_kind = {row["clock"]: row for row in rows}
    assert len(by_kind) == len(rows)
    return by_kind


# --- safety window ------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "in_window"), [(-1, False), (0, True), (28, True),
                                                    (29, False)])
def test_safety_window_is_d0_to_d28_inclusive(offset: int, in_window: bool) -> None:
    row = only_row(subject(ae(10, onset=day(offset)), causality(11, 10, "possible")))
    assert row["study_day"] == offset
    assert row["in_safety_window"] is in_window
    assert row["counts_for_primary"] is in_window


def test_before_infusion_there_is_no_study_day_and_no_window() -> None:
    state = subject(ae(10, onset="2025-02-20"), causality(11, 10, "definite"), infused_on=None)
    row = only_row(state)
    assert (row["study_day"], row["in_safety_window"], row["counts_for_primary"]) == (
        None, False, False)
    assert row["related"] is True
    assert safety_window(state, PROTOCOL) is None


def test_safety_window_row_gives_calendar_dates_of_d0_and_d28() -> None:
    assert safety_window(subject(), PROTOCOL) == {
        "subject": "S-001", "d0": "2025-03-01", "window_start": "2025-03-01",
        "window_end": "2025-03-29",
    }


@pytest.mark.parametrize(("today", "state", "days_left"), [
    (date(2025, 2, 28), "not_started", None),
    (date(2025, 3, 1), "open", 28),
    (date(2025, 3, 29), "open", 0),
    (date(2025, 3, 30), "closed", None),
])
def test_window_state_by_today(today: date, state: str, days_left: int | None) -> None:
    window = safety_window(subject(), PROTOCOL)
    assert window is not None
    shown = window_state(window, today)
    assert (shown["state"], shown["days_left"]) == (state, days_left)
    assert shown["window_end"] == "2025-03-29"


def test_window_state_refuses_a_datetime_for_today() -> None:
    window = safety_window(subject(), PROTOCOL)
    assert window is not None
    with pytest.raises(InvalidInput):
        window_state(window, datetime(2025, 3, 5, 12, tzinfo=CST))


# --- rows: shape, relatedness, corrections ------------------------------------------------


def test_row_has_exactly_the_contract_keys_and_json_values() -> None:
    row = only_row(subject(ae(10, serious_criteria=["important_medical_event", "hospitalisation"],
                              expected=True, awareness_at="2025-03-05T10:00:00+08:00",
                              outcome="recovering")))
    assert set(row) == AE_KEYS
    assert json.loads(json.dumps(row)) == row
    assert row["serious"] is True
    assert row["serious_criteria"] == ["hospitalisation", "important_medical_event"]
    assert (row["subject"], row["position"], row["term"], row["grade"]) == (
        "S-001", 10, "Pyrexia", 2)
    assert (row["expected"], row["outcome"], row["awareness_at"]) == (
        True, "recovering", "2025-03-05T10:00:00+08:00")


def test_rows_are_in_position_order() -> None:
    rows = adverse_events(subject(ae(30, term="Sepsis"), ae(10), ae(20)), PROTOCOL)
    assert [row["position"] for row in rows] == [10, 20, 30]


def test_latest_causality_by_position_wins() -> None:
    # inserted out of order: the position, not the dict order, decides
    state = subject(ae(10), causality(30, 10, "unlikely"), causality(20, 10, "probable"))
    row = only_row(state)
    assert (row["relatedness"], row["relatedness_position"], row["related"]) == (
        "unlikely", 30, False)
    assert row["counts_for_primary"] is False


def test_unassessed_until_a_causality_names_the_ae() -> None:
    row = only_row(subject(ae(10), causality(11, 99, "definite")))
    assert (row["relatedness"], row["relatedness_position"], row["related"]) == (
        "unassessed", None, False)


@pytest.mark.parametrize(("relatedness", "related"), [
    ("not_related", False), ("unlikely", False), ("possible", True), ("probable", True),
    ("definite", True),
])
def test_related_means_possible_or_more(relatedness: str, related: bool) -> None:
    row = only_row(subject(ae(10), causality(11, 10, relatedness)))
    assert row["related"] is related
    assert row["counts_for_primary"] is related


def test_rows_show_corrected_values() -> None:
    # grade 2 recorded at 10, corrected to 4 by position 40; causality corrected by 41
    state = subject(ae(10, grade=4, corrected_by=(40,)), ae(12, grade=1),
                    causality(11, 10, "not_related", corrected_by=(41,)))
    first, second = adverse_events(state, PROTOCOL)
    assert (first["grade"], first["corrected"]) == (4, True)
    assert (first["relatedness"], first["counts_for_primary"]) == ("not_related", False)
    assert (second["grade"], second["corrected"]) == (1, False)


def test_corrected_onset_moves_the_ae_out_of_the_window() -> None:
    row = only_row(subject(ae(10, onset=day(30), corrected_by=(40,)),
                           causality(11, 10, "definite")))
    assert (row["study_day"], row["in_safety_window"], row["corrected"]) == (30, False, True)


# --- CRS and ICANS grades -----------------------------------------------------------------


@pytest.mark.parametrize(("values", "grade"), [
    ({"category": "crs", "temperature_c": 39.0, "hypotension": "one_vasopressor",
      "hypoxia": "low_flow"}, 3),
    ({"category": "crs", "temperature_c": 38.0}, 1),
    ({"category": "crs", "temperature_c": 37.9}, 0),
    ({"category": "crs", "fever_masked": True, "hypoxia": "positive_pressure"}, 4),
    ({"category": "crs"}, None),  # no inputs: insufficient
    ({"category": "crs", "hypotension": "no_vasopressors"}, None),  # no temperature, not masked
    ({"category": "other", "temperature_c": 38.6, "hypotension": "no_vasopressors"}, 2),
    ({"category": "infection"}, None),  # not applicable
])
def test_crs_grade_from_the_form_inputs(values: dict[str, Any], grade: int | None) -> None:
    assert only_row(subject(ae(10, **values)))["crs_grade"] == grade


@pytest.mark.parametrize(("values", "grade"), [
    ({"category": "icans", "ice_score": 5}, 2),
    ({"category": "icans", "ice_score": 8}, 1),
    ({"category": "icans", "ice_score": 10}, 0),
    ({"category": "icans", "ice_score": 8, "seizure": "prolonged_or_repetitive"}, 4),
    ({"category": "icans", "ice_score": 9, "cerebral_edema": "focal"}, 3),
    ({"category": "icans", "consciousness": "unarousable"}, 4),  # unarousable: ICE 0
    ({"category": "icans", "consciousness": "unarousable", "ice_score": 5}, None),  # refused
    ({"category": "icans", "consciousness": "awakens_to_voice"}, None),  # no ICE score
    ({"category": "other", "ice_score": 2}, 3),
    ({"category": "crs", "temperature_c": 39.0}, None),  # not applicable
])
def test_icans_grade_from_the_form_inputs(values: dict[str, Any], grade: int | None) -> None:
    assert only_row(subject(ae(10, **values)))["icans_grade"] == grade


def test_corrected_crs_inputs_change_the_grade() -> None:
    row = only_row(subject(ae(10, category="crs", temperature_c=38.4,
                              hypoxia="high_flow", corrected_by=(40,))))
    assert row["crs_grade"] == 3


# --- SAE 24-hour clock --------------------------------------------------------------------

SERIOUS = {"serious_criteria": ["hospitalisation"], "awareness_at": "2025-03-05T10:00:00+08:00"}


def test_serious_ae_gets_a_24_hour_clock_from_awareness() -> None:
    clocks = sae_clocks(subject(ae(10, **SERIOUS)), PROTOCOL)
    assert len(clocks) == 1
    clock = clocks[0]
    assert set(clock) == CLOCK_KEYS
    assert clock == {
        "subject": "S-001", "ae_position": 10, "clock": "sae_report",
        "due_at": "2025-03-06T10:00:00+08:00", "starts_at": "2025-03-05T10:00:00+08:00",
        "stopped_at": None, "stopped_by": None, "basis": clock["basis"],
    }
    assert "awareness_at" in clock["basis"] and "24 hours" in clock["basis"]


def test_non_serious_ae_has_no_clock() -> None:
    assert sae_clocks(subject(ae(10, awareness_at="2025-03-05T10:00:00+08:00")), PROTOCOL) == []


@pytest.mark.parametrize(("now", "state", "hours_left"), [
    (datetime(2025, 3, 6, 9, 0, tzinfo=CST), "due", 1.0),
    (datetime(2025, 3, 6, 1, 30, tzinfo=UTC), "due", 0.5),  # 09:30 +08:00
    (datetime(2025, 3, 6, 10, 0, tzinfo=CST), "due", 0.0),  # due at, not after
    (datetime(2025, 3, 6, 13, 18, tzinfo=CST), "overdue", -3.3),
])
def test_sae_clock_state_by_now(now: datetime, state: str, hours_left: float) -> None:
    (clock,) = sae_clocks(subject(ae(10, **SERIOUS)), PROTOCOL)
    shown = clock_state(clock, now)
    assert (shown["state"], shown["hours_left"]) == (state, hours_left)
    assert shown["overdue"] is (state == "overdue")
    assert shown["late"] is False


def test_initial_report_on_time_stops_the_clock() -> None:
    state = subject(ae(10, **SERIOUS), report(20, 10, "initial", "2025-03-06T09:30:00+08:00"))
    (clock,) = sae_clocks(state, PROTOCOL)
    assert (clock["stopped_at"], clock["stopped_by"]) == ("2025-03-06T09:30:00+08:00", 20)
    shown = clock_state(clock, datetime(2025, 3, 9, tzinfo=CST))
    assert (shown["state"], shown["overdue"], shown["late"], shown["hours_left"]) == (
        "stopped", False, False, None)


def test_initial_report_after_due_is_stopped_but_late() -> None:
    state = subject(ae(10, **SERIOUS), report(20, 10, "initial", "2025-03-06T10:01:00+08:00"))
    shown = clock_state(sae_clocks(state, PROTOCOL)[0], datetime(2025, 3, 9, tzinfo=CST))
    assert (shown["state"], shown["overdue"], shown["late"]) == ("stopped", False, True)


def test_earliest_sent_initial_report_stops_the_clock() -> None:
    state = subject(ae(10, **SERIOUS),
                    report(20, 10, "initial", "2025-03-07T08:00:00+08:00"),
                    report(21, 10, "initial", "2025-03-06T08:00:00+08:00"))
    (clock,) = sae_clocks(state, PROTOCOL)
    assert (clock["stopped_by"], clock["stopped_at"]) == (21, "2025-03-06T08:00:00+08:00")


def test_only_an_initial_report_of_that_ae_stops_the_24_hour_clock() -> None:
    state = subject(ae(10, **SERIOUS),
                    report(20, 10, "follow_up", "2025-03-05T12:00:00+08:00"),
                    report(21, 10, "expedited", "2025-03-05T13:00:00+08:00"),
                    report(22, 99, "initial", "2025-03-05T14:00:00+08:00"))
    (clock,) = sae_clocks(state, PROTOCOL)
    assert (clock["stopped_at"], clock["stopped_by"]) == (None, None)


def test_clocks_keep_running_after_the_subject_leaves_the_study() -> None:
    (clock,) = sae_clocks(subject(ae(10, **SERIOUS), phase="off_study"), PROTOCOL)
    assert clock["due_at"] == "2025-03-06T10:00:00+08:00"


def test_clock_state_refuses_a_naive_now() -> None:
    (clock,) = sae_clocks(subject(ae(10, **SERIOUS)), PROTOCOL)
    with pytest.raises(InvalidInput):
        clock_state(clock, datetime(2025, 3, 6, 9, 0))


# --- SUSAR expedited clocks ---------------------------------------------------------------

FATAL = {"serious_criteria": ["death"], "expected": False,
         "awareness_at": "2025-03-09T08:00:00+08:00",
         "sponsor_aware_at": "2025-03-10T16:00:00+08:00", "outcome": "fatal"}
HOSPITALISED = {**FATAL, "serious_criteria": ["hospitalisation"], "outcome": "recovering"}


def test_fatal_susar_has_7_day_and_complete_clocks() -> None:
    clocks = clocks_by_kind(subject(ae(10, grade=5, **FATAL), causality(11, 10, "probable")))
    assert set(clocks) == {"sae_report", "expedited_7d", "expedited_complete"}
    seven, complete = clocks["expedited_7d"], clocks["expedited_complete"]
    assert seven["due_at"] == "2025-03-17T23:59:59+08:00"
    assert complete["due_at"] == "2025-03-25T23:59:59+08:00"
    assert seven["starts_at"] == complete["starts_at"] == "2025-03-10T16:00:00+08:00"
    assert "probable" in seven["basis"] and "death" in seven["basis"]
    assert "position 11" in seven["basis"]


def test_fatal_susar_reports_stop_the_7_day_then_the_complete_clock() -> None:
    state = subject(ae(10, grade=5, **FATAL), causality(11, 10, "definite"),
                    report(12, 10, "initial", "2025-03-09T20:00:00+08:00"),
                    report(13, 10, "follow_up", "2025-03-11T09:00:00+08:00"),  # before expedited
                    report(14, 10, "expedited", "2025-03-16T09:00:00+08:00"),
                    report(15, 10, "follow_up", "2025-03-27T09:00:00+08:00"))
    clocks = clocks_by_kind(state)
    assert clocks["sae_report"]["stopped_by"] == 12
    assert clocks["expedited_7d"]["stopped_by"] == 14
    assert clocks["expedited_complete"]["stopped_by"] == 15
    now = datetime(2025, 3, 28, tzinfo=CST)
    assert clock_state(clocks["expedited_7d"], now)["late"] is False
    assert clock_state(clocks["expedited_complete"], now)["late"] is True


def test_complete_clock_runs_until_a_second_expedited_report() -> None:
    state = subject(ae(10, grade=5, **FATAL), causality(11, 10, "possible"),
                    report(14, 10, "expedited", "2025-03-16T09:00:00+08:00"))
    clocks = clocks_by_kind(state)
    assert clocks["expedited_complete"]["stopped_by"] is None
    shown = clock_state(clocks["expedited_complete"], datetime(2025, 3, 25, 22, 0, tzinfo=CST))
    assert (shown["state"], shown["hours_left"]) == ("due", 2.0)
    state.forms[16] = report(16, 10, "expedited", "2025-03-20T09:00:00+08:00")
    assert clocks_by_kind(state)["expedited_complete"]["stopped_by"] == 16


@pytest.mark.parametrize(("criteria", "grade"), [(["life_threatening"], 4),
                                                 (["hospitalisation"], 5)])
def test_life_threatening_or_grade_5_is_on_the_7_day_clock(criteria: list[str],
                                                           grade: int) -> None:
    form = ae(10, grade=grade, **{**FATAL, "serious_criteria": criteria})
    clocks = clocks_by_kind(subject(form, causality(11, 10, "possible")))
    assert set(clocks) == {"sae_report", "expedited_7d", "expedited_complete"}


def test_other_susar_has_a_15_day_clock_stopped_by_an_expedited_report() -> None:
    state = subject(ae(10, grade=4, **HOSPITALISED), causality(11, 10, "possible"),
                    report(12, 10, "initial", "2025-03-12T09:00:00+08:00"))
    clocks = clocks_by_kind(state)
    assert set(clocks) == {"sae_report", "expedited_15d"}
    assert clocks["expedited_15d"]["due_at"] == "2025-03-25T23:59:59+08:00"
    assert clocks["expedited_15d"]["stopped_by"] is None  # an initial report does not stop it
    state.forms[13] = report(13, 10, "expedited", "2025-03-24T09:00:00+08:00")
    assert clocks_by_kind(state)["expedited_15d"]["stopped_by"] == 13


def test_day_0_is_the_sponsor_calendar_date_in_its_own_offset() -> None:
    # 23:30 at -05:00 is already 11 March in UTC; day 0 stays 10 March
    form = ae(10, **{**HOSPITALISED, "sponsor_aware_at": "2025-03-10T23:30:00-05:00"})
    clocks = clocks_by_kind(subject(form, causality(11, 10, "probable")))
    assert clocks["expedited_15d"]["due_at"] == "2025-03-25T23:59:59-05:00"


@pytest.mark.parametrize(("changes", "relatedness"), [
    ({"expected": True}, "probable"),
    ({"expected": None}, "probable"),  # expectedness not recorded
    ({}, "unlikely"),
    ({}, "not_related"),
    ({}, None),  # causality unassessed
    ({"sponsor_aware_at": None}, "probable"),
])
def test_not_expedited(changes: dict[str, Any], relatedness: str | None) -> None:
    forms = [ae(10, grade=5, **{**FATAL, **changes})]
    if relatedness is not None:
        forms.append(causality(11, 10, relatedness))
    assert set(clocks_by_kind(subject(*forms))) == {"sae_report"}


def test_a_later_causality_downgrade_removes_the_expedited_clock() -> None:
    state = subject(ae(10, **HOSPITALISED), causality(11, 10, "probable"),
                    causality(12, 10, "unlikely"))
    assert set(clocks_by_kind(state)) == {"sae_report"}


# --- primary safety endpoint counts -------------------------------------------------------


def test_primary_safety_counts_over_several_subjects() -> None:
    first = subject(
        ae(10, onset=day(2), grade=3, category="crs", temperature_c=39.0,
           hypotension="one_vasopressor", **SERIOUS),
        causality(11, 10, "definite"),
        ae(12, onset=day(5), grade=2, category="icans", ice_score=5),
        causality(13, 12, "probable"),
        ae(14, onset=day(6), grade=4),  # unassessed: not counted
        ae(15, onset=day(40), grade=5),  # outside the window
        causality(16, 15, "definite"),
    )
    second = subject(
        ae(20, onset=day(1), grade=1, category="crs", temperature_c=38.2),
        causality(21, 20, "possible"),
        ae(22, onset=day(3), grade=3),
        causality(23, 22, "unlikely"),  # not related: not counted
        name="S-002",
    )
    third = subject(ae(30, onset=day(1), grade=2), causality(31, 30, "probable"),
                    infused_on=None, name="S-003")  # not infused: not counted
    rows = [row for s in (first, second, third) for row in adverse_events(s, PROTOCOL)]
    assert primary_safety_counts(rows) == {
        "events": 3,
        "subjects": 2,
        "by_grade": {"1": 1, "2": 1, "3": 1, "4": 0, "5": 0},
        "serious": 1,
        "crs": {"1": 1, "2": 0, "3": 1, "4": 0},
        "icans": {"1": 0, "2": 1, "3": 0, "4": 0},
        "grade_3_or_more_subjects": 1,
    }


def test_primary_safety_counts_of_nothing() -> None:
    assert primary_safety_counts([]) == {
        "events": 0, "subjects": 0, "by_grade": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0},
        "serious": 0, "crs": {"1": 0, "2": 0, "3": 0, "4": 0},
        "icans": {"1": 0, "2": 0, "3": 0, "4": 0}, "grade_3_or_more_subjects": 0,
    }
