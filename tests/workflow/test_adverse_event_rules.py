"""Adverse events that hold together with the subject's dates and signs (issue 15): an onset
before consent is refused; an onset after consent but before the infusion is recorded as
pre-treatment, outside the safety window, and shown as such; an AE whose CRS or ICANS signs
are recorded takes the ASTCT grade they give, and a different grade given by hand is refused
naming both. On SQLite and PostgreSQL, through the one executor; every refusal writes nothing.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from projections.queries import ae_list
from projections.views import open_view
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    Desk,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import messages as M
from workflow.errors import InvalidInput, RuleViolation

CONSENT = date(2025, 3, 3)
START = date(2025, 1, 6)  # through_infusion: consent 2025-01-06, D0 2025-02-05


@pytest.fixture
def desk(db_url: str) -> Desk:
    """S-001 consented on 2025-03-03 (screening), the clock a week later."""
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    flow = new_study(db_url, clock)
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    on_day(clock, CONSENT + timedelta(days=7))
    return flow


def record_ae(flow: Desk, *tokens: str, subject: str = "S-001", on: date | None = None
              ) -> int:
    outcome = flow.send(COORDINATOR, M.RecordForm(subject, "adverse_event", tokens, on))
    (position,) = outcome.result.positions
    return position


def refused(flow: Desk, tokens: tuple[str, ...], rule: str, *words: str) -> str:
    before = flow.store.last_position()
    with pytest.raises(RuleViolation) as caught:
        record_ae(flow, *tokens)
    assert caught.value.rule == rule, caught.value
    assert caught.value.subject == "S-001"
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    assert flow.store.last_position() == before  # nothing written
    return message


def ae_rows(flow: Desk, subject: str = "S-001") -> list[dict[str, Any]]:
    """The AE read model as `ae list` reads it (the tables, caught up)."""
    return ae_list(open_view(flow.store.engine, flow.store), subject)


# --- onset and consent --------------------------------------------------------------------


def test_an_ae_with_onset_before_consent_is_refused(desk: Desk) -> None:
    message = refused(desk, ("term=Headache", "onset_date=2025-03-02", "grade=1"),
                      "ae_onset_before_consent", "Subject S-001", "onset_date 2025-03-02",
                      "consent on 2025-03-03")
    assert message.count(".") >= 1 and "\n" not in message  # one sentence
    refused(desk, ("term=Arthralgia", "onset_date=2023-03-01", "grade=1"),
            "ae_onset_before_consent", "onset_date 2023-03-01")  # two years before
    record_ae(desk, "term=Headache", "onset_date=2025-03-03", "grade=1")  # the consent day


def test_an_ae_after_consent_and_before_infusion_is_pre_treatment(desk: Desk) -> None:
    position = record_ae(desk, "term=Headache", "onset_date=2025-03-04", "grade=1")
    (row,) = ae_rows(desk)
    assert row["position"] == position
    assert (row["period"], row["in_safety_window"], row["study_day"],
            row["counts_for_primary"]) == ("pre_treatment", False, None, False)


def test_periods_after_infusion(db_url: str) -> None:
    """After D0 the pre-treatment AE keeps its period (a negative study day); AEs from D0 on
    are in the window until D28, after it past D28. Entered late, as source documents are."""
    clock = FakeClock(datetime(2025, 1, 6, 4, tzinfo=UTC))
    flow = new_study(db_url, clock)
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=40))
    before = record_ae(flow, "term=Nausea", f"onset_date={d0 - timedelta(days=4)}", "grade=1")
    on_d0 = record_ae(flow, "term=Pyrexia", f"onset_date={d0}", "grade=1")
    last = record_ae(flow, "term=Rash", f"onset_date={d0 + timedelta(days=28)}", "grade=1")
    after = record_ae(flow, "term=Cough", f"onset_date={d0 + timedelta(days=29)}", "grade=1")
    flow.send(INVESTIGATOR, M.RecordForm("S-001", "causality", (
        f"ae_position={before}", "relatedness=definite")))
    rows = {row["position"]: row for row in ae_rows(flow)}
    shown = {p: (rows[p]["study_day"], rows[p]["period"], rows[p]["in_safety_window"])
             for p in (before, on_d0, last, after)}
    assert shown == {before: (-4, "pre_treatment", False), on_d0: (0, "safety_window", True),
                     last: (28, "safety_window", True), after: (29, "after_window", False)}
    assert rows[before]["related"] and not rows[before]["counts_for_primary"]


# --- the ASTCT grade of CRS and ICANS signs -----------------------------------------------


CRS_GRADE_2 = ("term=Cytokine release syndrome", "category=crs", "onset_date=2025-03-05",
               "temperature_c=39.1", "hypotension=no_vasopressors", "hypoxia=none")


def test_a_crs_grade_other_than_the_astct_grade_of_its_signs_is_refused(desk: Desk) -> None:
    message = refused(desk, (*CRS_GRADE_2, "grade=1"), "ae_grade_mismatch", "Subject S-001",
                      "grade 1", "ASTCT CRS grade 2", "temperature_c=39.1",
                      "hypotension=no_vasopressors", "decided by hypotension",
                      "grade=2")
    assert "\n" not in message
    refused(desk, (*CRS_GRADE_2, "grade=3"), "ae_grade_mismatch", "grade 3",
            "ASTCT CRS grade 2")
    position = record_ae(desk, *CRS_GRADE_2, "grade=2")
    (row,) = ae_rows(desk)
    assert (row["position"], row["grade"], row["crs_grade"]) == (position, 2, 2)


def test_the_rule_binds_crs_signs_on_an_ae_without_a_category(desk: Desk) -> None:
    signs = ("term=CRS", "onset_date=2025-03-05", "temperature_c=38.4", "hypoxia=high_flow")
    refused(desk, (*signs, "grade=2"), "ae_grade_mismatch", "grade 2", "ASTCT CRS grade 3",
            "hypoxia=high_flow")
    record_ae(desk, *signs, "grade=3")


def test_an_icans_grade_other_than_the_astct_grade_of_its_signs_is_refused(desk: Desk) -> None:
    signs = ("term=ICANS", "category=icans", "onset_date=2025-03-06", "ice_score=8",
             "seizure=rapidly_resolving")
    refused(desk, (*signs, "grade=1"), "ae_grade_mismatch", "grade 1", "ASTCT ICANS grade 3",
            "ice_score=8", "seizure=rapidly_resolving", "decided by seizure")
    record_ae(desk, *signs, "grade=3")


def test_signs_that_meet_no_astct_criteria_refuse_a_crs_but_bind_no_other_ae(desk: Desk) -> None:
    afebrile = ("onset_date=2025-03-05", "temperature_c=37.5", "hypotension=no_vasopressors")
    refused(desk, ("term=CRS", "category=crs", *afebrile, "grade=2"), "ae_grade_mismatch",
            "ASTCT CRS grade 0", "category crs")
    record_ae(desk, "term=Hypotension", "category=other", *afebrile, "grade=2")
    (row,) = ae_rows(desk)
    assert (row["grade"], row["crs_grade"]) == (2, 0)


def test_crs_and_icans_signs_of_different_grades_on_one_ae_are_refused(desk: Desk) -> None:
    both = ("term=Neurotoxicity", "onset_date=2025-03-05", "temperature_c=39",
            "hypotension=no_vasopressors", "ice_score=2")  # CRS 2, ICANS 3
    refused(desk, (*both, "grade=2"), "ae_grade_mismatch", "ASTCT ICANS grade 3",
            "graded separately")
    refused(desk, (*both, "grade=3"), "ae_grade_mismatch", "ASTCT CRS grade 2",
            "graded separately")
    record_ae(desk, *both, "category=icans", "grade=3")  # the AE's own syndrome decides


def test_signs_that_cannot_be_graded_leave_the_grade_given(desk: Desk) -> None:
    """No temperature while fever is not masked: ASTCT gives no CRS grade, so none binds."""
    record_ae(desk, "term=CRS", "category=crs", "onset_date=2025-03-05",
              "hypotension=one_vasopressor", "grade=3")
    (row,) = ae_rows(desk)
    assert (row["grade"], row["crs_grade"]) == (3, None)


def test_a_grade_is_still_required_when_signs_are_recorded(desk: Desk) -> None:
    before = desk.store.last_position()
    with pytest.raises(InvalidInput) as caught:
        record_ae(desk, *CRS_GRADE_2)
    assert caught.value.field == "grade"
    assert desk.store.last_position() == before


def test_signs_the_instrument_refuses_are_bad_input(desk: Desk) -> None:
    before = desk.store.last_position()
    with pytest.raises(InvalidInput) as caught:
        record_ae(desk, "term=ICANS", "category=icans", "onset_date=2025-03-05",
                  "consciousness=unarousable", "ice_score=4", "grade=4")
    assert (caught.value.field, caught.value.subject) == ("ice_score", "S-001")
    assert "Subject S-001" in str(caught.value)
    assert desk.store.last_position() == before
    record_ae(desk, "term=ICANS", "category=icans", "onset_date=2025-03-05",
              "consciousness=unarousable", "grade=4")  # unarousable: ICE 0, grade 4


# --- the command line ---------------------------------------------------------------------


def cli(db: str, *argv: str) -> tuple[int, str, str]:
    from tests.support.auth import run_cli

    out, err = io.StringIO(), io.StringIO()
    status = run_cli(["--db", db, *argv], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_ae_list_shows_the_period_and_the_cli_refuses_a_wrong_grade(sqlite_url: str) -> None:
    clock = FakeClock(datetime(2025, 1, 6, 4, tzinfo=UTC))
    flow = new_study(sqlite_url, clock)
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=2))
    record_ae(flow, "term=Nausea", f"onset_date={d0 - timedelta(days=3)}", "grade=1")
    record_ae(flow, "term=Cytokine release syndrome", "category=crs",
              f"onset_date={d0 + timedelta(days=1)}", "temperature_c=39.1",
              "hypotension=no_vasopressors", "grade=2")
    flow.store.engine.dispose()

    status, out, err = cli(sqlite_url, "--json", "ae", "list", "S-001")
    assert status == 0, err
    rows = json.loads(out)
    assert [(r["term"], r["period"], r["in_safety_window"], r["study_day"]) for r in rows] == [
        ("Nausea", "pre_treatment", False, -3),
        ("Cytokine release syndrome", "safety_window", True, 1)]

    status, out, err = cli(sqlite_url, "ae", "list", "S-001")
    assert status == 0, err
    header, _, *lines = out.splitlines()
    assert header.split() == ["subject", "position", "term", "onset", "day", "grade",
                              "serious", "related", "period", "crs", "icans"]
    assert "pre_treatment" in lines[0] and "Nausea" in lines[0]
    assert "safety_window" in lines[1] and "Cytokine" in lines[1]

    status, out, err = cli(sqlite_url, "--user", COORDINATOR, "--json", "record", "S-001",
                           "adverse_event", "term=Cytokine release syndrome", "category=crs",
                           f"onset_date={d0 + timedelta(days=1)}", "temperature_c=39.1",
                           "hypotension=no_vasopressors", "grade=1")
    body = json.loads(out)
    assert status == 1, (out, err)
    assert body["rule"] == "ae_grade_mismatch"
    assert "grade 1" in body["error"] and "ASTCT CRS grade 2" in body["error"]
    status, out, _ = cli(sqlite_url, "--json", "ae", "list", "S-001")
    assert len(json.loads(out)) == 2  # nothing written
