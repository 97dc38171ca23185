"""Guards of the subject machine: pure functions of the facts a command loaded.

Each returns None when the transition may go on, else a RuleViolation naming subject, field
and rule. The clinical rules they call are the same pure functions the projections call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from workflow.errors import RuleViolation
from workflow.protocol import Protocol
from workflow.study import Study
from workflow.subject import SubjectState


@dataclass(frozen=True)
class Facts:
    subject: SubjectState
    study: Study
    protocol: Protocol
    today: date
    args: dict[str, Any] = field(default_factory=dict)


def _refuse(f: Facts, message: str, rule: str, field_name: str | None = None) -> RuleViolation:
    return RuleViolation(f"Subject {f.subject.subject}: {message}", rule=rule,
                         subject=f.subject.subject, field=field_name)


def reconsented(f: Facts) -> RuleViolation | None:
    in_force = f.study.protocol_version
    if in_force is not None and f.subject.protocol_version != in_force:
        return _refuse(f, f"consented under protocol version {f.subject.protocol_version} but "
                       f"version {in_force} is in force; record `trialflow reconsent` first.",
                       "reconsent_required", "protocol_version")
    return None


def screening_window_open(f: Facts) -> RuleViolation | None:
    assert f.subject.consent is not None
    days = (f.today - f.subject.consent.consent_date).days
    if days > f.protocol.screening_window_days:
        return _refuse(f, f"eligibility must be confirmed within {f.protocol.screening_window_days}"
                       f" days of consent ({f.subject.consent.consent_date}); it is day {days}.",
                       "screening_window_expired", "consent_date")
    return None


def eligible(f: Facts) -> RuleViolation | None:
    """Eligible as of the confirmation date (`f.today` is the date it is judged on): the
    evaluation reads only the forms dated on or before it, so a form dated later, entered
    before a retrospective confirmation, neither blocks nor allows it."""
    from workflow.eligibility import blocking_reason, evaluate_eligibility

    result = evaluate_eligibility(list(f.subject.forms.values()), f.subject.consent, f.protocol,
                                  today=f.today)
    blocked = blocking_reason(result)
    if blocked is None:
        return None
    code, sentence = blocked
    return RuleViolation(f"Subject {f.subject.subject} is not eligible: {sentence}",
                         rule=f"eligibility:{code}", subject=f.subject.subject, field=code)


def place_available(f: Facts) -> RuleViolation | None:
    if f.study.next_place(f.protocol) is None:
        return _refuse(f, f"the enrolment cap of {f.protocol.enrolment_cap} subjects is reached.",
                       "enrolment_cap", "enrolment")
    return None


def collected(f: Facts) -> RuleViolation | None:
    if f.subject.collection_coi is None:
        return _refuse(f, "no leukapheresis is recorded; record `trialflow leukapheresis` first.",
                       "not_collected", "coi_id")
    return None


def _coi(f: Facts, expected: str | None, what: str) -> RuleViolation | None:
    given = f.args.get("coi_id")
    if given != expected:
        return _refuse(f, f"the {what} coi_id {given} does not match the subject's "
                       f"{'collection' if what == 'product' else 'released product'} "
                       f"{expected}.", "chain_of_identity", "coi_id")
    return None


def chain_of_identity_release(f: Facts) -> RuleViolation | None:
    return _coi(f, f.subject.collection_coi, "product")


def chain_of_identity_infusion(f: Facts) -> RuleViolation | None:
    refusal = _coi(f, f.subject.product_coi, "bag")
    if refusal is None and f.subject.product_coi != f.subject.collection_coi:
        return _coi(f, f.subject.collection_coi, "bag")
    return refusal


def dose_on_regimen(f: Facts) -> RuleViolation | None:
    off = f.args.get("off_regimen")
    if off and not f.args.get("deviation"):
        return _refuse(f, f"{off}; record it with --deviation --reason if it was intended.",
                       "dose_off_regimen", "dose")
    return None


def infusion_window(f: Facts) -> RuleViolation | None:
    last = max(f.subject.lymphodepletion_days)
    on: date = f.args["infused_on"]
    lo, hi = (f.protocol.lymphodepletion.infusion_window_min_days,
              f.protocol.lymphodepletion.infusion_window_max_days)
    gap = (on - last).days
    if not lo <= gap <= hi:
        return _refuse(f, f"infusion on {on} is {gap} days after the last lymphodepletion dose "
                       f"({last}); the protocol allows {lo} to {hi} days.", "infusion_window",
                       "infused_at")
    return None


def cart_dose_within_tolerance(f: Facts) -> RuleViolation | None:
    from workflow.deviations import beyond_tolerance

    target: float = f.args["target_cells"]
    cells: float = f.args["cells"]
    if beyond_tolerance(cells, target, f.protocol.dose_tolerance_pct) and \
            not f.args.get("deviation"):
        return _refuse(f, f"{cells:.3g} cells is outside ±{f.protocol.dose_tolerance_pct:g}% of "
                       f"the cohort dose {target:.3g}; use --deviation --reason if intended.",
                       "dose_tolerance", "cells")
    return None


def visit_recordable(f: Facts) -> RuleViolation | None:
    visit = f.args["visit"]
    record = f.subject.visit_records.get(visit)
    if record is not None:
        return _refuse(f, f"visit {visit} is already recorded as {record.payload['status']} at "
                       f"position {record.position} (dated {record.on}); correct it with "
                       f"`trialflow correct {f.subject.subject} {record.position} …` or void it "
                       f"with `trialflow void {f.subject.subject} {record.position} --reason …`.",
                       "visit_already_recorded", "visit")
    return None


def visit_before_the_end(f: Facts) -> RuleViolation | None:
    """A visit entered after the subject completed or left: it happened in follow-up, on or
    after D0 and on or before the end of the study."""
    s = f.subject
    end = s.completed_on if s.phase == "completed" else s.exited_on
    on: date = f.args["visit_date"]
    if s.infused_on is None or end is None or on > end:
        return _refuse(f, f"visit {f.args['visit']} on {on} is not a follow-up visit before the "
                       f"subject's {s.phase} on {end}; only visits that happened between D0 "
                       "and the end of the study are entered after it.", "phase", "visit")
    return None


def final_visit_recorded(f: Facts) -> RuleViolation | None:
    final = f.protocol.final_visit.code
    if final not in f.subject.visits:
        return _refuse(f, f"follow-up ends with the {final} visit, which is not recorded done or "
                       "missed.", "final_visit_missing", "visit")
    return None


GUARDS: dict[str, Callable[[Facts], RuleViolation | None]] = {
    g.__name__: g for g in (
        reconsented, screening_window_open, eligible, place_available, collected,
        chain_of_identity_release, chain_of_identity_infusion, dose_on_regimen,
        infusion_window, cart_dose_within_tolerance, visit_recordable, visit_before_the_end,
        final_visit_recorded,
    )
}
