"""Where a form may be recorded: the protocol's `[forms]` table applied to a subject.

A pure rule, called by the decision of `trialflow record` (docs/clinical-rules.md, "Forms
where they belong"). The place of a form is judged on its clinical date, never on the day it
is entered: a screening lab dated in screening but entered once the subject is in
cell_collection is ordinary late data entry, and a persistence sample dated before D0 is
refused even when the subject has since been infused.

Conventions chosen here:
- The clinical date of a form is its own date field when it has one and it is given
  (`cart_persistence.sample_date`, `pregnancy_test.test_date`), else the day it is recorded
  for (`--on`, default today at the site); the same date `assessment_before_consent` checks.
- The phase on a date follows the subject's recorded acts: screening from consent,
  cell_collection from the eligibility confirmation, lymphodepletion from the product release,
  infusion from the last regimen dose, follow_up from D0, then `completed`, `off_study` or
  `screen_failed` from the day the subject left. Dates carry no time of day, so the day of an
  act belongs to the phase it ends and to the phase it begins (a form dated on the day of the
  confirmation may be a screening form or a cell-collection one). A date before consent (the
  history forms may carry one) counts as screening.
- A form recorded at a visit (`--visit Dn`) must be allowed at that visit and be dated in
  follow_up; whether it lies inside the visit's window is left to the deviations (a visit done
  outside its window keeps its forms).
- A protocol text without the table (`Protocol.form_places` is None) restricts no form to a
  phase or visit; the rule that a visit's forms are dated in follow_up holds all the same,
  since visits are counted from D0.
"""

from __future__ import annotations

from datetime import date
from typing import Final

from workflow.errors import RuleViolation
from workflow.phases import TERMINAL
from workflow.protocol import FormPlace, Protocol
from workflow.subject import SubjectState

RULE: Final = "form_not_in_phase"
FOLLOW_UP: Final = "follow_up"


def phase_marks(state: SubjectState, protocol: Protocol) -> list[tuple[str, date]]:
    """The subject's phases in order, each with the clinical date it began, from its records
    as they stand (corrections applied, voided procedures gone): what the FHIR export and
    the swimmer plot show, and where forms are placed."""
    if state.consent is None:
        return []
    marks = [("screening", state.consent.consent_date)]
    if state.eligibility_confirmed_on is not None:
        marks.append(("cell_collection", state.eligibility_confirmed_on))
    if state.released_on is not None:
        marks.append(("lymphodepletion", state.released_on))
    days = state.lymphodepletion_days
    regimen_done = state.infused_on is not None or state.phase in (
        "infusion", FOLLOW_UP, "completed") or len(days) >= len(protocol.lymphodepletion.days)
    if days and regimen_done:
        marks.append(("infusion", days[-1]))
    if state.infused_on is not None:
        marks.append((FOLLOW_UP, state.infused_on))
    if state.phase in TERMINAL and state.phase_since is not None:  # completion or exit date
        marks.append((state.phase, state.phase_since))
    return marks


def phases_on(state: SubjectState, protocol: Protocol, day: date) -> tuple[str, ...]:
    """The phases the subject was in on clinical date `day` (two on the day one ends and the
    next begins); screening for a date before consent."""
    marks = phase_marks(state, protocol)
    if not marks:
        return ()
    if day < marks[0][1]:
        return (marks[0][0],)
    found: list[str] = []
    for index, (phase, began) in enumerate(marks):
        ended = marks[index + 1][1] if index + 1 < len(marks) else None
        if began <= day and (ended is None or day <= ended) and phase not in found:
            found.append(phase)
    return tuple(found) or (marks[-1][0],)


def where_it_belongs(place: FormPlace) -> str:
    """The place of a form in words: `follow_up, at any follow-up visit`."""
    phases = _either(place.phases)
    if place.every_visit:
        return f"{phases}, at any follow-up visit"
    if place.visits:
        return f"{phases}, or at visit {_either(place.visits)}"
    return f"{phases}, at no follow-up visit"


def form_place_refusal(state: SubjectState, protocol: Protocol, form: str, day: date,
                       visit: str | None = None) -> RuleViolation | None:
    """Why `form`, dated `day` (its clinical date) and recorded at `visit` (or at none), may
    not be recorded for the subject: a RuleViolation of rule `form_not_in_phase` whose one
    sentence names the subject and its current phase, the form, the phase of its date (and
    the visit) and where the form belongs; None when it may."""
    place = protocol.form_place(form)
    phases = phases_on(state, protocol, day)
    belongs = "" if place is None else f"; {form} belongs in {where_it_belongs(place)}"
    if visit is not None:
        if place is not None and not place.allows_visit(visit):
            return _refuse(state, f"{form} is not recorded at visit {visit} in protocol "
                                  f"version {protocol.version}{belongs}.")
        if FOLLOW_UP not in phases:
            return _refuse(state, f"{form} of visit {visit} dated {day.isoformat()} falls in "
                                  f"{_both(phases)}, but the forms of a visit are dated in "
                                  f"follow_up, from D0 on{belongs}.")
        return None
    if place is not None and not any(place.allows_phase(phase) for phase in phases):
        return _refuse(state, f"{form} dated {day.isoformat()} falls in {_both(phases)}, where "
                              f"protocol version {protocol.version} does not record it"
                              f"{belongs}.")
    return None


def check_form_place(state: SubjectState, protocol: Protocol, form: str, day: date,
                     visit: str | None = None) -> None:
    """Refuse (rule `form_not_in_phase`) a form outside the places the protocol gives it."""
    refusal = form_place_refusal(state, protocol, form, day, visit)
    if refusal is not None:
        raise refusal


def _refuse(state: SubjectState, sentence: str) -> RuleViolation:
    return RuleViolation(f"Subject {state.subject} (phase {state.phase}): {sentence}", rule=RULE,
                         subject=state.subject, field="form")


def _either(items: tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _both(items: tuple[str, ...]) -> str:
    if not items:
        return "no phase"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
