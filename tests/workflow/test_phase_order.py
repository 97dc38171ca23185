"""Clinical dates in phase order (issue 15, first part): consent ≤ eligibility confirmation ≤
leukapheresis ≤ lymphodepletion ≤ infusion ≤ visits, judged on the dates the user gives, with
retrospective entry as ordinary work. On SQLite and PostgreSQL, through the one executor."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    Desk,
    new_study,
    on_day,
    refused,
    screen_eligible,
)
from workflow.commands import messages as M
from workflow.errors import InvalidInput

CONSENT = date(2025, 3, 3)


@pytest.fixture
def desk(db_url: str) -> tuple[Desk, FakeClock]:
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    flow = new_study(db_url, clock)
    screen_eligible(flow, "S-001", CONSENT, clock=clock)
    return flow, clock


def test_a_retrospective_confirmation_is_judged_on_its_own_date(
        desk: tuple[Desk, FakeClock]) -> None:
    """Entered 40 days after consent, dated 10 days after it: the screening window was open
    on that date, so the subject is enrolled on it."""
    flow, clock = desk
    on_day(clock, CONSENT + timedelta(days=40))
    refused(flow, INVESTIGATOR, M.ConfirmEligibility("S-001"), "screening_window_expired")
    flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", CONSENT + timedelta(days=10)))
    state = flow.subject("S-001")
    assert state.eligibility_confirmed_on == CONSENT + timedelta(days=10)
    assert state.phase == "cell_collection"


def test_a_confirmation_before_consent_or_in_the_future_is_refused(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, CONSENT + timedelta(days=5))
    refused(flow, INVESTIGATOR, M.ConfirmEligibility("S-001", CONSENT - timedelta(days=1)),
            "phase_order", "2025-03-02", "consent on 2025-03-03")
    before = flow.store.last_position()
    with pytest.raises(InvalidInput, match="in the future"):
        flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", CONSENT + timedelta(days=6)))
    assert flow.store.last_position() == before


def test_every_act_is_dated_after_the_one_before_it(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    confirmed = CONSENT + timedelta(days=7)
    on_day(clock, CONSENT + timedelta(days=60))  # everything is entered late
    flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", confirmed))
    coi = "COI-S-001"
    refused(flow, COORDINATOR, M.RecordLeukapheresis("S-001", CONSENT - timedelta(days=1), coi),
            "phase_order", "2025-03-02", "eligibility confirmation on 2025-03-10")  # nearest
    refused(flow, COORDINATOR, M.RecordLeukapheresis("S-001", confirmed - timedelta(days=1),
                                                     coi),
            "phase_order", "2025-03-09", "eligibility confirmation on 2025-03-10")
    collected = confirmed + timedelta(days=2)
    flow.send(COORDINATOR, M.RecordLeukapheresis("S-001", collected, coi))
    refused(flow, COORDINATOR, M.ReleaseProduct("S-001", "LOT-1", coi, viable_cells=2e8,
                                                on=collected - timedelta(days=1)),
            "phase_order", "released_on 2025-03-11", "leukapheresis on 2025-03-12")
    released = collected + timedelta(days=3)
    flow.send(COORDINATOR, M.ReleaseProduct("S-001", "LOT-1", coi, viable_cells=2e8,
                                            on=released))
    assert flow.subject("S-001").released_on == released
    refused(flow, COORDINATOR, M.GiveLymphodepletion("S-001", collected - timedelta(days=7),
                                                     40.5, 0.0),
            "phase_order", "product release on 2025-03-15")
    d0 = collected + timedelta(days=20)
    bsa = 1.62
    for offset, cyclo in ((-5, 0.0), (-4, 0.0), (-3, 1000 * bsa)):
        flow.send(COORDINATOR, M.GiveLymphodepletion("S-001", d0 + timedelta(days=offset),
                                                     round(25 * bsa, 1), round(cyclo, 1)))
    order = flow.subject("S-001").enrolment_order
    assert order is not None
    cells = flow.study().protocol.cohort_for(order).target_cells(58)
    refused(flow, COORDINATOR, M.Infuse("S-001", datetime.fromisoformat(
        f"{collected - timedelta(days=1)}T10:00:00+08:00"), cells, coi),
        "phase_order", "2025-03-11", "last lymphodepletion dose on 2025-03-29",
        "an infusion")
    refused(flow, COORDINATOR, M.Infuse("S-001", datetime.fromisoformat(
        f"{d0 - timedelta(days=4)}T10:00:00+08:00"), cells, coi),
        "phase_order", "last lymphodepletion dose on 2025-03-29")
    flow.send(COORDINATOR, M.Infuse("S-001", datetime.fromisoformat(
        f"{d0}T10:00:00+08:00"), cells, coi))
    refused(flow, COORDINATOR, M.RecordVisit("S-001", "D1", "done", d0 - timedelta(days=1)),
            "phase_order", "infusion (D0) on 2025-04-01")
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D1", "done", d0 + timedelta(days=1)))
    assert flow.subject("S-001").visits["D1"][0] == "done"


def test_leaving_the_study_is_dated_after_what_was_recorded(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    on_day(clock, CONSENT + timedelta(days=30))
    flow.send(INVESTIGATOR, M.ConfirmEligibility("S-001", CONSENT + timedelta(days=5)))
    flow.send(COORDINATOR, M.RecordLeukapheresis("S-001", CONSENT + timedelta(days=9),
                                                 "COI-S-001"))
    refused(flow, INVESTIGATOR, M.TakeOffStudy("S-001", "consent_withdrawn",
                                               CONSENT + timedelta(days=8)),
            "phase_order", "left_on 2025-03-11", "leukapheresis on 2025-03-12")
    flow.send(INVESTIGATOR, M.TakeOffStudy("S-001", "consent_withdrawn",
                                           CONSENT + timedelta(days=12)))
    state = flow.subject("S-001")
    assert (state.phase, state.exited_on) == ("off_study", CONSENT + timedelta(days=12))
