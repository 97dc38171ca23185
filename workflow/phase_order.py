"""The order of a subject's clinical acts on their clinical dates: consent ≤ eligibility
confirmation ≤ leukapheresis ≤ product release ≤ lymphodepletion days (in regimen order) ≤
infusion (D0) ≤ follow-up visits ≤ completion; leaving the study comes after whatever was
recorded before it. A pure rule, called by the decisions of the acts that carry a date.

Source: the study schema of the IM19 registry record (docs/clinical-rules.md, "Study days and
the five phases"): cells are collected from an enrolled subject, lymphodepletion is given from
them on D-5 to D-3, the infusion is D0 and the visits are counted from it.
"""

from __future__ import annotations

from datetime import date

from workflow.errors import RuleViolation
from workflow.subject import SubjectState

# The acts in their order; what a refusal calls each, and its date on the state.
ORDER = ("consent", "eligibility confirmation", "leukapheresis", "product release",
         "lymphodepletion", "infusion", "visit", "completion")
EXIT = "exit from the study"  # after whatever was recorded before it


def _dates(state: SubjectState) -> dict[str, tuple[str, date | None]]:
    return {
        "consent": ("consent", state.consent.consent_date if state.consent else None),
        "eligibility confirmation": ("eligibility confirmation",
                                     state.eligibility_confirmed_on),
        "leukapheresis": ("leukapheresis", state.collected_on),
        "product release": ("product release", state.released_on),
        "lymphodepletion": ("last lymphodepletion dose",
                            state.lymphodepletion_days[-1] if state.lymphodepletion_days
                            else None),
        "infusion": ("infusion (D0)", state.infused_on),
        "visit": ("last visit", max((day for _, day in state.visits.values()), default=None)),
    }


def earlier_acts(state: SubjectState, act: str) -> list[tuple[str, date]]:
    """The acts recorded for `state` that must not be dated after `act`, with their dates, in
    phase order (an act's own earlier records are not among them)."""
    before = ORDER[:ORDER.index(act)] if act in ORDER else ORDER[:-1]
    dates = _dates(state)
    found = [dates[name] for name in before if name in dates]
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
