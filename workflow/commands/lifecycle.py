"""Decisions of a subject's lifecycle: consent, forms, corrections, the phase commands.

Each is `(message, context) -> Decision`: the subject's phase change is asked of the machine
(workflow/machine.py) with the guards' facts, and the events say what happened, `PhaseChanged`
included, so replay never re-runs a guard. Roles and the subject's site are checked by the
executor before a decision runs (workflow/commands/roles.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any

from events.envelope import NewEvent
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.commands.decision import Context, Decision, Write, decided
from workflow.commands.messages import (
    CompleteStudy,
    ConfirmEligibility,
    ConsentSubject,
    CorrectRecord,
    GiveLymphodepletion,
    Infuse,
    ReconsentSubject,
    RecordForm,
    RecordLeukapheresis,
    RecordScreenFailure,
    RecordVisit,
    ReleaseProduct,
    TakeOffStudy,
)
from workflow.deviations import beyond_tolerance
from workflow.errors import InvalidInput, RuleViolation
from workflow.forms import PHASE_FORM_COMMANDS, assessment_date, parse_form, validate_values
from workflow.guards import GUARDS, Facts
from workflow.instruments.dosing import body_surface_area
from workflow.machine import check_phase, decide
from workflow.phase_order import EXIT, check_order
from workflow.study import Study
from workflow.subject import SubjectState
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
    values = _parsed(m.subject, lambda: parse_form(m.form, m.fields, today=c.today))
    if m.visit is not None:
        c.study.protocol.visit(m.visit)
    _check_assessment_date(state, m.form, values, day)
    if m.form in ("causality", "sae_report"):
        _check_ae_position(state, values)
    payload = {"form": m.form, "values": values, "on": day.isoformat(), "visit": m.visit}
    return decided(m.subject, [NewEvent(T.FORM_RECORDED, payload,
                                        occurred_at=at_site(c.study, state.site, day))],
                   {"subject": m.subject, "form": m.form, "values": values,
                    "on": day.isoformat()})


def correct_record(m: CorrectRecord, c: Context) -> Decision:
    events, summary = correction_events(c, m.position, m.fields, m.reason)
    return decided(m.subject, events, {"subject": m.subject, **summary})


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
    consented(c)
    change = transition(c, "screen_fail", c.today)
    return decided(m.subject, [NewEvent(T.SCREEN_FAILED, {"reason": m.reason}), *change],
                   {"subject": m.subject, "phase": "screen_failed", "reason": m.reason})


def leukapheresis(m: RecordLeukapheresis, c: Context) -> Decision:
    state = consented(c)
    not_future(m.subject, "collected_on", m.on, c.today)
    check_order(state, "leukapheresis", "collected_on", m.on)
    transition(c, "collect", m.on)
    return decided(m.subject, [NewEvent(T.LEUKAPHERESIS_RECORDED, {
        "collected_on": m.on.isoformat(), "coi_id": m.coi_id},
        occurred_at=at_site(c.study, state.site, m.on))],
        {"subject": m.subject, "coi_id": m.coi_id})


def release(m: ReleaseProduct, c: Context) -> Decision:
    state = consented(c)
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
        raise InvalidInput(f"Subject {m.subject}: given_on {m.on} is not after the previous "
                           f"dose ({state.lymphodepletion_days[-1]}).", field="given_on")
    day = days[index]
    bsa = _bsa(state)
    expected = {d.drug: round(d.mg_per_m2 * bsa, 1) if day in d.days else 0.0
                for d in regimen.drugs}
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
    check_phase(m.subject, state.phase, "infuse")
    zone = c.study.zone(state.site)
    local = m.at.astimezone(zone) if m.at.tzinfo else m.at.replace(tzinfo=zone)
    not_future(m.subject, "infused_at", local.date(), c.today)
    check_order(state, "infusion", "infused_at", local.date())
    weight = state.latest_value("vitals", "weight_kg", before=state.collected_on)
    if weight is None:
        raise RuleViolation(f"Subject {m.subject}: no weight is recorded before leukapheresis, "
                            "so the dosing weight is unknown.", rule="dosing_weight_unknown",
                            subject=m.subject, field="weight_kg")
    protocol = c.study.protocol
    assert state.enrolment_order is not None
    cohort = protocol.cohort_for(state.enrolment_order)
    target = cohort.target_cells(float(str(weight)))
    change = transition(c, "infuse", local.date(), infused_on=local.date(), coi_id=m.coi_id,
                        cells=m.cells, target_cells=target, deviation=m.deviation)
    payload = {"infused_at": local.isoformat(), "cells": m.cells, "coi_id": m.coi_id,
               "dosing_weight_kg": weight, "target_cells": target, "cohort": cohort.code,
               "deviation": m.deviation, "protocol_version": protocol.version}
    return decided(m.subject, [NewEvent(T.INFUSION_GIVEN, payload, occurred_at=local.isoformat(),
                                        reason=m.reason if m.deviation else None), *change],
                   {"subject": m.subject, "d0": local.date().isoformat(),
                    "target_cells": target, "phase": "follow_up"})


def record_visit(m: RecordVisit, c: Context) -> Decision:
    state = consented(c)
    check_phase(m.subject, state.phase, "record_visit")
    c.study.protocol.visit(m.visit)
    day = m.on or c.today
    not_future(m.subject, "visit_date", day, c.today)
    check_order(state, "visit", "visit_date", day)
    transition(c, "record_visit", day, visit=m.visit)
    return decided(m.subject, [NewEvent(T.VISIT_RECORDED, {
        "visit": m.visit, "status": m.status, "visit_date": day.isoformat()},
        occurred_at=at_site(c.study, state.site, day))],
        {"subject": m.subject, "visit": m.visit, "status": m.status,
         "visit_date": day.isoformat()})


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


# ---------------------------------------------------------------------- corrections
def correction_events(c: Context, position: int, tokens: Sequence[str], reason: str
                      ) -> tuple[list[NewEvent], dict[str, Any]]:
    """The events of a correction (`trialflow correct`, and a query answered with one): the
    corrected values checked like the original, the reason required, the old values kept."""
    state = consented(c)
    subject = state.subject
    if not reason or not reason.strip():
        raise InvalidInput("A correction needs --reason.", field="reason")
    if state.infusion is not None and position == state.infusion.position:
        return _infusion_correction(c.study, state, tokens, reason, c.today)
    target = state.forms.get(position)
    if target is None:
        raise InvalidInput(f"Subject {subject} has no form recorded at position {position}.",
                           field="position", subject=subject)
    changes = _parsed(subject, lambda: parse_form(target.form, tokens, today=c.today,
                                                  partial=True))
    merged = _parsed(subject, lambda: validate_values(target.form, {**target.values, **changes},
                                                      today=c.today))
    if not changes:
        raise InvalidInput("A correction needs at least one field=value.", field="fields")
    _check_assessment_date(state, target.form, merged, target.recorded_on)
    previous = {k: target.values.get(k) for k in changes}
    payload = {"target_position": position, "form": target.form, "changes": changes,
               "previous": previous}
    return [NewEvent(T.FORM_CORRECTED, payload, reason=reason.strip())], {
        "form": target.form, "changes": changes, "previous": previous}


def _infusion_correction(study: Study, state: SubjectState, tokens: Sequence[str],
                         reason: str, today: date) -> tuple[list[NewEvent], dict[str, Any]]:
    """The infusion time is the one phase fact a correction may change (D0 moves, and with
    it every window); the corrected value is checked like the original."""
    subject = state.subject
    assert state.infusion is not None
    changes = _parsed(subject, lambda: parse_form("infusion", tokens, today=today,
                                                  partial=True))
    if set(changes) != {"infused_at"}:
        raise InvalidInput(f"Subject {subject}: only infused_at of the infusion can be "
                           "corrected (cells and chain of identity are checked at infusion).",
                           field="fields", subject=subject)
    local = datetime.fromisoformat(str(changes["infused_at"])).astimezone(study.zone(state.site))
    last_dose = max(state.lymphodepletion_days, default=None)
    if last_dose is not None and local.date() <= last_dose:
        raise RuleViolation(f"Subject {subject}: infused_at {local.date()} is not after the "
                            f"last lymphodepletion dose on {last_dose}.",
                            rule="infusion_window", field="infused_at", subject=subject)
    changes = {"infused_at": local.isoformat()}
    previous = {"infused_at": state.infusion.payload["infused_at"]}
    payload = {"target_position": state.infusion.position, "form": "infusion",
               "changes": changes, "previous": previous}
    return [NewEvent(T.FORM_CORRECTED, payload, reason=reason.strip())], {
        "form": "infusion", "changes": changes, "previous": previous}


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
    height = state.latest_value("vitals", "height_cm")
    weight = state.latest_value("vitals", "weight_kg", before=state.collected_on)
    if height is None or weight is None:
        raise RuleViolation(f"Subject {state.subject}: height and weight must be recorded (form "
                            "vitals) to compute the BSA.", rule="bsa_unknown",
                            subject=state.subject, field="height_cm")
    return body_surface_area(float(str(height)), float(str(weight))).bsa_m2
