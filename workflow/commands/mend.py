"""Decisions that mend a record: `correct` (any record's values, a procedure's date included)
and `void` (a record entered in error). The original stays in the log; the subject fold
applies the mend, so every read model, export and signature follows it.

A mend is checked like the original: the corrected values by the form's own rules, and the
subject as it would stand after the mend by the phase order (workflow/phase_order.py) and,
for the infusion and its regimen, the infusion window. A mend that moves a dose's basis
(weight, height, cells, doses) lists the protocol deviations it now implies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from events.envelope import NewEvent
from workflow import event_types as T
from workflow.adverse_events import check_adverse_event
from workflow.clinical_time import site_time
from workflow.commands.decision import (
    Context,
    Decision,
    check_phase_order,
    decided,
    implied_deviations,
    preview,
)
from workflow.commands.lifecycle import (
    _check_ae_position,
    _check_assessment_date,
    _parsed,
    consented,
    not_future,
    transition,
)
from workflow.commands.messages import CorrectRecord, VoidRecord
from workflow.errors import InvalidInput, RuleViolation
from workflow.form_places import check_form_place, form_place_refusal
from workflow.forms import assessment_date, localise_times, parse_form, validate_values
from workflow.guards import GUARDS, Facts
from workflow.mending import (
    Target,
    already_recorded,
    check_correctable,
    dependants,
    duplicate_adverse_event,
    procedure_values,
    target,
    void_trigger,
)
from workflow.phases import TERMINAL
from workflow.subject import DATED_ACTS, SubjectState, to_date


def correct_record(m: CorrectRecord, c: Context) -> Decision:
    events, summary = correction_events(c, m.position, m.fields, m.reason)
    return decided(m.subject, events, {"subject": m.subject, **summary})


def correction_events(c: Context, position: int, tokens: Sequence[str], reason: str
                      ) -> tuple[list[NewEvent], dict[str, Any]]:
    """The events of a correction (`trialflow correct`, and a query answered with one): the
    corrected values checked like the original, the reason required, the old values kept."""
    state = consented(c)
    subject = state.subject
    if not reason or not reason.strip():
        raise InvalidInput("A correction needs --reason.", field="reason")
    found = target(state, position)
    if found.is_act:
        return _act_correction(c, state, found, tokens, reason.strip())
    changes = localise_times(found.form, _parsed(subject, lambda: parse_form(
        found.form, tokens, today=c.today, partial=True)), c.study.zone(state.site))
    if not changes:
        raise InvalidInput("A correction needs at least one field=value.", field="fields")
    check_correctable(state, found, changes)
    current = _current_values(state, found)
    if found.form == "infusion":
        changes = _localised(c, state, changes)
    merged = _parsed(subject, lambda: validate_values(found.form, {**current, **changes},
                                                      today=c.today))
    if found.is_form:
        form = state.forms[position]
        _check_assessment_date(state, found.form, merged, form.recorded_on)
        check_form_place(state, c.study.protocol_of(state.protocol_version), found.form,
                         assessment_date(found.form, merged, form.recorded_on)
                         or form.recorded_on, form.visit)
        if found.form in ("causality", "sae_report"):
            _check_ae_position(state, merged)
        if found.form == "adverse_event":  # onset after consent, grade as the signs give it
            check_adverse_event(state, merged)
            twin = duplicate_adverse_event(state, merged, exclude=position)
            if twin is not None:
                raise already_recorded(subject, f"adverse event {merged['term']} with onset "
                                       f"{merged['onset_date']}", position=twin, field="term")

    for name, value in changes.items():
        if name in ("consent_date", "collected_on", "released_on", "given_on", "visit_date",
                    "infused_at"):
            not_future(subject, name, to_date(str(value)), c.today)
    previous = {name: current.get(name) for name in changes}
    _check_changes_something(subject, found, changes, previous)
    event = NewEvent(T.FORM_CORRECTED, {"target_position": position, "form": found.form,
                                        "changes": changes, "previous": previous},
                     reason=reason.strip())
    after = preview(c, [event])
    check_phase_order(c, after, next(iter(changes)))
    _check_infusion_window(c, state, after, found)
    if found.form == "consent":  # the screening window runs from the consent date
        recheck_confirmation(c, after, ("screening_window_open",))
    check_forms_stay_placed(c, state, after, "correction")
    return [event], {"form": found.form, "changes": changes, "previous": previous,
                     **implied_deviations(c, state, after)}


def _act_correction(c: Context, state: SubjectState, found: Target, tokens: Sequence[str],
                    reason: str) -> tuple[list[NewEvent], dict[str, Any]]:
    """The date of an eligibility confirmation, a completion or an exit, corrected: judged
    like the act on its new date (the screening window and eligibility for a confirmation)."""
    subject, field = state.subject, DATED_ACTS[found.form]
    what = found.form.replace("_", " ")
    named = dict(token.split("=", 1) for token in tokens if "=" in token)
    if len(tokens) != 1 or set(named) != {field}:
        raise InvalidInput(f"Subject {subject}: the {what} at position {found.position} is "
                           f"corrected by its date alone: {field}=YYYY-MM-DD.", field=field,
                           subject=subject)
    try:
        day = date.fromisoformat(named[field].strip())
    except ValueError:
        raise InvalidInput(f"Subject {subject}: {field} {named[field]!r} is not a date "
                           "(YYYY-MM-DD).", field=field, subject=subject) from None
    not_future(subject, field, day, c.today)
    previous = {field: _act_date(state, found).isoformat()}
    changes = {field: day.isoformat()}
    _check_changes_something(subject, found, changes, previous)
    event = NewEvent(T.FORM_CORRECTED, {"target_position": found.position, "form": found.form,
                                        "changes": changes, "previous": previous},
                     reason=reason)
    after = preview(c, [event])
    check_phase_order(c, after, field)
    check_forms_stay_placed(c, state, after, "correction")
    if found.form == "eligibility_confirmation":
        recheck_confirmation(c, after, ("screening_window_open", "eligible"))
    return [event], {"form": found.form, "changes": changes, "previous": previous,
                     **implied_deviations(c, state, after)}


def _check_changes_something(subject: str, found: Target, changes: Mapping[str, Any],
                             previous: Mapping[str, Any]) -> None:
    """Refuse (rule `no_change`) a correction whose every value is the one recorded: the audit
    trail would show a change that is none (a value checked and found right is said by
    answering the query, or closing it, not by a correction)."""
    if any(_differs(value, previous.get(name)) for name, value in changes.items()):
        return
    name, value = next(iter(changes.items()))
    raise RuleViolation(
        f"Subject {subject}: the correction of the {found.form.replace('_', ' ')} at position "
        f"{found.position} changes nothing ({name} is already {value}); nothing was written.",
        rule="no_change", subject=subject, field=name)


def _differs(new: Any, old: Any) -> bool:
    """Values as a correction and the record hold them: 72 and 72.0 are one value, True and 1
    are not (a flag is not a count)."""
    if isinstance(new, bool) or isinstance(old, bool):
        return new is not old
    return bool(new != old)


def recheck_confirmation(c: Context, after: SubjectState, guards: Sequence[str]) -> None:
    """The confirmation's guards asked again of the subject after a mend of its date or of
    the consent date, on the forms the investigator judged, as of the confirmation date."""
    if after.confirmation_position is None or after.eligibility_confirmed_on is None:
        return
    judged = after if after.forms_at_confirmation is None else \
        replace(after, forms=dict(after.forms_at_confirmation))
    protocol = c.study.protocol_of(after.protocol_version_at(after.confirmation_position))
    facts = Facts(judged, c.study, protocol, after.eligibility_confirmed_on, {})
    for guard in guards:
        refused = GUARDS[guard](facts)
        if refused is not None:
            raise refused


def _act_date(state: SubjectState, found: Target) -> date:
    day = {"eligibility_confirmation": state.eligibility_confirmed_on,
           "completion": state.completed_on, "exit": state.exited_on,
           "reconsent": state.reconsents.get(found.position)}[found.form]
    assert day is not None
    return day


def void_record(m: VoidRecord, c: Context) -> Decision:
    """Mark the record at `m.position` entered in error; a procedure that opened a phase takes
    the subject back to the phase before it (the machine's `void_*` triggers)."""
    state = consented(c)
    found = target(state, m.position)
    what = found.form.replace("_", " ")
    if found.form == "consent" or found.is_act:
        raise RuleViolation(f"Subject {m.subject}: the {what} at position {m.position} cannot "
                            "be voided; correct its date with `trialflow correct`"
                            + (" (or its form version), or take the subject off study."
                               if found.form == "consent" else "."),
                            rule="not_voidable", subject=m.subject, field="position")
    resting = dependants(state, found,
                         c.study.protocol_of(state.protocol_version).final_visit.code)
    if resting:
        kind, at, day = resting[0]
        then = ("the completion is not voided: correct the visit's date instead"
                if kind == "completion" else "void that first")
        raise RuleViolation(f"Subject {m.subject}: the {what} at position {m.position} cannot "
                            f"be voided while the {kind} at position {at} (dated {day}) rests "
                            f"on it; {then}.", rule="record_has_dependants",
                            subject=m.subject, field="position")
    events = [NewEvent(T.RECORD_VOIDED, {"target_position": m.position, "form": found.form},
                       reason=m.reason.strip())]
    trigger = void_trigger(state, found)
    if trigger is not None and state.phase in TERMINAL:
        raise RuleViolation(f"Subject {m.subject} is {state.phase}: the {what} at position "
                            f"{m.position} opened a phase and cannot be voided after the end "
                            "of the study; correct its date or values instead.",
                            rule="subject_closed", subject=m.subject, field="position")
    if trigger is not None and found.procedure is not None:
        # clinically the phase never opened: the change back is dated on the procedure's date
        events += transition(c, trigger, found.procedure.on)
    after = preview(c, events)
    check_phase_order(c, after, "position")
    check_forms_stay_placed(c, state, after, "void")
    return decided(m.subject, events, {
        "subject": m.subject, "voided": m.position, "form": found.form, "phase": after.phase,
        **implied_deviations(c, state, after)})


# ---------------------------------------------------------------------- the mend's effects
def check_forms_stay_placed(c: Context, before: SubjectState, after: SubjectState,
                            mend: str) -> None:
    """Refuse a mend that moves a phase's boundary (a procedure's date, a void) so that a form
    recorded where the protocol places it no longer is (rule `form_not_in_phase`)."""
    protocol = c.study.protocol_of(after.protocol_version)
    for form in after.forms.values():
        day = assessment_date(form.form, form.values, form.recorded_on) or form.recorded_on
        now = form_place_refusal(after, protocol, form.form, day, form.visit)
        if now is None or before.forms.get(form.position) is None or form_place_refusal(
                before, protocol, form.form, day, form.visit) is not None:
            continue
        raise RuleViolation(f"Subject {after.subject}: after this {mend} the {form.form} at "
                            f"position {form.position} (dated {day}) would no longer be where "
                            "the protocol places it; correct or void that form first.",
                            rule="form_not_in_phase", subject=after.subject, field="form")


def _current_values(state: SubjectState, found: Target) -> dict[str, Any]:
    if found.is_form:
        return dict(state.forms[found.position].values)
    if found.procedure is None:
        assert state.consent is not None
        return {"consent_date": state.consent.consent_date.isoformat(),
                "consent_form_version": state.consent.consent_form_version}
    values = procedure_values(found.form, found.procedure.payload)
    if found.form == "product_release":
        values.setdefault("released_on", found.procedure.on.isoformat())
    return values


def _localised(c: Context, state: SubjectState, changes: dict[str, Any]) -> dict[str, Any]:
    """An infusion time at the site's offset (a time without one is the site's local time)."""
    if "infused_at" not in changes:
        return changes
    zone = c.study.zone(state.site)
    moment = datetime.fromisoformat(str(changes["infused_at"]))
    local = site_time(moment, zone).astimezone(zone)
    return {**changes, "infused_at": local.isoformat()}


def _check_infusion_window(c: Context, before: SubjectState, after: SubjectState,
                           found: Target) -> None:
    """A corrected infusion time or regimen date must keep the infusion in its window, as the
    infusion itself had to be (unless it was outside it already)."""
    if found.form not in ("infusion", "lymphodepletion") or after.infusion is None \
            or not after.doses:
        return

    def refusal(state: SubjectState) -> RuleViolation | None:
        facts = Facts(state, c.study, c.study.protocol_of(
            state.protocol_version_at(after.infusion.position if after.infusion else 0)
            or c.study.protocol.version), c.today, {"infused_on": state.infused_on})
        return GUARDS["infusion_window"](facts)

    refused = refusal(after)
    if refused is not None and refusal(before) is None:
        raise refused
