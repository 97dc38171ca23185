"""Protocol deviations of a folded subject, each kind at its boundary, per protocol version."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from workflow.deviations import DEVIATION_KEYS, deviations
from workflow.protocol import Protocol, builtin_protocol
from workflow.records import Consent, RecordedForm
from workflow.subject import PhaseRecord, SubjectState
from workflow.upcasters import lymphodepletion_payload

P2 = builtin_protocol(2)
# Version 3 for the tests: D28 ±4 instead of ±2, dose tolerance 10% instead of 20%,
# infusion 1-9 days after the last dose instead of 2-7.
P3 = replace(
    P2, version=3, dose_tolerance_pct=10,
    visits=tuple(replace(v, window_days=4) if v.code == "D28" else v for v in P2.visits),
    lymphodepletion=replace(P2.lymphodepletion, infusion_window_min_days=1,
                            infusion_window_max_days=9),
)
PROTOCOLS = {2: P2, 3: P3}
CONSENTED = date(2025, 2, 10)
LAST_DOSE = date(2025, 3, 25)
D0 = date(2025, 3, 28)
RECONSENT_AT = 50  # subjects with `reconsented=True` move to version 3 at this position
# BSA 1.8 m²: fludarabine 25 mg/m² = 45 mg on D-5..D-3, cyclophosphamide 1000 mg/m² on D-3.
EXPECTED = {-5: {"fludarabine": 45.0, "cyclophosphamide": 0.0},
            -4: {"fludarabine": 45.0, "cyclophosphamide": 0.0},
            -3: {"fludarabine": 45.0, "cyclophosphamide": 1800.0}}
D90_FORMS = ("disease_activity", "labs", "cart_persistence")


def protocol_of(version: int) -> Protocol:
    return PROTOCOLS[version]


def dose(position: int, day: int, *, fludarabine: float | None = None,
         cyclophosphamide: float | None = None, flagged: bool = False,
         reason: str | None = None) -> PhaseRecord:
    expected = EXPECTED[day]
    on = LAST_DOSE + timedelta(days=day + 3)
    given = {"fludarabine": expected["fludarabine"] if fludarabine is None else fludarabine,
             "cyclophosphamide": (expected["cyclophosphamide"] if cyclophosphamide is None
                                  else cyclophosphamide)}
    return PhaseRecord(position, on, lymphodepletion_payload(
        given_on=on.isoformat(), regimen_day=day, bsa_m2=1.8, given=given, expected=expected,
        deviation=flagged, protocol_version=2), reason)


def infusion(on: date = D0, cells: float = 1e8, position: int = 20,
             reason: str | None = None) -> PhaseRecord:
    return PhaseRecord(position, on, {
        "infused_at": f"{on.isoformat()}T09:30:00+01:00", "cells": cells,
        "target_cells": 1e8, "cohort": "1e8_flat", "deviation": reason is not None,
        "protocol_version": 2,
    }, reason)


def visit(code: str, on: date, status: str = "done", position: int = 40) -> PhaseRecord:
    return PhaseRecord(position, on, {"visit": code, "status": status,
                                      "visit_date": on.isoformat()})


def form(position: int, name: str, on: date, visit_code: str | None = None) -> RecordedForm:
    return RecordedForm(position, "S-001", name, {}, on, visit_code)


def subject(*, doses: tuple[PhaseRecord, ...] | None = None,
            infused: PhaseRecord | None = None, visits: tuple[PhaseRecord, ...] = (),
            forms: tuple[RecordedForm, ...] = (), reconsented: bool = False) -> SubjectState:
    s = SubjectState("S-001", phase="follow_up", protocol_version=2,
                     consent=Consent("S-001", CONSENTED, "ICF-2.0", 2, position=1),
                     protocol_versions=[(1, 2)])
    s.doses = list(doses if doses is not None else (dose(10, -5), dose(11, -4), dose(12, -3)))
    s.infusion = infused if infused is not None else infusion()
    s.infused_on = s.infusion.on
    s.visit_records = {record.payload["visit"]: record for record in visits}
    s.forms = {f.position: f for f in forms}
    if reconsented:
        s.protocol_versions.append((RECONSENT_AT, 3))
        s.protocol_version = 3
    return s


def kinds(s: SubjectState) -> list[str]:
    return [row["kind"] for row in deviations(s, protocol_of)]


def only(s: SubjectState, kind: str) -> dict[str, Any]:
    found = [row for row in deviations(s, protocol_of) if row["kind"] == kind]
    assert len(found) == 1, found
    return found[0]


def test_a_subject_on_schedule_has_no_deviation() -> None:
    forms = tuple(form(60 + i, name, date(2025, 6, 26), "D90") for i, name in enumerate(D90_FORMS))
    s = subject(visits=(visit("D28", date(2025, 4, 25)), visit("D90", date(2025, 6, 26))),
                forms=forms)
    assert deviations(s, protocol_of) == []


def test_no_deviation_before_consent() -> None:
    assert deviations(SubjectState("S-001"), protocol_of) == []


# --- visit_out_of_window ------------------------------------------------------------------


@pytest.mark.parametrize(("on", "outside"), [
    (date(2025, 4, 22), True),   # the day before D28's window (2025-04-23..27) opens
    (date(2025, 4, 23), False),
    (date(2025, 4, 27), False),
    (date(2025, 4, 28), True),   # the day after it closes
])
def test_visit_out_of_window_at_the_boundaries(on: date, outside: bool) -> None:
    s = subject(visits=(visit("D28", on),))
    assert kinds(s) == (["visit_out_of_window"] if outside else [])


def test_visit_out_of_window_row() -> None:
    row = only(subject(visits=(visit("D28", date(2025, 4, 28), position=41),)),
               "visit_out_of_window")
    assert tuple(row) == DEVIATION_KEYS
    assert {k: row[k] for k in ("subject", "position", "visit", "on", "protocol_version")} == {
        "subject": "S-001", "position": 41, "visit": "D28", "on": "2025-04-28",
        "protocol_version": 2}
    assert row["detail"] == (
        "Subject S-001: visit D28 done on 2025-04-28, outside its window 2025-04-23 to "
        "2025-04-27: D28 ±2 days in protocol version 2.")


def test_missed_visits_are_not_deviations() -> None:
    s = subject(visits=(visit("D28", date(2025, 5, 30), "missed"),
                        visit("D90", date(2025, 8, 1), "missed")))
    assert deviations(s, protocol_of) == []


# --- dose_off_regimen ---------------------------------------------------------------------


@pytest.mark.parametrize(("given", "off"), [
    (54.0, False), (54.1, True),   # expected 45 mg, +20% is 54 mg
    (36.0, False), (35.9, True),   # -20% is 36 mg
])
def test_dose_off_regimen_at_the_tolerance(given: float, off: bool) -> None:
    s = subject(doses=(dose(10, -5, fludarabine=given), dose(11, -4), dose(12, -3)))
    assert kinds(s) == (["dose_off_regimen"] if off else [])


def test_a_drug_not_due_that_day_is_off_regimen() -> None:
    s = subject(doses=(dose(10, -5, cyclophosphamide=10.0), dose(11, -4), dose(12, -3)))
    row = only(s, "dose_off_regimen")
    assert (row["position"], row["on"], row["visit"]) == (10, "2025-03-23", None)
    assert "cyclophosphamide 10 mg against the expected 0 mg" in row["detail"]


def test_dose_off_regimen_names_the_regimen_and_the_reason() -> None:
    s = subject(doses=(dose(10, -5), dose(11, -4),
                       dose(12, -3, cyclophosphamide=1000.0, reason="renal function")))
    row = only(s, "dose_off_regimen")
    assert row["detail"] == (
        "Subject S-001: lymphodepletion dose on 2025-03-25 (regimen day D-3) is off the "
        "regimen (cyclophosphamide 1000 mg against the expected 1800 mg: beyond ±20%) of "
        "protocol version 2 (fludarabine 25 mg/m² on D-5, D-4, D-3; cyclophosphamide "
        "1000 mg/m² on D-3); reason recorded: renal function.")


def test_a_dose_flagged_as_deviation_is_listed_even_within_tolerance() -> None:
    s = subject(doses=(dose(10, -5, flagged=True, reason="pharmacy rounding"),
                       dose(11, -4), dose(12, -3)))
    row = only(s, "dose_off_regimen")
    assert "recorded as a deviation" in row["detail"]
    assert row["detail"].endswith("reason recorded: pharmacy rounding.")


def test_dose_tolerance_of_the_version_in_force_at_the_dose() -> None:
    # 50.0 mg is +11%: inside version 2's ±20%, outside version 3's ±10%.
    before = dose(10, -5, fludarabine=50.0)
    after = replace(before, position=RECONSENT_AT + 1)
    assert kinds(subject(doses=(before,), reconsented=True)) == []
    row = only(subject(doses=(after,), reconsented=True), "dose_off_regimen")
    assert row["protocol_version"] == 3
    assert "beyond ±10%" in row["detail"]


# --- dose_out_of_tolerance ----------------------------------------------------------------


@pytest.mark.parametrize(("cells", "off"), [
    (1.2e8, False), (1.2000001e8, True), (0.8e8, False), (0.7999999e8, True),
])
def test_cells_at_the_tolerance(cells: float, off: bool) -> None:
    assert kinds(subject(infused=infusion(cells=cells))) == (
        ["dose_out_of_tolerance"] if off else [])


def test_dose_out_of_tolerance_row() -> None:
    row = only(subject(infused=infusion(cells=1.5e8, reason="bag overfilled")),
               "dose_out_of_tolerance")
    assert (row["position"], row["on"], row["visit"], row["protocol_version"]) == (
        20, "2025-03-28", None, 2)
    assert row["detail"] == (
        "Subject S-001: 1.5e+08 CAR-T cells infused on 2025-03-28, outside ±20% of the cohort "
        "dose 1e+08 (cohort 1e8_flat, protocol version 2); reason recorded: bag overfilled.")


# --- infusion_out_of_window ---------------------------------------------------------------


@pytest.mark.parametrize(("on", "outside"), [
    (date(2025, 3, 26), True),   # 1 day after the last dose
    (date(2025, 3, 27), False),  # 2 days
    (date(2025, 4, 1), False),   # 7 days
    (date(2025, 4, 2), True),    # 8 days
])
def test_infusion_window_at_the_boundaries(on: date, outside: bool) -> None:
    assert kinds(subject(infused=infusion(on=on))) == (
        ["infusion_out_of_window"] if outside else [])


def test_infusion_out_of_window_row() -> None:
    row = only(subject(infused=infusion(on=date(2025, 4, 2))), "infusion_out_of_window")
    assert (row["position"], row["on"], row["protocol_version"]) == (20, "2025-04-02", 2)
    assert row["detail"] == (
        "Subject S-001: infused on 2025-04-02, 8 days after the last lymphodepletion dose "
        "(2025-03-25), outside the window of protocol version 2 (2-7 days: 2025-03-27 to "
        "2025-04-01).")


def test_infusion_window_of_the_version_in_force_at_the_infusion() -> None:
    late = infusion(on=date(2025, 4, 2), position=RECONSENT_AT + 1)  # 8 days: inside 1-9
    assert kinds(subject(infused=late, reconsented=True)) == []


# --- assessment_missing -------------------------------------------------------------------
# D90 window with D0 2025-03-28: 2025-06-19 .. 2025-07-03 (target 2025-06-26).


def d90_subject(*forms: RecordedForm, status: str = "done") -> SubjectState:
    return subject(visits=(visit("D90", date(2025, 6, 26), status, position=70),), forms=forms)


def all_but(missing: str, on: date, visit_code: str | None = None) -> tuple[RecordedForm, ...]:
    return tuple(form(80 + i, name, on, visit_code)
                 for i, name in enumerate(D90_FORMS) if name != missing)


@pytest.mark.parametrize(("on", "visit_code", "counts"), [
    (date(2025, 6, 19), None, True),     # first day of the window
    (date(2025, 7, 3), None, True),      # last day of the window
    (date(2025, 6, 18), None, False),    # the day before
    (date(2025, 7, 4), None, False),     # the day after
    (date(2025, 7, 10), "D90", True),    # late, but recorded for the visit
    (date(2025, 7, 10), "D180", False),  # recorded for another visit, outside the window
])
def test_a_form_counts_for_a_visit(on: date, visit_code: str | None, counts: bool) -> None:
    s = d90_subject(*all_but("labs", date(2025, 6, 26), "D90"),
                    form(90, "labs", on, visit_code))
    assert kinds(s) == ([] if counts else ["assessment_missing"])


def test_assessment_missing_row_names_the_missing_forms() -> None:
    row = only(d90_subject(form(80, "disease_activity", date(2025, 6, 26), "D90")),
               "assessment_missing")
    assert (row["position"], row["visit"], row["on"], row["protocol_version"]) == (
        70, "D90", "2025-06-26", 2)
    assert row["detail"] == (
        "Subject S-001: visit D90 done on 2025-06-26 without the required forms labs, "
        "cart_persistence (recorded for the visit or dated in its window 2025-06-19 to "
        "2025-07-03: D90 ±7 days in protocol version 2).")


def test_a_form_of_another_kind_does_not_count() -> None:
    s = d90_subject(*all_but("labs", date(2025, 6, 26), "D90"),
                    form(90, "vitals", date(2025, 6, 26), "D90"))
    assert "labs" in only(s, "assessment_missing")["detail"]


def test_missed_visit_is_not_an_assessment_deviation() -> None:
    assert kinds(d90_subject(status="missed")) == []


def test_visit_without_required_forms_needs_none() -> None:
    assert kinds(subject(visits=(visit("D28", date(2025, 4, 25)),))) == []


# --- protocol version per position --------------------------------------------------------


@pytest.mark.parametrize(("position", "expected"), [
    (RECONSENT_AT - 1, [("visit_out_of_window", 2)]),  # recorded under version 2: D28 ±2
    (RECONSENT_AT + 1, []),                            # recorded under version 3: D28 ±4
])
def test_visit_window_of_the_version_in_force_at_the_visit(
        position: int, expected: list[tuple[str, int]]) -> None:
    # 2025-04-22 is D25: outside D28 ±2 (D26..D30), inside D28 ±4 (D24..D32).
    s = subject(visits=(visit("D28", date(2025, 4, 22), position=position),), reconsented=True)
    assert [(row["kind"], row["protocol_version"]) for row in deviations(s, protocol_of)] == (
        expected)


def test_protocol_version_falls_back_to_the_current_one() -> None:
    s = subject(visits=(visit("D28", date(2025, 4, 28)),))
    s.protocol_versions = []
    assert only(s, "visit_out_of_window")["protocol_version"] == 2


def test_deviations_are_ordered_by_position() -> None:
    s = subject(doses=(dose(10, -5, fludarabine=60.0), dose(11, -4), dose(12, -3)),
                infused=infusion(on=date(2025, 4, 2), cells=2e8),
                visits=(visit("D28", date(2025, 5, 5), position=45),
                        visit("D90", date(2025, 6, 26), position=70)))
    assert [(row["position"], row["kind"]) for row in deviations(s, protocol_of)] == [
        (10, "dose_off_regimen"),
        (20, "dose_out_of_tolerance"),
        (20, "infusion_out_of_window"),
        (45, "visit_out_of_window"),
        (70, "assessment_missing"),
    ]
