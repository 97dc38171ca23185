"""Decisions of a subject's lifecycle: consent, forms, corrections, the phase commands.

Each is `(message, context) -> Decision`: the subject's phase change is asked of the machine
(workflow/machine.py) with the guards' facts, and the events say what happened, `PhaseChanged`
included, so replay never re-runs a guard. Roles and the subject's site are checked by the
executor before a decision runs (workflow/commands/roles.py).
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

from events.envelope import NewEvent
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.adverse_events import check_adverse_event
from workflow.clinical_time import site_time
from workflow.commands.decision import (
    Context,
    Decision,
    Write,
    decided,
    implied_deviations,
    preview,
)
from workflow.commands.messages import (
    CompleteStudy,
    ConfirmEligibility,
    ConsentSubject,
    GiveLymphodepletion,
    Infuse,
    ReconsentSubject,
    RecordForm,
    RecordLeukapheresis,
    RecordScreenFailure,
    RecordVisit,
    ReleaseProduct,
    TakeOffStudy,
    screen_failure_code,
)
from workflow.deviations import beyond_tolerance
from workflow.dose_basis import cart_target, dosing_bsa, dosing_weight, expected_doses
from workflow.errors import InvalidInput, RuleViolation
from workflow.form_places import check_form_place
from workflow.forms import PHASE_FORM_COMMANDS, assessment_date, localise_times, parse_form
from workflow.guards import GUARDS, Facts
from workflow.machine import check_phase, decide
from workflow.mending import already_recorded, duplicate_adverse_event
from workflow.phase_order import EXIT, check_order
from workflow.study import Study
from workflow.subject import PhaseRecord, SubjectState
from workflow.upcasters import lymphodepletion_payload


def consent(m: ConsentSubject, c: Context) -> Decision:
    state = c.require_subject()
    if state.consented:
        raise RuleViolation(f"Subject {m.subject} has already consented.",
                            rule="already_consented", subject=m.subject)
    not_future(m.subject, "consent_date", m.on, c.today)
    version = c.study.protocol.version
    payload = {"subject": m.subject, "site": c.actor.site, "consent_date": m.on.isoformat(),
               "consent_form_version": m.consent_form_version, "protocol_version": version}
    return decided(m.subject, [NewEvent(T.SUBJECT_CONSENTED, payload,
                                        occurred_at=at_site(c.study, c.actor.site, m.on))],
                   {"subject": m.subject, "phase": "screening", "protocol_version": version})


def reconsent(m: ReconsentSubject, c: Context) -> Decision:
    state = consented(c)
    day = m.on or c.today
    not_future(m.subject, "consent_date", day, c.today)
    version = c.study.protocol.version
    if state.protocol_version == version:
        raise RuleViolation(f"Subject {m.subject} already consented under protocol version "
                            f"{version}.", rule="reconsent_not_needed", subject=m.subject)
    return decided(m.subject, [NewEvent(T.SUBJECT_RECONSENTED, {
        "consent_date": day.isoformat(), "protocol_version": version,
        "consent_form_version": m.consent_form_version},
        occurred_at=at_site(c.study, state.site, day))],
        {"subject": m.subject, "protocol_version": version})


def record_form(m: RecordForm, c: Context) -> Decision:
    if m.form in PHASE_FORM_COMMANDS:
        raise InvalidInput(f"Form {m.form} changes the subject's phase and is recorded only by "
                           f"`{PHASE_FORM_COMMANDS[m.form]}`.", field="form", subject=m.subject)
    state = consented(c)
    day = m.on or c.today
    not_future(m.subject, "on", day, c.today)
    values = localise_times(m.form, _parsed(m.subject, lambda: parse_form(
        m.form, m.fields, today=c.today)), c.study.zone(state.site))
    if m.visit is not None:
        c.study.protocol.visit(m.visit)
    _check_assessment_date(state, m.form, values, day)
    check_order(state, "form", "on", day)  # any form is recorded on or after consent
    check_form_place(state, c.study.protocol_of(state.protocol_version), m.form,
                     assessment_date(m.form, values, day) or day, m.visit)
    if m.form in ("causality", "sae_report"):
        _check_ae_position(state, values)
    if m.form == "adverse_event":
        check_adverse_event(state, values)
        twin = duplicate_adverse_event(state, values)
        if twin is not None:  # the same event (term and onset) entered twice
            raise already_recorded(m.subject, f"adverse event {values['term']} with onset "
                                   f"{values['onset_date']}", position=twin, field="term")
    payload = {"form": m.form, "values": values, "on": day.isoformat(), "visit": m.visit}
    event = NewEvent(T.FORM_RECORDED, payload, occurred_at=at_site(c.study, state.site, day))
    # vitals can move a dose's basis (a weight dated before leukapheresis, entered late)
    implied = {} if m.form != "vitals" or (state.infusion is None and not state.doses) else {
        key: found for key, found in implied_deviations(
            c, state, preview(c, [event])).items() if found}
    return decided(m.subject, [event], {"subject": m.subject, "form": m.form,
                                        "values": values, "on": day.isoformat(), **implied})


def confirm_eligibility(m: ConfirmEligibility, c: Context) -> Decision:
    """Enrol on the confirmation's clinical date (default today at the site): the screening
    window and eligibility are judged as of that date, never the day of entry."""
    state = consented(c)
    day = m.on or c.today
    not_future(m.subject, "confirmed_on", day, c.today)
    check_order(state, "eligibility confirmation", "confirmed_on", day)
    change = transition(c, "confirm_eligibility", day, judged_on=day)
    order = c.study.next_place(c.study.protocol)
    assert order is not None  # guarded by place_available
    cohort = c.study.protocol.cohort_for(order).code
    confirmed = NewEvent(T.ELIGIBILITY_CONFIRMED, {"order": order, "cohort": cohort,
                                                   "on": day.isoformat()},
                         occurred_at=at_site(c.study, state.site, day))
    place = NewEvent(T.ENROLMENT_PLACE_TAKEN, {"subject": state.subject, "order": order,
                                               "cohort": cohort})
    return decided(m.subject, [confirmed, *change],
                   {"subject": m.subject, "enrolment_order": order, "cohort": cohort,
                    "phase": "cell_collection"}, Write(STUDY_STREAM, (place,)))


def screen_fail(m: RecordScreenFailure, c: Context) -> Decision:
    state = consented(c)
    day = m.on or c.today
    not_future(m.subject, "failed_on", day, c.today)
    check_order(state, EXIT, "failed_on", day)
    change = transition(c, "screen_fail", day)
    reason = screen_failure_code(m.reason)  # the canonical code; free text in `note`
    payload = {"reason": reason, **({"note": m.note.strip()} if m.note is not None else {})}
    return decided(m.subject, [NewEvent(T.SCREEN_FAILED, payload, occurred_at=at_site(
        c.study, state.site, day)), *change],
                   {"subject": m.subject, "phase": "screen_failed", **payload})


def leukapheresis(m: RecordLeukapheresis, c: Context) -> Decision:
    state = consented(c)
    if state.collections and not state.product_failed:  # one collection per attempt
        raise already_recorded(m.subject, "leukapheresis", state.collections[-1],
                               field="collected_on")
    not_future(m.subject, "collected_on", m.on, c.today)
    check_order(state, "leukapheresis", "collected_on", m.on)
    transition(c, "collect", m.on)
    return decided(m.subject, [NewEvent(T.LEUKAPHERESIS_RECORDED, {
        "collected_on": m.on.isoformat(), "coi_id": m.coi_id},
        occurred_at=at_site(c.study, state.site, m.on))],
        {"subject": m.subject, "coi_id": m.coi_id})


def release(m: ReleaseProduct, c: Context) -> Decision:
    state = consented(c)
    first = _release_of_collection(state)
    if first is not None:  # one release (or failed release) per product
        raise already_recorded(m.subject, "product release" if first.payload.get("qc") !=
                               "fail" else "failed release of this collection", first,
                               field="released_on")
    check_phase(m.subject, state.phase, "collect")
    day = m.on or c.today
    not_future(m.subject, "released_on", day, c.today)
    check_order(state, "product release", "released_on", day)
    occurred = at_site(c.study, state.site, day)
    payload = {"lot": m.lot, "coi_id": m.coi_id, "qc": "fail" if m.failed else "pass",
               "viable_cells": m.viable_cells}
    if m.failed:
        transition(c, "release_failed", day, coi_id=m.coi_id)
        return decided(m.subject, [NewEvent(T.PRODUCT_RELEASE_FAILED, payload,
                                            reason=m.reason, occurred_at=occurred)],
                       {"subject": m.subject, "qc": "fail",
                        "next_step": "record a new leukapheresis or take the subject off study "
                        "(manufacturing_failure)"})
    change = transition(c, "release", day, coi_id=m.coi_id)
    return decided(m.subject, [NewEvent(T.PRODUCT_RELEASED, payload, occurred_at=occurred),
                               *change],
                   {"subject": m.subject, "qc": "pass", "phase": "lymphodepletion"})


def lymphodepletion(m: GiveLymphodepletion, c: Context) -> Decision:
    state = consented(c)
    same_day = next((d for d in state.doses if d.on == m.on), None)
    if same_day is not None:  # one record per regimen day
        raise already_recorded(m.subject, f"lymphodepletion dose of {m.on} (regimen day "
                               f"D{same_day.payload.get('regimen_day')})", same_day,
                               field="given_on")
    if state.infusion is None and state.phase == "infusion" and state.doses:
        raise RuleViolation(
            f"Subject {m.subject}: every dose of the regimen is recorded, the last at position "
            f"{state.doses[-1].position} ({state.doses[-1].on}); correct or void a dose with "
            f"`trialflow correct|void {m.subject} POSITION`.", rule="regimen_complete",
            subject=m.subject, field="given_on")
    check_phase(m.subject, state.phase, "give_dose")
    not_future(m.subject, "given_on", m.on, c.today)
    check_order(state, "lymphodepletion", "given_on", m.on)
    protocol = c.study.protocol
    regimen = protocol.lymphodepletion
    days = sorted(regimen.days)
    index = len(state.lymphodepletion_days)
    if index >= len(days):
        raise RuleViolation(f"Subject {m.subject}: every dose of the regimen is recorded.",
                            rule="regimen_complete", subject=m.subject)
    if state.lymphodepletion_days and m.on <= state.lymphodepletion_days[-1]:
        raise RuleViolation(f"Subject {m.subject}: given_on {m.on} is not after the previous "
                            f"lymphodepletion dose on {state.lymphodepletion_days[-1]}; the "
                            "regimen's days are dated in their order (phase order).",
                            rule="phase_order", subject=m.subject, field="given_on")
    day = days[index]
    bsa = _bsa(state)
    expected = expected_doses(regimen, day, bsa)
    given = {"fludarabine": m.fludarabine_mg, "cyclophosphamide": m.cyclophosphamide_mg}
    off = [f"{drug} {given.get(drug, 0.0):g} mg differs from the expected {want:g} mg"
           for drug, want in expected.items()
           if beyond_tolerance(given.get(drug, 0.0), want, protocol.dose_tolerance_pct)]
    trigger = "give_last_dose" if index == len(days) - 1 else "give_dose"
    change = transition(c, trigger, m.on, off_regimen="; ".join(off), deviation=m.deviation)
    payload = lymphodepletion_payload(  # schema version 2 (workflow/upcasters.py)
        given_on=m.on.isoformat(), regimen_day=day, bsa_m2=bsa, given=given,
        expected=expected, deviation=bool(off) and m.deviation,
        protocol_version=protocol.version)
    return decided(m.subject, [NewEvent(T.LYMPHODEPLETION_GIVEN, payload, occurred_at=at_site(
        c.study, state.site, m.on), reason=m.reason if off else None), *change],
        {"subject": m.subject, "regimen_day": day, "expected_mg": expected, "bsa_m2": bsa,
         "phase": "infusion" if change else "lymphodepletion"})


def infuse(m: Infuse, c: Context) -> Decision:
    state = consented(c)
    if state.infusion is not None:  # one infusion per subject
        raise already_recorded(m.subject, "infusion", state.infusion, field="infused_at")
    check_phase(m.subject, state.phase, "infuse")
    zone = c.study.zone(state.site)
    local = site_time(m.at, zone).astimezone(zone)
    not_future(m.subject, "infused_at", local.date(), c.today)
    check_order(state, "infusion", "infused_at", local.date())
    weight = dosing_weight(state)
    if weight is None:
        raise RuleViolation(f"Subject {m.subject}: no weight is recorded before leukapheresis, "
                            "so the dosing weight is unknown.", rule="dosing_weight_unknown",
                            subject=m.subject, field="weight_kg")
    protocol = c.study.protocol
    assert state.enrolment_order is not None
    cohort = protocol.cohort_for(state.enrolment_order)
    target = cart_target(state, protocol)
    assert target is not None
    change = transition(c, "infuse", local.date(), infused_on=local.date(), coi_id=m.coi_id,
                        cells=m.cells, target_cells=target, deviation=m.deviation)
    payload = {"infused_at": local.isoformat(), "cells": m.cells, "coi_id": m.coi_id,
               "dosing_weight_kg": state.latest_value("vitals", "weight_kg",
                                                      before=state.collected_on),
               "target_cells": target, "cohort": cohort.code,
               "deviation": m.deviation, "protocol_version": protocol.version}
    return decided(m.subject, [NewEvent(T.INFUSION_GIVEN, payload, occurred_at=local.isoformat(),
                                        reason=m.reason if m.deviation else None), *change],
                   {"subject": m.subject, "d0": local.date().isoformat(),
                    "target_cells": target, "phase": "follow_up"})


def record_visit(m: RecordVisit, c: Context) -> Decision:
    """A follow-up visit done or missed on its clinical date (default today at the site).
    Done outside its window it is accepted, and the summary's `warnings` name the window and
    the deviation it makes (judged, like the deviation, under the subject's protocol
    version). Missed only once its window has closed, judged on today at the site, with the
    reason (required by RecordVisit) kept as the event's `reason`."""
    from datetime import timedelta

    from workflow.deviations import out_of_window_warning
    from workflow.schedule import visit_window

    state = consented(c)
    trigger = "record_past_visit" if state.phase in ("completed", "off_study") \
        else "record_visit"
    check_phase(m.subject, state.phase, trigger)
    c.study.protocol.visit(m.visit)
    day = m.on or c.today
    not_future(m.subject, "visit_date", day, c.today)
    check_order(state, "visit", "visit_date", day)
    protocol = c.study.protocol_of(state.protocol_version)
    window = visit_window(state, protocol, m.visit)
    if m.status == "missed":
        closing = window or visit_window(state, c.study.protocol, m.visit)
        if closing is not None and c.today <= closing.window_end:
            raise RuleViolation(
                f"Subject {m.subject}: visit {m.visit} cannot be recorded missed before its "
                f"window closes: the window runs from {closing.window_start.isoformat()} to "
                f"{closing.window_end.isoformat()} and today at the site is "
                f"{c.today.isoformat()}; record it missed from "
                f"{(closing.window_end + timedelta(days=1)).isoformat()}, or done when it "
                "happens.", rule="visit_window_open", subject=m.subject, field="visit")
    transition(c, trigger, day, visit=m.visit, visit_date=day)
    summary: dict[str, Any] = {"subject": m.subject, "visit": m.visit, "status": m.status,
                               "visit_date": day.isoformat()}
    warning = (out_of_window_warning(m.subject, window, protocol, day)
               if m.status == "done" else None)
    if warning is not None:
        summary["warnings"] = [warning]
    return decided(m.subject, [NewEvent(T.VISIT_RECORDED, {
        "visit": m.visit, "status": m.status, "visit_date": day.isoformat()},
        reason=m.reason, occurred_at=at_site(c.study, state.site, day))], summary)


def complete(m: CompleteStudy, c: Context) -> Decision:
    state = consented(c)
    day = m.on or c.today
    not_future(m.subject, "completed_on", day, c.today)
    check_order(state, "completion", "completed_on", day)
    change = transition(c, "complete", day)
    return decided(m.subject, [NewEvent(T.SUBJECT_COMPLETED, {}, occurred_at=at_site(
        c.study, state.site, day)), *change],
                   {"subject": m.subject, "phase": "completed"})


def off_study(m: TakeOffStudy, c: Context) -> Decision:
    state = consented(c)
    day = m.on or c.today
    not_future(m.subject, "left_on", day, c.today)
    check_order(state, EXIT, "left_on", day)
    change = transition(c, "off_study", day)
    events = [NewEvent(T.SUBJECT_OFF_STUDY, {"reason": m.reason, "phase_at_exit": state.phase},
                       occurred_at=at_site(c.study, state.site, day)), *change]
    place = c.study.place_of(m.subject)
    freed: tuple[Write, ...] = ()
    if place is not None and state.infused_on is None and \
            c.study.protocol.replace_before_infusion:
        freed = (Write(STUDY_STREAM, (NewEvent(T.ENROLMENT_PLACE_FREED, {
            "subject": m.subject, "order": place.order, "reason": m.reason}),)),)
    return decided(m.subject, events, {"subject": m.subject, "phase": "off_study",
                                       "reason": m.reason}, *freed)


# ---------------------------------------------------------------------- shared rules
def transition(c: Context, trigger: str, on: date, *, judged_on: date | None = None,
               **args: Any) -> list[NewEvent]:
    """Ask the machine whether `trigger` may fire, its guards judging as of `judged_on`
    (default today at the site); the `PhaseChanged` it makes, if any."""
    state = c.require_subject()
    facts = Facts(state, c.study, c.study.protocol, judged_on or c.today, args)
    before = state.phase
    after = decide(state.subject, before, trigger, GUARDS, facts)
    if after == before:
        return []
    return [NewEvent(T.PHASE_CHANGED, {"from": before, "to": after, "trigger": trigger,
                                       "on": on.isoformat()},
                     occurred_at=at_site(c.study, state.site, on))]


def _release_of_collection(state: SubjectState) -> PhaseRecord | None:
    """The release recorded for the current collection's product, None before one is."""
    last = state.collections[-1] if state.collections else None
    if last is None:
        return None
    return next((r for r in state.releases if r.position > last.position), None)


def consented(c: Context) -> SubjectState:
    state = c.require_subject()
    if not state.consented:
        raise RuleViolation(f"Subject {state.subject} has not consented: record `trialflow "
                            "consent` first.", rule="not_consented", subject=state.subject)
    return state


def not_future(subject: str, field_name: str, day: date, today: date) -> None:
    if day > today:
        raise InvalidInput(f"Subject {subject}: {field_name} {day} is in the future (today is "
                           f"{today} at the site).", field=field_name, subject=subject)


def at_site(study: Study, site: str | None, on: date) -> str:
    """A clinical date as an occurred_at: local midnight at the site, with its offset."""
    return datetime.combine(on, time(0), study.zone(site)).isoformat()


def _parsed(subject: str, parse: Any) -> dict[str, Any]:
    try:
        values: dict[str, Any] = parse()
    except InvalidInput as error:
        raise InvalidInput(f"Subject {subject}: {error.message}", field=error.field,
                           subject=subject) from None
    return values


def _check_assessment_date(state: SubjectState, form: str, values: dict[str, Any],
                           on: date) -> None:
    assert state.consent is not None
    dated = assessment_date(form, values, on)
    if dated is not None and dated < state.consent.consent_date:
        raise RuleViolation(
            f"Subject {state.subject}: {form} is dated {dated}, before consent on "
            f"{state.consent.consent_date}; no screening procedure may precede consent.",
            rule="assessment_before_consent", subject=state.subject, field=form)


def _check_ae_position(state: SubjectState, values: dict[str, Any]) -> None:
    position = int(values["ae_position"])
    target = state.forms.get(position)
    if target is None or target.form != "adverse_event":
        raise InvalidInput(f"Subject {state.subject}: ae_position {position} is not an adverse "
                           "event of this subject.", field="ae_position", subject=state.subject)


def _bsa(state: SubjectState) -> float:
    bsa = dosing_bsa(state)
    if bsa is None:
        raise RuleViolation(f"Subject {state.subject}: height and weight must be recorded (form "
                            "vitals) to compute the BSA.", rule="bsa_unknown",
                            subject=state.subject, field="height_cm")
    return bsa
