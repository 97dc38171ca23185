"""The order of a subject's clinical acts on their clinical dates: consent ≤ eligibility
confirmation ≤ leukapheresis ≤ product release ≤ lymphodepletion days (in regimen order) ≤
infusion (D0) ≤ follow-up visits ≤ completion; leaving the study comes after whatever was
recorded before it. A pure rule, called by the decisions of the acts that carry a date.

Source: the study schema of the IM19 registry record (docs/clinical-rules.md, "Study days and
the five phases"): cells are collected from an enrolled subject, lymphodepletion is given from
them on D-5 to D-3, the infusion is D0 and the visits are counted from it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from workflow.errors import RuleViolation
from workflow.forms import assessment_date
from workflow.records import RecordedForm, as_date
from workflow.subject import SubjectState

# The acts in their order; what a refusal calls each, and its date on the state.
ORDER = ("consent", "eligibility confirmation", "leukapheresis", "product release",
         "lymphodepletion", "infusion", "visit", "completion")
EXIT = "exit from the study"  # after whatever was recorded before it
SAFETY_FORMS = ("adverse_event", "causality", "sae_report")  # recorded after the study too


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
    if act == "form":  # a form is recorded on or after consent (its values may be older)
        return [("consent", state.consent.consent_date)] if state.consent else []
    before = ORDER[:ORDER.index(act)] if act in ORDER else ORDER[:-1]
    dates = _dates(state)
    found = [dates[name] for name in before if name in dates]
    if act == "leukapheresis" and state.releases:  # a new attempt follows the failed release
        found.append(("failed product release", state.releases[-1].on))
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


# --- a whole history -----------------------------------------------------------------------

Act = tuple[str, date]  # what an act is called in a refusal, its clinical date


def _stages(state: SubjectState) -> list[tuple[bool, list[Act]]]:
    """The subject's acts in phase order, as stages: (in sequence, acts). Acts of a sequence
    follow each other; the acts of a parallel stage (the visits) each follow the stage
    before and come before the next."""
    assert state.consent is not None
    stages: list[tuple[bool, list[Act]]] = [(True, [("consent", state.consent.consent_date)])]
    if state.eligibility_confirmed_on is not None:
        stages.append((True, [("eligibility confirmation", state.eligibility_confirmed_on)]))
    cells = sorted([*state.collections, *state.releases], key=lambda r: r.position)
    stages.append((True, [("leukapheresis" if r.form == "leukapheresis" else "product release",
                           r.on) for r in cells]))
    stages.append((True, [(f"lymphodepletion dose {n}", d.on)
                          for n, d in enumerate(state.doses, 1)]))
    if state.infusion is not None:
        stages.append((True, [("infusion (D0)", state.infusion.on)]))
    stages.append((False, [(f"visit {code}", r.on) for code, r in state.visit_records.items()]))
    if state.completed_on is not None:
        stages.append((True, [("completion", state.completed_on)]))
    if state.exited_on is not None:
        stages.append((True, [(EXIT, state.exited_on)]))
    return stages


def history_problems(state: SubjectState, today: date) -> list[str]:
    """Every way the subject's clinical dates break the phase order, as sentences (empty when
    they hold): an act before one that comes first, two lymphodepletion doses on one day, a
    date after today at the site."""
    if state.consent is None:
        return []
    found: list[str] = []
    floor: Act = ("consent", state.consent.consent_date)
    for in_sequence, acts in _stages(state):
        start, latest = floor, floor
        for what, day in acts:
            before = floor if in_sequence else start
            if day < before[1] or (in_sequence and what.startswith("lymphodepletion dose ")
                                   and before[0].startswith("lymphodepletion dose ")
                                   and day == before[1]):
                found.append(f"Subject {state.subject}: the {what} on {day} is "
                             f"{'not after' if day == before[1] else 'before'} the "
                             f"{before[0]} on {before[1]} (phase order).")
            if day > today:
                found.append(f"Subject {state.subject}: the {what} on {day} is in the future "
                             f"(today is {today} at the site).")
            if in_sequence:
                floor = (what, day) if day >= floor[1] else floor
            latest = (what, day) if day >= latest[1] else latest
        if not in_sequence:
            floor = latest
    consent = state.consent.consent_date
    for day in state.reconsents.values():
        if day < consent:
            found.append(f"Subject {state.subject}: the re-consent on {day} is before the "
                         f"consent on {consent} (phase order).")
        if day > today:
            found.append(f"Subject {state.subject}: the re-consent on {day} is in the future "
                         f"(today is {today} at the site).")
    ended = [(what, day) for what, day in (("completion", state.completed_on),
                                            (EXIT, state.exited_on)) if day is not None]
    for form in state.forms.values():
        kind = form.form
        dated = (as_date(form.values.get("onset_date")) if kind == "adverse_event"
                 else assessment_date(kind, form.values, form.recorded_on))
        if dated is not None and dated < consent:
            found.append(f"Subject {state.subject}: the {kind} at position {form.position} "
                         f"is dated {dated}, before the consent on {consent} (phase order).")
        if kind in SAFETY_FORMS:  # their reporting times; and they outlive the study
            found.extend(_safety_time_problems(state, form, consent))
            continue
        for what, day in ended:
            if form.recorded_on > day:
                found.append(f"Subject {state.subject}: the {form.form} at position "
                             f"{form.position} on {form.recorded_on} is after the {what} on "
                             f"{day} (phase order).")
    return found


def check_history(before: SubjectState, after: SubjectState, field: str,
                  problems: Callable[[SubjectState], list[str]]) -> None:
    """Refuse (rule `phase_order`) a correction or void after which the subject's clinical
    dates break the phase order in a way they did not before it. `problems`: a state's
    `history_problems` on the site's today."""
    known = set(problems(before))
    new = [problem for problem in problems(after) if problem not in known]
    if new:
        raise RuleViolation(new[0][:-1] + "; the record is left as it was.",
                            rule="phase_order", subject=after.subject, field=field)


def _safety_time_problems(state: SubjectState, form: RecordedForm, consent: date
                          ) -> list[str]:
    """An AE's awareness comes on or after its onset and the consent, and the sponsor's on or
    after the site's; an SAE report is sent, and a causality assessed, on or after its event
    began, and the report on or after the site became aware of it (instants compared as
    instants when both carry a time and an offset, else by calendar date)."""
    found: list[str] = []

    def check(later: str, value: object, earlier: str, floor: object) -> None:
        if value is None or floor is None:
            return
        first, second = _moment(value), _moment(floor)
        if first is None or second is None:
            return
        if isinstance(first, datetime) and isinstance(second, datetime):
            before = first < second
        else:
            before = _day(first) < _day(second)
        if before:
            found.append(f"Subject {state.subject}: the {form.form} at position {form.position} "
                         f"has {later} {value}, before {earlier} {floor} (phase order).")

    values = form.values
    if form.form == "adverse_event":
        aware = values.get("awareness_at")
        check("awareness_at", aware, "its onset_date", values.get("onset_date"))
        check("awareness_at", aware, "the consent on", consent.isoformat())
        check("sponsor_aware_at", values.get("sponsor_aware_at"), "awareness_at", aware)
    elif form.form in ("sae_report", "causality"):
        event = state.forms.get(int(str(values.get("ae_position"))))
        if event is None:
            return found
        onset = event.values.get("onset_date")
        if form.form == "sae_report":
            check("sent_at", values.get("sent_at"), "the event's awareness_at",
                  event.values.get("awareness_at"))
            check("sent_at", values.get("sent_at"), "the event's onset_date", onset)
        else:
            check("its date", form.recorded_on.isoformat(), "the event's onset_date", onset)
    return found


def _moment(value: object) -> date | datetime | None:
    """A recorded date or date-time; a date-time without an offset counts as its date."""
    text = str(value)
    try:
        if "T" in text or " " in text.strip():
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return moment if moment.tzinfo is not None else moment.date()
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value
