"""The IM19 path from consent to D360 as decisions: given these events, when this message,
then these events or this refusal (no database; tests/support/ledger.py)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from tests.support.ledger import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    Ledger,
    a_study,
    enrol,
    screen_eligible,
    through_infusion,
    to_lymphodepletion,
    types,
)
from workflow.commands import messages as M
from workflow.errors import InvalidInput, RuleViolation

START = date(2024, 9, 2)


@pytest.fixture
def ledger() -> Ledger:
    return a_study()


def refused(ledger: Ledger, rule: str, user: str, message: M.Message) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        ledger.decide(user, message)
    assert caught.value.rule == rule, caught.value.message
    return caught.value


def test_whole_path_from_consent_to_d360(ledger: Ledger) -> None:
    d0 = through_infusion(ledger, "S-001", START)
    state = ledger.subject("S-001")
    assert state.phase == "follow_up" and state.infused_on == d0
    assert state.cohort == ledger.study().protocol.cohort_for(1).code
    for visit in ledger.study().protocol.visits:
        ledger.at(d0 + timedelta(days=visit.target_day))
        ledger.send(COORDINATOR, M.RecordVisit("S-001", visit.code, "done",
                                               d0 + timedelta(days=visit.target_day)))
    assert types(ledger.send(COORDINATOR, M.CompleteStudy("S-001"))) == [
        "SubjectCompleted", "PhaseChanged"]
    assert ledger.subject("S-001").phase == "completed"
    phases = [e.payload["to"] for e in ledger.stream("S-001") if e.type == "PhaseChanged"]
    assert phases == ["cell_collection", "lymphodepletion", "infusion", "follow_up", "completed"]
    refused(ledger, "phase", COORDINATOR, M.TakeOffStudy("S-001", "death"))


def test_consent_records_site_protocol_and_clinical_date(ledger: Ledger) -> None:
    ledger.at(START + timedelta(days=2))
    (consented,) = ledger.send(COORDINATOR, M.ConsentSubject("S-001", START, "2.0"))
    assert consented.type == "SubjectConsented"
    assert consented.payload == {"subject": "S-001", "site": "PKU3",
                                 "consent_date": "2024-09-02", "consent_form_version": "2.0",
                                 "protocol_version": 2}
    assert consented.occurred_at == "2024-09-02T00:00:00+08:00"  # midnight at the site
    refused(ledger, "already_consented", COORDINATOR, M.ConsentSubject("S-001", START, "2.0"))


def test_refusals_name_their_rule(ledger: Ledger) -> None:
    screen_eligible(ledger, "S-002", START)
    refused(ledger, "phase", COORDINATOR, M.RecordLeukapheresis("S-002", START, "C1"))
    error = refused(ledger, "role", COORDINATOR, M.ConfirmEligibility("S-002"))
    assert "only an investigator" in error.message
    refused(ledger, "role", MONITOR, M.RecordForm("S-002", "vitals", ("weight_kg=60",), START))
    refused(ledger, "site", "otto", M.RecordForm("S-002", "vitals", ("weight_kg=60",), START))
    refused(ledger, "assessment_before_consent", COORDINATOR,
            M.RecordForm("S-002", "vitals", ("weight_kg=60",), START - timedelta(days=1)))
    refused(ledger, "not_consented", COORDINATOR,
            M.RecordForm("S-404", "vitals", ("weight_kg=60",), START))
    with pytest.raises(InvalidInput):
        ledger.decide(COORDINATOR, M.RecordForm("S-002", "vitals", ("weight_kg=abc",), START))
    with pytest.raises(InvalidInput):
        ledger.decide(COORDINATOR, M.RecordForm("S-002", "infusion", ("cells=1",), START))
    with pytest.raises(InvalidInput, match="in the future"):
        ledger.decide(COORDINATOR, M.RecordForm("S-002", "vitals", ("weight_kg=60",),
                                                date(2030, 1, 1)))


def test_a_message_that_cannot_exist_is_bad_input() -> None:
    with pytest.raises(InvalidInput):
        M.TakeOffStudy("S-001", "bored")
    with pytest.raises(InvalidInput):
        M.Infuse("S-001", datetime(2025, 1, 1), float("nan"), "C")
    with pytest.raises(InvalidInput):
        M.GiveLymphodepletion("S-001", START, 40.0, 0.0, deviation=True)  # no reason
    with pytest.raises(InvalidInput):
        M.AddSite("X", "Mars/Olympus")
    from events.errors import InvalidStreamId

    with pytest.raises(InvalidStreamId):
        M.ConsentSubject("s-lower", START, "2.0")


def test_history_may_predate_consent(ledger: Ledger) -> None:
    ledger.at(START)
    ledger.send(COORDINATOR, M.ConsentSubject("S-003", START, "2.0"))
    ledger.send(COORDINATOR, M.RecordForm("S-003", "prior_treatment", (
        "drug=rituximab", "drug_class=biologic", "start_date=2020-01-01"), START))
    assert len(ledger.subject("S-003").forms_of("prior_treatment")) == 1


def test_deactivated_user_is_refused(ledger: Ledger) -> None:
    ledger.send(ADMIN, M.DeactivateUser(COORDINATOR))
    refused(ledger, "user_deactivated", COORDINATOR, M.ConsentSubject("S-004", START, "2.0"))


def test_ineligible_subject_cannot_be_confirmed(ledger: Ledger) -> None:
    screen_eligible(ledger, "S-005", START, weight_kg=38)
    error = refused(ledger, "eligibility:weight", INVESTIGATOR, M.ConfirmEligibility("S-005"))
    assert "S-005" in error.message
    assert types(ledger.send(COORDINATOR, M.RecordScreenFailure("S-005", "weight"))) == [
        "ScreenFailed", "PhaseChanged"]
    assert ledger.subject("S-005").phase == "screen_failed"


def test_screening_window_expires(ledger: Ledger) -> None:
    screen_eligible(ledger, "S-006", START)
    ledger.at(START + timedelta(days=43))
    refused(ledger, "screening_window_expired", INVESTIGATOR, M.ConfirmEligibility("S-006"))


def test_enrolment_takes_a_place_in_the_study_stream(ledger: Ledger) -> None:
    screen_eligible(ledger, "S-001", START)
    ledger.at(START + timedelta(days=3))
    decision = ledger.decide(INVESTIGATOR, M.ConfirmEligibility("S-001"))
    streams = {w.stream: [e.type for e in w.events] for w in decision.writes}
    assert streams == {"S-001": ["EligibilityConfirmed", "PhaseChanged"],
                       "study": ["EnrolmentPlaceTaken"]}
    assert decision.summary["enrolment_order"] == 1


def test_cap_cohorts_and_a_freed_place(ledger: Ledger) -> None:
    for n in range(1, 7):
        enrol(ledger, f"S-{n:03d}", START)
    cohorts = [ledger.subject(f"S-{n:03d}").cohort for n in range(1, 7)]
    assert cohorts[:3] == [cohorts[0]] * 3 and cohorts[3:] == [cohorts[3]] * 3
    assert cohorts[0] != cohorts[3]
    screen_eligible(ledger, "S-007", START)
    ledger.at(START + timedelta(days=4))
    refused(ledger, "enrolment_cap", INVESTIGATOR, M.ConfirmEligibility("S-007"))
    freed = ledger.send(COORDINATOR, M.TakeOffStudy("S-002", "consent_withdrawn"))
    assert "EnrolmentPlaceFreed" in types(freed)  # before infusion: the place is free again
    ledger.send(INVESTIGATOR, M.ConfirmEligibility("S-007"))
    assert ledger.subject("S-007").enrolment_order == 2


def test_no_place_is_freed_after_infusion(ledger: Ledger) -> None:
    through_infusion(ledger, "S-001", START)
    assert types(ledger.send(COORDINATOR, M.TakeOffStudy("S-001", "lost_to_follow_up"))) == [
        "SubjectWentOffStudy", "PhaseChanged"]


def test_chain_of_identity_and_infusion_window(ledger: Ledger) -> None:
    enrol(ledger, "S-008", START)
    ledger.at(START + timedelta(days=5))
    ledger.send(COORDINATOR, M.RecordLeukapheresis("S-008", START + timedelta(days=5), "COI-A"))
    refused(ledger, "chain_of_identity", COORDINATOR, M.ReleaseProduct("S-008", "L1", "COI-B"))
    ledger.send(COORDINATOR, M.ReleaseProduct("S-008", "L1", "COI-A"))
    d0 = START + timedelta(days=30)
    for offset, cyclo in ((-5, 0.0), (-4, 0.0), (-3, 1620.0)):
        ledger.at(d0 + timedelta(days=offset))
        ledger.send(COORDINATOR, M.GiveLymphodepletion("S-008", d0 + timedelta(days=offset),
                                                       40.5, cyclo))
    at = datetime.fromisoformat(f"{d0}T10:00:00+08:00")
    ledger.at(d0 + timedelta(days=10))
    refused(ledger, "chain_of_identity", COORDINATOR, M.Infuse("S-008", at, 5.8e7, "COI-B"))
    refused(ledger, "infusion_window", COORDINATOR,
            M.Infuse("S-008", at + timedelta(days=9), 5.8e7, "COI-A"))
    refused(ledger, "dose_tolerance", COORDINATOR, M.Infuse("S-008", at, 9e7, "COI-A"))
    infused = ledger.send(COORDINATOR, M.Infuse("S-008", at, 9e7, "COI-A", deviation=True,
                                                reason="bag overfilled"))
    assert infused[0].reason == "bag overfilled" and infused[0].payload["deviation"] is True
    assert ledger.subject("S-008").phase == "follow_up"


def test_lymphodepletion_off_regimen_needs_a_deviation(ledger: Ledger) -> None:
    to_lymphodepletion(ledger, "S-009", START)
    day = START + timedelta(days=25)
    ledger.at(day)
    refused(ledger, "dose_off_regimen", COORDINATOR, M.GiveLymphodepletion("S-009", day, 80.0,
                                                                             0.0))
    (dose,) = ledger.send(COORDINATOR, M.GiveLymphodepletion("S-009", day, 80.0, 0.0, True,
                                                             "prescribing error"))
    assert dose.reason == "prescribing error" and dose.payload["deviation"] is True
    assert ledger.subject("S-009").phase == "lymphodepletion"


def test_a_dose_within_tolerance_is_not_a_deviation(ledger: Ledger) -> None:
    to_lymphodepletion(ledger, "S-009", START)
    day = START + timedelta(days=25)
    ledger.at(day)
    # expected 25 mg/m2 x 1.62 m2 = 40.5 mg; +19% is inside the default ±20%
    (dose,) = ledger.send(COORDINATOR, M.GiveLymphodepletion("S-009", day, 48.2, 0.0))
    assert dose.reason is None and dose.payload["deviation"] is False


def test_amendment_requires_reconsent() -> None:
    ledger = a_study(protocol_version=1)
    enrol(ledger, "S-010", START)
    ledger.at(START + timedelta(days=5))
    ledger.send(COORDINATOR, M.RecordLeukapheresis("S-010", START + timedelta(days=5), "C10"))
    ledger.send(ADMIN, M.AmendProtocol(2, ledger.amendment(ledger.study(), 2).digest))
    assert ledger.study().protocol.version == 2
    refused(ledger, "reconsent_required", COORDINATOR, M.ReleaseProduct("S-010", "L", "C10"))
    ledger.send(COORDINATOR, M.ReconsentSubject("S-010", "3.0"))
    ledger.send(COORDINATOR, M.ReleaseProduct("S-010", "L", "C10"))
    assert ledger.subject("S-010").phase == "lymphodepletion"


def test_correction_keeps_the_original(ledger: Ledger) -> None:
    ledger.at(START)
    ledger.send(COORDINATOR, M.ConsentSubject("S-012", START, "2.0"))
    (recorded,) = ledger.send(COORDINATOR, M.RecordForm("S-012", "vitals", ("weight_kg=60",),
                                                        START))
    (corrected,) = ledger.send(COORDINATOR, M.CorrectRecord("S-012", recorded.position,
                                                            ("weight_kg=61.5",), "transcription"))
    assert corrected.payload == {"target_position": recorded.position, "form": "vitals",
                                 "changes": {"weight_kg": 61.5}, "previous": {"weight_kg": 60}}
    assert corrected.reason == "transcription"
    assert ledger.subject("S-012").forms[recorded.position].values["weight_kg"] == 61.5
    assert recorded.payload["values"]["weight_kg"] == 60
    with pytest.raises(InvalidInput):
        M.CorrectRecord("S-012", recorded.position, ("weight_kg=61",), "")
    with pytest.raises(InvalidInput, match="no form or procedure recorded at position 999"):
        ledger.decide(COORDINATOR, M.CorrectRecord("S-012", 999, ("weight_kg=61",), "typo"))


def test_the_infusion_time_and_cells_are_corrected_its_chain_of_identity_is_not(
        ledger: Ledger) -> None:
    d0 = through_infusion(ledger, "S-001", START)
    infusion = ledger.subject("S-001").infusion
    assert infusion is not None
    ledger.at(d0 + timedelta(days=2))
    (corrected,) = ledger.send(COORDINATOR, M.CorrectRecord(
        "S-001", infusion.position, (f"infused_at={d0 + timedelta(days=1)}T09:00:00+08:00",),
        "time from the nursing chart"))
    assert ledger.subject("S-001").infused_on == d0 + timedelta(days=1)
    with pytest.raises(InvalidInput, match=r"coi_id of the infusion .* cannot be corrected "
                       r"\(only infused_at, cells\)"):
        ledger.decide(COORDINATOR, M.CorrectRecord("S-001", infusion.position,
                                                   ("coi_id=OTHER",), "no"))
    assert corrected.payload["previous"] == {"infused_at": f"{d0}T10:00:00+08:00"}


def test_a_decision_touches_nothing_but_its_arguments(ledger: Ledger) -> None:
    """The same message against the same context gives the same decision, twice."""
    screen_eligible(ledger, "S-013", START)
    ledger.at(START + timedelta(days=3))
    first = ledger.decide(INVESTIGATOR, M.ConfirmEligibility("S-013"))
    again = ledger.decide(INVESTIGATOR, M.ConfirmEligibility("S-013"))
    assert first == again
    assert ledger.subject("S-013").phase == "screening"  # deciding appended nothing
