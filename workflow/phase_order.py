"""The order of a subject's clinical acts on their clinical dates: consent ≤ eligibility
confirmation ≤ leukapheresis ≤ lymphodepletion days (in regimen order) ≤ infusion (D0) ≤
follow-up visits. A pure rule, called by the decisions of the acts that carry a date.

Source: the study schema of the IM19 registry record (docs/clinical-rules.md, "Study days and
the five phases"): cells are collected from an enrolled subject, lymphodepletion is given from
them on D-5 to D-3, the infusion is D0 and the visits are counted from it.
"""

from __future__ import annotations

from datetime import date

from workflow.errors import RuleViolation
from workflow.subject import SubjectState


def earlier_acts(state: SubjectState, act: str) -> list[tuple[str, date]]:
    """The acts recorded for `state` that must not be dated after `act`, with their dates."""
    found: list[tuple[str, date | None]] = [
        ("consent", state.consent.consent_date if state.consent else None)]
    if act in ("leukapheresis", "lymphodepletion", "infusion", "visit"):
        found.append(("eligibility confirmation", state.eligibility_confirmed_on))
    if act in ("lymphodepletion", "infusion", "visit"):
        found.append(("leukapheresis", state.collected_on))
    if act in ("infusion", "visit"):
        found.append(("last lymphodepletion dose",
                      state.lymphodepletion_days[-1] if state.lymphodepletion_days else None))
    if act == "visit":
        found.append(("infusion (D0)", state.infused_on))
    return [(what, when) for what, when in found if when is not None]


def check_order(state: SubjectState, act: str, field: str, day: date) -> None:
    """Refuse (rule `phase_order`) a date of `act` before the date of an act that comes first;
    the sentence names the subject, both dates and what each is (the nearest act broken)."""
    for what, when in reversed(earlier_acts(state, act)):
        if day < when:
            raise RuleViolation(
                f"Subject {state.subject}: {field} {day} is before the {what} on {when}; "
                f"{'an' if act[0] in 'aeiou' else 'a'} {act} is dated on or after it "
                "(phase order).",
                rule="phase_order", subject=state.subject, field=field)
