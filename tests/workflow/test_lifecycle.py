"""The IM19 path from consent to D360, refusals, roles, cap and amendment (both backends)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from events.envelope import NewEvent
from events.errors import ConcurrencyConflict
from tests.support.clock import FakeClock
from tests.support.study import (
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    enrol,
    new_study,
    on_day,
    screen_eligible,
    through_infusion,
)
from workflow.commands import Workflow
from workflow.errors import InvalidInput, RuleViolation

START = date(2024, 9, 2)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2025-12-01T02:00:00+00:00")


@pytest.fixture
def flow(db_url: str, clock: FakeClock) -> Workflow:
    return new_study(db_url, clock)


def refused(rule: str, call: object, *args: object, **kwargs: object) -> RuleViolation:
    assert callable(call)
    with pytest.raises(RuleViolation) as caught:
        call(*args, **kwargs)
    assert caught.value.rule == rule, caught.value.message
    return caught.value


def test_whole_path_from_consent_to_d360(flow: Workflow, clock: FakeClock) -> None:
    d0 = through_infusion(flow, "S-001", START, clock)
    state = flow.subject("S-001")
    assert state.phase == "follow_up" and state.infused_on == d0
    assert state.cohort == flow.study().protocol.cohort_for(1).code
    for visit in flow.study().protocol.visits:
        on_day(clock, d0 + timedelta(days=visit.target_day))
        flow.visit(COORDINATOR, "S-001", visit.code, "done",
                   d0 + timedelta(days=visit.target_day), None)
    before = flow.store.last_position()
    flow.complete(COORDINATOR, "S-001", None)
    assert flow.subject("S-001").phase == "completed"
    phases = [e.payload["to"] for e in flow.store.read_stream("S-001")
              if e.type == "PhaseChanged"]
    assert phases == ["cell_collection", "lymphodepletion", "infusion", "follow_up", "completed"]
    assert flow.store.last_position() == before + 2
    refused("phase", flow.off_study, COORDINATOR, "S-001", "death", None)


def test_refused_commands_write_nothing(flow: Workflow) -> None:
    screen_eligible(flow, "S-002", START)
    before = flow.store.last_position()
    refused("phase", flow.leukapheresis, COORDINATOR, "S-002", START, "C1", None)
    refused("role", flow.confirm_eligibility, COORDINATOR, "S-002", None)
    refused("role", flow.record, MONITOR, "S-002", "vitals", ["weight_kg=60"], START, None, None)
    refused("site", flow.record, "otto", "S-002", "vitals", ["weight_kg=60"], START, None, None)
    refused("unknown_user", flow.record, "nobody", "S-002", "vitals", ["weight_kg=60"], START,
            None, None)
    refused("assessment_before_consent", flow.record, COORDINATOR, "S-002", "vitals",
            ["weight_kg=60"], START - timedelta(days=1), None, None)
    with pytest.raises(InvalidInput):
        flow.record(COORDINATOR, "S-002", "vitals", ["weight_kg=abc"], START, None, None)
    with pytest.raises(InvalidInput):
        flow.record(COORDINATOR, "S-002", "infusion", ["cells=1"], START, None, None)
    with pytest.raises(InvalidInput):
        flow.record(COORDINATOR, "S-002", "vitals", ["weight_kg=60"], date(2030, 1, 1), None,
                    None)
    assert flow.store.last_position() == before


def test_history_may_predate_consent(flow: Workflow) -> None:
    flow.consent(COORDINATOR, "S-003", START, "2.0", None)
    flow.record(COORDINATOR, "S-003", "prior_treatment",
                ["drug=rituximab", "drug_class=biologic", "start_date=2020-01-01"], START, None,
                None)
    assert len(flow.subject("S-003").forms_of("prior_treatment")) == 1


def test_deactivated_user_is_refused(flow: Workflow) -> None:
    flow.deactivate_user("ada", COORDINATOR, None)
    refused("user_deactivated", flow.consent, COORDINATOR, "S-004", START, "2.0", None)


def test_ineligible_subject_cannot_be_confirmed(flow: Workflow, clock: FakeClock) -> None:
    screen_eligible(flow, "S-005", START, weight_kg=38, clock=clock)
    error = refused("eligibility:weight", flow.confirm_eligibility, INVESTIGATOR, "S-005", None)
    assert "S-005" in error.message
    flow.screen_fail(COORDINATOR, "S-005", "weight", None)
    assert flow.subject("S-005").phase == "screen_failed"


def test_screening_window_expires(flow: Workflow, clock: FakeClock) -> None:
    screen_eligible(flow, "S-006", START, clock=clock)
    clock.set("2024-10-15T02:00:00+00:00")  # day 43 after consent
    refused("screening_window_expired", flow.confirm_eligibility, INVESTIGATOR, "S-006", None)


def test_cap_cohorts_and_a_freed_place(flow: Workflow, clock: FakeClock) -> None:
    clock.set("2024-09-20T02:00:00+00:00")
    for n in range(1, 7):
        enrol(flow, f"S-{n:03d}", START, clock)
    cohorts = [flow.subject(f"S-{n:03d}").cohort for n in range(1, 7)]
    assert cohorts[:3] == [cohorts[0]] * 3 and cohorts[3:] == [cohorts[3]] * 3
    assert cohorts[0] != cohorts[3]
    screen_eligible(flow, "S-007", START, clock=clock)
    on_day(clock, START + timedelta(days=4))
    refused("enrolment_cap", flow.confirm_eligibility, INVESTIGATOR, "S-007", None)
    flow.off_study(COORDINATOR, "S-002", "consent_withdrawn", None)  # before infusion
    flow.confirm_eligibility(INVESTIGATOR, "S-007", None)
    assert flow.subject("S-007").enrolment_order == 2


def test_chain_of_identity_and_infusion_window(flow: Workflow, clock: FakeClock) -> None:
    enrol(flow, "S-008", START, clock)
    on_day(clock, START + timedelta(days=5))
    flow.leukapheresis(COORDINATOR, "S-008", START + timedelta(days=5), "COI-A", None)
    refused("chain_of_identity", flow.release, COORDINATOR, "S-008", "L1", "COI-B",
            failed=False, reason=None, viable_cells=None, command_id=None)
    flow.release(COORDINATOR, "S-008", "L1", "COI-A", failed=False, reason=None,
                 viable_cells=None, command_id=None)
    d0 = START + timedelta(days=30)
    for offset, cyclo in ((-5, 0.0), (-4, 0.0), (-3, 1620.0)):
        on_day(clock, d0 + timedelta(days=offset))
        flow.lymphodepletion(COORDINATOR, "S-008", d0 + timedelta(days=offset), 40.5, cyclo,
                             deviation=False, reason=None, command_id=None)
    from datetime import datetime

    at = datetime.fromisoformat(f"{d0}T10:00:00+08:00")
    on_day(clock, d0 + timedelta(days=10))
    refused("chain_of_identity", flow.infuse, COORDINATOR, "S-008", at, 5.8e7, "COI-B",
            deviation=False, reason=None, command_id=None)
    refused("infusion_window", flow.infuse, COORDINATOR, "S-008", at + timedelta(days=9),
            5.8e7, "COI-A", deviation=False, reason=None, command_id=None)
    refused("dose_tolerance", flow.infuse, COORDINATOR, "S-008", at, 9e7, "COI-A",
            deviation=False, reason=None, command_id=None)
    flow.infuse(COORDINATOR, "S-008", at, 9e7, "COI-A", deviation=True,
                reason="bag overfilled", command_id=None)
    assert flow.subject("S-008").phase == "follow_up"


def test_lymphodepletion_off_regimen_needs_a_deviation(flow: Workflow, clock: FakeClock) -> None:
    enrol(flow, "S-009", START, clock)
    on_day(clock, START + timedelta(days=5))
    flow.leukapheresis(COORDINATOR, "S-009", START + timedelta(days=5), "C9", None)
    flow.release(COORDINATOR, "S-009", "L9", "C9", failed=False, reason=None,
                 viable_cells=None, command_id=None)
    day = START + timedelta(days=20)
    on_day(clock, day)
    refused("dose_off_regimen", flow.lymphodepletion, COORDINATOR, "S-009", day, 80.0, 0.0,
            deviation=False, reason=None, command_id=None)
    flow.lymphodepletion(COORDINATOR, "S-009", day, 80.0, 0.0, deviation=True,
                         reason="prescribing error", command_id=None)
    assert flow.subject("S-009").phase == "lymphodepletion"


def test_amendment_requires_reconsent(db_url: str, clock: FakeClock) -> None:
    flow = new_study(db_url, clock, protocol_version=1)
    clock.set("2024-09-20T02:00:00+00:00")
    enrol(flow, "S-010", START, clock)
    on_day(clock, START + timedelta(days=5))
    flow.leukapheresis(COORDINATOR, "S-010", START + timedelta(days=5), "C10", None)
    flow.amend_protocol("ada", 2, None)
    assert flow.study().protocol.version == 2
    before = flow.store.last_position()
    refused("reconsent_required", flow.release, COORDINATOR, "S-010", "L", "C10", failed=False,
            reason=None, viable_cells=None, command_id=None)
    assert flow.store.last_position() == before
    flow.reconsent(COORDINATOR, "S-010", None, "3.0", None)
    flow.release(COORDINATOR, "S-010", "L", "C10", failed=False, reason=None, viable_cells=None,
                 command_id=None)
    assert flow.subject("S-010").phase == "lymphodepletion"


def test_repeated_command_id_returns_the_first_result(flow: Workflow) -> None:
    first = flow.consent(COORDINATOR, "S-011", START, "2.0", "consent-S-011")
    again = flow.consent(COORDINATOR, "S-011", START, "2.0", "consent-S-011")
    assert again.result.positions == first.result.positions and again.result.duplicate
    from events.errors import IdempotencyMismatch

    with pytest.raises(IdempotencyMismatch):
        flow.consent(COORDINATOR, "S-011", START, "3.0", "consent-S-011")


def test_correction_keeps_the_original(flow: Workflow) -> None:
    flow.consent(COORDINATOR, "S-012", START, "2.0", None)
    done = flow.record(COORDINATOR, "S-012", "vitals", ["weight_kg=60"], START, None, None)
    position = done.result.positions[0]
    flow.correct(COORDINATOR, "S-012", position, ["weight_kg=61.5"], "transcription", None)
    assert flow.subject("S-012").forms[position].values["weight_kg"] == 61.5
    original = next(e for e in flow.store.read_stream("S-012") if e.position == position)
    assert original.payload["values"]["weight_kg"] == 60
    with pytest.raises(InvalidInput):
        flow.correct(COORDINATOR, "S-012", position, ["weight_kg=61"], "", None)


def test_study_stream_conflict_is_retried_not_lost(flow: Workflow, clock: FakeClock) -> None:
    """A place taken between load and append makes the handler reload, not double-book."""
    screen_eligible(flow, "S-013", START, clock=clock)
    original = flow.study
    calls = {"n": 0}

    def study_then_interfere():  # type: ignore[no-untyped-def]
        state = original()
        calls["n"] += 1
        if calls["n"] == 1:
            flow.store.append("study", state.version, [NewEvent("SiteAdded", {
                "site": "X", "tz": "UTC"})], __import__("events.store").store.AppendContext(
                "ada", "admin"))
        return state

    flow.study = study_then_interfere  # type: ignore[method-assign]
    flow.confirm_eligibility(INVESTIGATOR, "S-013", None)
    assert calls["n"] == 2
    assert ConcurrencyConflict  # the conflict was raised inside and retried
