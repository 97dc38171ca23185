"""One record per act, and every record mendable (issue 15): a second record of a one-time act
is refused naming the first; `void` marks any record entered in error and `correct` changes
any record's values, procedure dates included; a mend is refused when the subject's dates
would then break the phase order, and lists the deviations it implies. On SQLite and
PostgreSQL, through the one executor."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from events.envelope import RecordedEvent
from tests.support.clock import FakeClock
from tests.support.study import (
    ADMIN,
    COORDINATOR,
    INVESTIGATOR,
    MONITOR,
    Desk,
    amend,
    enrol,
    new_study,
    on_day,
    through_infusion,
    to_lymphodepletion,
)
from tests.support.study import (
    refused as refused_by,
)
from workflow import event_types as T
from workflow.commands import messages as M
from workflow.commands.mend import _differs
from workflow.deviations import deviations
from workflow.errors import InvalidInput, RuleViolation
from workflow.phase_order import history_problems
from workflow.signing import superseded_by

START = date(2025, 3, 3)


@pytest.fixture
def desk(db_url: str) -> tuple[Desk, FakeClock]:
    clock = FakeClock(datetime(2025, 3, 3, 4, tzinfo=UTC))
    return new_study(db_url, clock), clock


def refused(flow: Desk, message: M.Message, rule: str, *words: str,
            user: str = COORDINATOR) -> RuleViolation:
    return refused_by(flow, user, message, rule, *words)


def written(flow: Desk, user: str, message: M.Message) -> list[RecordedEvent]:
    """Send `message`; the events it appended."""
    positions = set(flow.send(user, message).result.positions)
    return [e for e in flow.store.read_stream(message.subject)  # type: ignore[attr-defined]
            if e.position in positions]


def position_of(flow: Desk, subject: str, event_type: str, nth: int = -1) -> int:
    return [e.position for e in flow.store.read_stream(subject) if e.type == event_type][nth]


# --- one record per act -------------------------------------------------------------------


def test_a_second_leukapheresis_is_refused_until_the_product_fails(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    on_day(clock, START + timedelta(days=8))
    flow.send(COORDINATOR, M.RecordLeukapheresis("S-001", START + timedelta(days=7), "C-1"))
    first = position_of(flow, "S-001", T.LEUKAPHERESIS_RECORDED)
    refused(flow, M.RecordLeukapheresis("S-001", START + timedelta(days=8), "C-1"),
            "already_recorded", f"position {first}", "2025-03-10",
            f"trialflow correct S-001 {first}", f"trialflow void S-001 {first}")
    flow.send(COORDINATOR, M.ReleaseProduct("S-001", "LOT", "C-1", failed=True,
                                            reason="sterility", on=START + timedelta(days=8)))
    failed = position_of(flow, "S-001", T.PRODUCT_RELEASE_FAILED)
    refused(flow, M.ReleaseProduct("S-001", "LOT", "C-1", on=START + timedelta(days=8)),
            "already_recorded", f"position {failed}")
    # a new collection attempt after a failed release is ordinary
    flow.send(COORDINATOR, M.RecordLeukapheresis("S-001", START + timedelta(days=8), "C-2"))
    assert flow.subject("S-001").collection_coi == "C-2"


def test_release_infusion_visit_and_regimen_day_are_recorded_once(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    to_lymphodepletion(flow, "S-001", START, clock)
    released = position_of(flow, "S-001", T.PRODUCT_RELEASED)
    refused(flow, M.ReleaseProduct("S-001", "LOT-2", "COI-S-001"), "already_recorded",
            f"position {released}")
    d0 = START + timedelta(days=30)
    on_day(clock, d0 - timedelta(days=5))
    flow.send(COORDINATOR, M.GiveLymphodepletion("S-001", d0 - timedelta(days=5), 40.5, 0.0))
    dose = position_of(flow, "S-001", T.LYMPHODEPLETION_GIVEN)
    refused(flow, M.GiveLymphodepletion("S-001", d0 - timedelta(days=5), 40.5, 0.0),
            "already_recorded", f"position {dose}", "regimen day D-5")

    flow2, clock2 = flow, clock
    d0 = through_infusion(flow2, "S-002", START, clock2)
    infusion = position_of(flow2, "S-002", T.INFUSION_GIVEN)
    refused(flow2, M.Infuse("S-002", datetime.fromisoformat(f"{d0}T11:00:00+08:00"), 1e8,
                            "COI-S-002"), "already_recorded", f"position {infusion}")
    on_day(clock2, d0 + timedelta(days=7))
    flow2.send(COORDINATOR, M.RecordVisit("S-002", "D7", "done", d0 + timedelta(days=7)))
    visit = position_of(flow2, "S-002", T.VISIT_RECORDED)
    refused(flow2, M.RecordVisit("S-002", "D7", "done", d0 + timedelta(days=7)),
            "visit_already_recorded", f"position {visit}", f"trialflow void S-002 {visit}")


def test_the_same_adverse_event_entered_twice_is_refused(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=3))
    crs = ("term=cytokine release syndrome", "category=crs", f"onset_date={d0 + timedelta(1)}",
           "grade=1", "temperature_c=38.6")
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", crs))
    first = position_of(flow, "S-001", T.FORM_RECORDED)
    refused(flow, M.RecordForm("S-001", "adverse_event",
                               ("term=Cytokine release syndrome", *crs[1:])),
            "already_recorded", f"position {first}")


# --- void ---------------------------------------------------------------------------------


def test_a_voided_form_leaves_every_read_model_and_stays_in_the_log(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=99",), START))
    wrong = position_of(flow, "S-001", T.FORM_RECORDED)
    assert flow.subject("S-001").forms[wrong].values["weight_kg"] == 99
    (voided,) = written(flow, COORDINATOR, M.VoidRecord("S-001", wrong, "entered twice"))
    assert voided.type == T.RECORD_VOIDED and voided.reason == "entered twice"
    assert voided.payload == {"target_position": wrong, "form": "vitals"}
    state = flow.subject("S-001")
    assert wrong not in state.forms and state.voided[wrong].void_position == voided.position
    assert state.latest_value("vitals", "weight_kg") == 58
    assert any(e.position == wrong for e in flow.store.read_stream("S-001"))  # kept
    refused(flow, M.VoidRecord("S-001", wrong, "again"), "record_voided",
            f"voided at position {voided.position}")
    refused(flow, M.CorrectRecord("S-001", wrong, ("weight_kg=60",), "x"), "record_voided")
    refused(flow, M.VoidRecord("S-001", state.consent.position if state.consent else 0, "x"),
            "not_voidable", "consent")
    with pytest.raises(InvalidInput, match="no form or procedure recorded at position"):
        flow.send(COORDINATOR, M.VoidRecord("S-001", 10**6, "x"))
    with pytest.raises(InvalidInput, match="needs --reason"):
        M.VoidRecord("S-001", wrong, "  ")


def test_voids_walk_the_procedures_back_in_order(desk: tuple[Desk, FakeClock]) -> None:
    """A procedure others rest on cannot be voided; voiding the last procedure of a phase
    takes the subject back to the phase before it; a voided act can be recorded anew."""
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=7))
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D7", "done", d0 + timedelta(days=7)))
    visit = position_of(flow, "S-001", T.VISIT_RECORDED)
    infusion = position_of(flow, "S-001", T.INFUSION_GIVEN)
    collection = position_of(flow, "S-001", T.LEUKAPHERESIS_RECORDED)
    release = position_of(flow, "S-001", T.PRODUCT_RELEASED)
    doses = [e.position for e in flow.store.read_stream("S-001")
             if e.type == T.LYMPHODEPLETION_GIVEN]
    refused(flow, M.VoidRecord("S-001", infusion, "x"), "record_has_dependants",
            f"visit D7 at position {visit}")
    refused(flow, M.VoidRecord("S-001", collection, "x"), "record_has_dependants",
            f"product release at position {release}")
    refused(flow, M.VoidRecord("S-001", doses[0], "x"), "record_has_dependants",
            f"lymphodepletion dose at position {doses[1]}")
    flow.send(COORDINATOR, M.VoidRecord("S-001", visit, "wrong subject's visit"))
    assert "D7" not in flow.subject("S-001").visits
    flow.send(COORDINATOR, M.VoidRecord("S-001", infusion, "infusion entered for S-001 by "
                                        "mistake"))
    state = flow.subject("S-001")
    assert (state.phase, state.infusion, state.infused_on) == ("infusion", None, None)
    flow.send(COORDINATOR, M.VoidRecord("S-001", doses[-1], "dose of another subject"))
    state = flow.subject("S-001")
    assert state.phase == "lymphodepletion" and len(state.doses) == 2
    for dose in reversed(doses[:-1]):
        flow.send(COORDINATOR, M.VoidRecord("S-001", dose, "not given"))
    flow.send(COORDINATOR, M.VoidRecord("S-001", release, "released the wrong lot"))
    state = flow.subject("S-001")
    assert (state.phase, state.released_on, state.product_coi) == ("cell_collection", None,
                                                                   None)
    flow.send(COORDINATOR, M.VoidRecord("S-001", collection, "wrong date and id"))
    state = flow.subject("S-001")
    assert (state.collected_on, state.collection_coi) == (None, None)
    assert history_problems(state, d0 + timedelta(days=7)) == []
    # a voided act is recorded anew, in phase order
    flow.send(COORDINATOR, M.RecordLeukapheresis("S-001", START + timedelta(days=9), "C-9"))
    assert flow.subject("S-001").collection_coi == "C-9"
    phases = [e.payload["to"] for e in flow.store.read_stream("S-001")
              if e.type == T.PHASE_CHANGED]
    assert phases[-3:] == ["infusion", "lymphodepletion", "cell_collection"]


def test_a_void_is_role_and_site_checked_like_a_correction(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=70",), START))
    wrong = position_of(flow, "S-001", T.FORM_RECORDED)
    before = flow.store.last_position()
    for user in ("otto", "mona", "audrey"):  # another site's coordinator, monitor, auditor
        with pytest.raises(RuleViolation):
            flow.send(user, M.VoidRecord("S-001", wrong, "x"))
    assert flow.store.last_position() == before


# --- corrections of procedures --------------------------------------------------------------


def test_procedure_dates_are_corrected_in_phase_order(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    to_lymphodepletion(flow, "S-001", START, clock)
    collection = position_of(flow, "S-001", T.LEUKAPHERESIS_RECORDED)
    release = position_of(flow, "S-001", T.PRODUCT_RELEASED)
    state = flow.subject("S-001")
    assert state.eligibility_confirmed_on == START + timedelta(days=3)
    on_day(clock, START + timedelta(days=25))
    refused(flow, M.CorrectRecord("S-001", collection, ("collected_on=2025-03-05",), "typo"),
            "phase_order", "leukapheresis on 2025-03-05", "eligibility confirmation on "
            "2025-03-06")
    refused(flow, M.CorrectRecord("S-001", collection, ("collected_on=2025-03-25",), "typo"),
            "phase_order", "product release on 2025-03-23", "leukapheresis on 2025-03-25")
    refused(flow, M.CorrectRecord("S-001", release, ("released_on=2025-03-09",), "typo"),
            "phase_order", "product release on 2025-03-09", "leukapheresis on 2025-03-10")
    refused(flow, M.CorrectRecord("S-001", collection, ("coi_id=C-X",), "typo"),
            "chain_of_identity", f"product release at position {release}")
    flow.send(COORDINATOR, M.CorrectRecord("S-001", collection, ("collected_on=2025-03-11",),
                                           "date from the apheresis log"))
    flow.send(COORDINATOR, M.CorrectRecord("S-001", release, ("released_on=2025-03-21",
                                                              "viable_cells=3e8"), "CoA"))
    state = flow.subject("S-001")
    assert (state.collected_on, state.released_on) == (date(2025, 3, 11), date(2025, 3, 21))
    assert state.releases[-1].payload["viable_cells"] == 3e8
    with pytest.raises(InvalidInput, match="lot, viable_cells"):
        flow.send(COORDINATOR, M.CorrectRecord("S-001", release, ("qc=fail",), "x"))
    # the future is refused for a corrected date as for an original one
    with pytest.raises(InvalidInput, match="in the future"):
        flow.send(COORDINATOR, M.CorrectRecord("S-001", release, ("released_on=2026-01-01",),
                                               "x"))


def test_a_consent_date_is_corrected_only_before_everything_that_follows_it(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    state = flow.subject("S-001")
    assert state.consent is not None
    refused(flow, M.CorrectRecord("S-001", state.consent.position,
                                  ("consent_date=2025-03-04",), "typo"),
            "phase_order", "before the consent on 2025-03-04")
    flow.send(COORDINATOR, M.CorrectRecord("S-001", state.consent.position,
                                           ("consent_date=2025-03-01",), "signed date"))
    assert flow.subject("S-001").consent.consent_date == date(2025, 3, 1)  # type: ignore[union-attr]


def test_regimen_dates_and_the_infusion_stay_in_order_and_in_window(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    doses = [e.position for e in flow.store.read_stream("S-001")
             if e.type == T.LYMPHODEPLETION_GIVEN]
    infusion = position_of(flow, "S-001", T.INFUSION_GIVEN)
    on_day(clock, d0 + timedelta(days=2))
    refused(flow, M.CorrectRecord("S-001", doses[1], (f"given_on={d0 - timedelta(5)}",), "x"),
            "phase_order", "lymphodepletion dose 2", "not after")
    refused(flow, M.CorrectRecord("S-001", doses[2], (f"given_on={d0 + timedelta(1)}",), "x"),
            "phase_order", f"infusion (D0) on {d0}")
    refused(flow, M.CorrectRecord("S-001", infusion, (f"infused_at={d0 - timedelta(4)}T10:00",),
                                  "x"), "phase_order", "lymphodepletion dose 3")
    refused(flow, M.CorrectRecord("S-001", infusion, (f"infused_at={d0 - timedelta(2)}T10:00",),
                                  "x"), "infusion_window", "1 days after")
    refused(flow, M.CorrectRecord("S-001", doses[0], (f"given_on={d0 - timedelta(12)}",), "x"),
            "phase_order", "product release")
    with pytest.raises(RuleViolation, match=r"allows 2 to 7 days") as caught:
        flow.send(COORDINATOR, M.CorrectRecord("S-001", doses[2],
                                               (f"given_on={d0 - timedelta(1)}",), "x"))
    assert caught.value.rule == "infusion_window"


def test_a_corrected_dose_basis_recomputes_the_dose_check(
        desk: tuple[Desk, FakeClock]) -> None:
    """Weight corrected to 35 kg after infusion: the dose given is now far above the target
    for 35 kg, the correction says so at once and the deviations read model lists it."""
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=1))
    vitals = next(e.position for e in flow.store.read_stream("S-001")
                  if e.type == T.FORM_RECORDED and e.payload["form"] == "vitals")
    study = flow.study()
    assert deviations(flow.subject("S-001"), study.protocol_of) == []
    outcome = flow.send(COORDINATOR, M.CorrectRecord("S-001", vitals, ("weight_kg=35",),
                                                     "kg misread"))
    kinds = [w for w in outcome.summary["warnings"]]
    assert any("dose_out_of_tolerance" in w for w in kinds), kinds
    assert any("dose_off_regimen" in w for w in kinds), kinds  # BSA moved the regimen too
    found = {row["kind"] for row in deviations(flow.subject("S-001"), study.protocol_of)}
    assert {"dose_out_of_tolerance", "dose_off_regimen"} <= found
    # corrected back: the deviations it implied are resolved
    again = flow.send(COORDINATOR, M.CorrectRecord("S-001", vitals, ("weight_kg=58",),
                                                   "source re-read"))
    assert again.summary["warnings"] == [] and len(again.summary["deviations_resolved"]) >= 2
    assert deviations(flow.subject("S-001"), study.protocol_of) == []


def test_corrected_cells_recompute_the_dose_check(desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    through_infusion(flow, "S-001", START, clock)
    infusion = position_of(flow, "S-001", T.INFUSION_GIVEN)
    outcome = flow.send(COORDINATOR, M.CorrectRecord("S-001", infusion, ("cells=9e8",),
                                                     "bag label"))
    assert [w for w in outcome.summary["warnings"] if "dose_out_of_tolerance" in w]
    assert flow.subject("S-001").infusion.payload["cells"] == 9e8  # type: ignore[union-attr]


def test_a_signed_record_that_is_voided_shows_its_signature_stale(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=70",), START))
    form = position_of(flow, "S-001", T.FORM_RECORDED)
    flow.send(INVESTIGATOR, M.Sign("S-001", form, "reviewed"))
    assert superseded_by(flow.store.read_stream("S-001"), form) == []
    (voided,) = written(flow, COORDINATOR, M.VoidRecord("S-001", form, "entered for the "
                                                        "wrong subject"))
    assert superseded_by(flow.store.read_stream("S-001"), form) == [voided.position]


# --- dated acts: confirmation, completion, exit ---------------------------------------------


def test_the_dates_of_confirmation_and_exit_are_corrected_like_the_acts(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    to_lymphodepletion(flow, "S-001", START, clock)
    confirmed = position_of(flow, "S-001", T.ELIGIBILITY_CONFIRMED)
    refused(flow, M.CorrectRecord("S-001", confirmed, ("confirmed_on=2025-03-11",), "x"),
            "phase_order", "leukapheresis on 2025-03-10",
            "eligibility confirmation on 2025-03-11")
    refused(flow, M.CorrectRecord("S-001", confirmed, ("confirmed_on=2025-03-02",), "x"),
            "phase_order", "consent on 2025-03-03")
    with pytest.raises(InvalidInput, match="by its date alone: confirmed_on=YYYY-MM-DD"):
        flow.send(COORDINATOR, M.CorrectRecord("S-001", confirmed, ("cohort=B",), "x"))
    flow.send(COORDINATOR, M.CorrectRecord("S-001", confirmed, ("confirmed_on=2025-03-05",),
                                           "date of the investigator's signature"))
    assert flow.subject("S-001").eligibility_confirmed_on == date(2025, 3, 5)
    refused(flow, M.VoidRecord("S-001", confirmed, "x"), "not_voidable")
    on_day(clock, START + timedelta(days=25))
    flow.send(COORDINATOR, M.TakeOffStudy("S-001", "consent_withdrawn",
                                          START + timedelta(days=24)))
    left = position_of(flow, "S-001", T.SUBJECT_OFF_STUDY)
    refused(flow, M.CorrectRecord("S-001", left, ("left_on=2025-03-20",), "x"),
            "phase_order", "product release on 2025-03-23")
    flow.send(COORDINATOR, M.CorrectRecord("S-001", left, ("left_on=2025-03-25",), "letter"))
    state = flow.subject("S-001")
    assert (state.exited_on, state.phase, state.phase_since) == (
        date(2025, 3, 25), "off_study", date(2025, 3, 25))


def test_a_mend_that_moves_a_phase_boundary_keeps_forms_where_they_belong(
        desk: tuple[Desk, FakeClock]) -> None:
    """cart_persistence belongs in follow-up: once one is recorded after D0, D0 cannot move
    past it, and the infusion cannot be voided from under it."""
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=2))
    flow.send(COORDINATOR, M.RecordForm("S-001", "cart_persistence", (
        f"sample_date={d0 + timedelta(days=1)}", "copies_per_ug=120"), d0 + timedelta(days=1)))
    infusion = position_of(flow, "S-001", T.INFUSION_GIVEN)
    persistence = position_of(flow, "S-001", T.FORM_RECORDED)
    refused(flow, M.CorrectRecord("S-001", infusion,
                                  (f"infused_at={d0 + timedelta(days=2)}T09:00",), "x"),
            "form_not_in_phase", f"cart_persistence at position {persistence}")
    refused(flow, M.VoidRecord("S-001", infusion, "x"), "form_not_in_phase",
            f"cart_persistence at position {persistence}")


def test_a_later_consent_date_must_keep_every_record_after_it(
        desk: tuple[Desk, FakeClock]) -> None:
    """A consent corrected to a later date is refused when an AE began before it, and when
    the eligibility confirmation would then fall outside the screening window of an earlier
    one (corrected earlier: 28 days)."""
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=cough", f"onset_date={START + timedelta(days=1)}", "grade=1"),
        START + timedelta(days=1)))
    consent = flow.subject("S-001").consent
    assert consent is not None
    refused(flow, M.CorrectRecord("S-001", consent.position,
                                  (f"consent_date={START + timedelta(days=2)}",), "x"),
            "phase_order", "before the consent on 2025-03-05")
    # a subject with only the AE after consent: the AE's onset is what holds the date back
    flow.send(COORDINATOR, M.ConsentSubject("S-002", START, "2.0"))
    flow.send(COORDINATOR, M.RecordForm("S-002", "adverse_event", (
        "term=cough", f"onset_date={START + timedelta(days=1)}", "grade=1"),
        START + timedelta(days=1)))
    second = flow.subject("S-002").consent
    assert second is not None
    refused(flow, M.CorrectRecord("S-002", second.position,
                                  (f"consent_date={START + timedelta(days=2)}",), "x"),
            "phase_order", "adverse_event", "before the consent on 2025-03-05")
    refused(flow, M.CorrectRecord("S-001", consent.position,
                                  (f"consent_date={START - timedelta(days=40)}",), "x"),
            "screening_window_expired")


def test_exits_and_completion_come_after_the_forms_before_them(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    on_day(clock, START + timedelta(days=12))
    flow.send(COORDINATOR, M.RecordForm("S-001", "labs", ("egfr_ml_min=90",),
                                        START + timedelta(days=10)))
    refused(flow, M.TakeOffStudy("S-001", "investigator_decision", START + timedelta(days=8)),
            "phase_order", "labs")


def test_the_same_adverse_event_is_found_through_spacing_and_corrections(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    onset = f"onset_date={START + timedelta(days=1)}"
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=Cytokine release syndrome", onset, "grade=1"), START + timedelta(days=1)))
    first = position_of(flow, "S-001", T.FORM_RECORDED)
    refused(flow, M.RecordForm("S-001", "adverse_event", (
        "term=cytokine\u00a0release  syndrome", onset, "grade=1"), START + timedelta(days=1)),
        "already_recorded", f"position {first}")
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        "term=headache", onset, "grade=1"), START + timedelta(days=1)))
    other = position_of(flow, "S-001", T.FORM_RECORDED)
    refused(flow, M.CorrectRecord("S-001", other, ("term=Cytokine release syndrome",), "x"),
            "already_recorded", f"position {first}")
    flow.send(COORDINATOR, M.VoidRecord("S-001", other, "entered twice"))
    refused(flow, M.Sign("S-001", other, "reviewed"), "record_voided", user=INVESTIGATOR)


def test_the_phase_history_of_fhir_and_the_swimmer_follows_mends(
        desk: tuple[Desk, FakeClock]) -> None:
    from projections.exports.fhir import phase_history
    from projections.reports.data import phase_entries

    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    release = position_of(flow, "S-001", T.PRODUCT_RELEASED)
    infusion = position_of(flow, "S-001", T.INFUSION_GIVEN)
    flow.send(COORDINATOR, M.CorrectRecord("S-001", release, ("released_on=2025-03-22",), "CoA"))
    flow.send(COORDINATOR, M.VoidRecord("S-001", infusion, "wrong bag"))
    state = flow.subject("S-001")
    protocol = flow.study().protocol_of(state.protocol_version)
    expected = [("screening", START), ("cell_collection", START + timedelta(days=3)),
                ("lymphodepletion", date(2025, 3, 22)), ("infusion", d0 - timedelta(days=3))]
    assert [(e.phase, e.on) for e in phase_entries(state, protocol)] == expected
    assert [(phase, on) for phase, on, _ in phase_history(state, protocol)] == expected


def test_an_sae_is_known_after_it_began_and_reported_after_it_was_known(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=5))
    serious = ("term=pneumonia", f"onset_date={d0 + timedelta(days=3)}", "grade=3",
               "serious_criteria=hospitalisation")
    refused(flow, M.RecordForm("S-001", "adverse_event", (
        *serious, f"awareness_at={d0 + timedelta(days=2)}T09:00")),
        "phase_order", "awareness_at", "before its onset_date")
    flow.send(COORDINATOR, M.RecordForm("S-001", "adverse_event", (
        *serious, f"awareness_at={d0 + timedelta(days=3)}T09:00")))
    ae = position_of(flow, "S-001", T.FORM_RECORDED)
    refused(flow, M.RecordForm("S-001", "sae_report", (
        f"ae_position={ae}", "report_kind=initial",
        f"sent_at={d0 + timedelta(days=2)}T10:00")), "phase_order", "sent_at")
    refused(flow, M.CorrectRecord("S-001", ae, (f"onset_date={d0 + timedelta(days=4)}",), "x"),
            "phase_order", "before its onset_date")


def test_a_visit_before_the_end_is_entered_after_it_and_no_later_one(
        desk: tuple[Desk, FakeClock]) -> None:
    """Retrospective entry after an exit: a visit that happened between D0 and the exit is
    recorded; one dated after the exit is refused; a procedure that opened a phase is not
    voided after the end (its date is corrected instead)."""
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=40))
    flow.send(COORDINATOR, M.TakeOffStudy("S-001", "lost_to_follow_up",
                                          d0 + timedelta(days=20)))
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D14", "done", d0 + timedelta(days=14)))
    assert flow.subject("S-001").visits["D14"] == ("done", d0 + timedelta(days=14))
    refused(flow, M.RecordVisit("S-001", "D28", "done", d0 + timedelta(days=28)), "phase",
            "before the subject's off_study")
    visit = position_of(flow, "S-001", T.VISIT_RECORDED)
    infusion = position_of(flow, "S-001", T.INFUSION_GIVEN)
    refused(flow, M.VoidRecord("S-001", infusion, "x"), "record_has_dependants",
            f"visit D14 at position {visit}")
    flow.send(COORDINATOR, M.VoidRecord("S-001", visit, "another subject's visit"))
    refused(flow, M.VoidRecord("S-001", infusion, "x"), "subject_closed", "correct its date")


def test_a_visit_with_forms_recorded_at_it_is_not_voided_from_under_them(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=8))
    flow.send(COORDINATOR, M.RecordVisit("S-001", "D7", "done", d0 + timedelta(days=7)))
    visit = position_of(flow, "S-001", T.VISIT_RECORDED)
    flow.send(COORDINATOR, M.RecordForm("S-001", "labs", ("egfr_ml_min=90",),
                                        d0 + timedelta(days=7), "D7"))
    labs = position_of(flow, "S-001", T.FORM_RECORDED)
    refused(flow, M.VoidRecord("S-001", visit, "x"), "record_has_dependants",
            f"labs recorded at visit D7 at position {labs}")


def test_a_weight_entered_late_says_at_once_which_deviation_it_implies(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    d0 = through_infusion(flow, "S-001", START, clock)
    on_day(clock, d0 + timedelta(days=2))
    outcome = flow.send(COORDINATOR, M.RecordForm("S-001", "vitals", ("weight_kg=35",),
                                                  START + timedelta(days=6)))
    assert any("dose_out_of_tolerance" in w for w in outcome.summary["warnings"])


def test_reconsent_dates_hold_and_are_corrected_a_voided_checklist_is_a_finding(
        desk: tuple[Desk, FakeClock]) -> None:
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    on_day(clock, START + timedelta(days=10))
    checklist = next(f.position for f in flow.subject("S-001").forms.values()
                     if f.form == "exclusion_checklist")
    flow.send(COORDINATOR, M.VoidRecord("S-001", checklist, "checklist of another subject"))
    from workflow.eligibility import evaluate_eligibility_on
    state = flow.subject("S-001")
    result = evaluate_eligibility_on(flow.study(), state, START + timedelta(days=3))
    assert result.overall == "eligible"  # as it stood at the confirmation
    assert {f.criterion for f in result.post_enrolment_findings} >= {"active_infection"}


def test_a_reconsent_is_dated_after_consent_and_its_date_is_corrected(
        desk: tuple[Desk, FakeClock]) -> None:
    from workflow.protocol import builtin_protocol_text

    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    on_day(clock, START + timedelta(days=10))
    text = builtin_protocol_text(2).replace("version = 2\n", "version = 3\n", 1)
    flow.send(ADMIN, M.LoadProtocol(text, "im19_sle_v3.toml"))
    amend(flow, 3)
    refused(flow, M.ReconsentSubject("S-001", "3.0", START - timedelta(days=30)),
            "phase_order", "re-consent on 2025-02-01", "consent on 2025-03-03")
    flow.send(COORDINATOR, M.ReconsentSubject("S-001", "3.0", START + timedelta(days=9)))
    reconsent = position_of(flow, "S-001", T.SUBJECT_RECONSENTED)
    refused(flow, M.CorrectRecord("S-001", reconsent, ("consent_date=2025-03-01",), "x"),
            "phase_order", "re-consent on 2025-03-01")
    flow.send(COORDINATOR, M.CorrectRecord("S-001", reconsent, ("consent_date=2025-03-11",),
                                           "date on the signed form"))
    assert flow.subject("S-001").reconsents[reconsent] == date(2025, 3, 11)
    refused(flow, M.VoidRecord("S-001", reconsent, "x"), "not_voidable")


def test_a_correction_that_changes_nothing_is_refused(desk: tuple[Desk, FakeClock]) -> None:
    """Each value already the one recorded: refused (`no_change`), naming the subject, the
    record and the field, and nothing is written; a value checked and found right is said by
    answering or closing the query. 58 and 58.0 are one weight; one field really changed is a
    correction, the unchanged ones shown as their own previous values."""
    flow, clock = desk
    enrol(flow, "S-001", START, clock)
    vitals = flow.subject("S-001").forms_of("vitals")[0]
    assert vitals.values["weight_kg"] == 58
    error = refused(flow, M.CorrectRecord("S-001", vitals.position, ("weight_kg=58.0",),
                                          "typo"),
                    "no_change", "Subject S-001", f"vitals at position {vitals.position}",
                    "weight_kg is already 58")
    assert error.field == "weight_kg" and error.subject == "S-001"
    (corrected,) = written(flow, COORDINATOR, M.CorrectRecord(
        "S-001", vitals.position, ("weight_kg=58", "height_cm=163"), "height re-measured"))
    assert corrected.payload["changes"] == {"weight_kg": 58.0, "height_cm": 163.0}
    assert corrected.payload["previous"]["weight_kg"] == 58
    refused(flow, M.CorrectRecord("S-001", vitals.position, ("height_cm=163",), "again"),
            "no_change", "height_cm is already 163")
    confirmed = position_of(flow, "S-001", T.ELIGIBILITY_CONFIRMED)
    day = flow.subject("S-001").eligibility_confirmed_on
    assert day is not None
    refused(flow, M.CorrectRecord("S-001", confirmed, (f"confirmed_on={day}",), "x"),
            "no_change", f"eligibility confirmation at position {confirmed}")
    query = flow.send(MONITOR, M.OpenQuery("S-001", vitals.position, "weight_kg",
                                          "58 kg on the source?")).summary["query"]
    refused(flow, M.AnswerQuery(query, "checked", ("weight_kg=58",)), "no_change",
            "weight_kg is already 58")
    flow.send(COORDINATOR, M.AnswerQuery(query, "58 kg on the source"))  # no correction
    assert [e.type for e in flow.store.read_stream("S-001")][-1] == T.QUERY_ANSWERED


def test_a_flag_is_not_a_count() -> None:
    assert not _differs(58.0, 58) and not _differs(True, True) and not _differs(None, None)
    assert _differs(True, 1) and _differs(False, 0) and _differs(1, True) and _differs(59, 58)
    assert _differs("2025-03-05", "2025-03-06") and _differs(58, None)
