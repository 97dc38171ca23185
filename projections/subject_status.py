"""A subject's status (docs/design.md `status SUBJECT`): derived at query time from a clock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from workflow.errors import InvalidInput
from workflow.machine import TERMINAL
from workflow.study import Study
from workflow.subject import SubjectState

NEXT_STEPS = {
    "screening": "record screening forms, then an investigator runs confirm-eligibility",
    "cell_collection": "record leukapheresis, then release the product",
    "lymphodepletion": "record the lymphodepletion doses of the regimen",
    "infusion": "infuse within the window after the last lymphodepletion dose",
    "follow_up": "record the follow-up visits",
}


def subject_status(study: Study, s: SubjectState, now: datetime) -> dict[str, Any]:
    if not s.consented:
        raise InvalidInput(f"Subject {s.subject} is not known: it has no consent recorded.",
                           field="subject", subject=s.subject)
    today = now.astimezone(study.zone(s.site)).date()
    assert s.phase is not None
    next_step: str | None = NEXT_STEPS.get(s.phase)
    if s.phase == "cell_collection" and s.collection_coi is not None:
        next_step = ("record a new leukapheresis or take the subject off study "
                     "(manufacturing_failure)" if s.product_failed else "release the product")
    if s.phase == "follow_up":
        codes = study.protocol_of(s.protocol_version).visit_codes
        recorded = [i for i, code in enumerate(codes) if code in s.visits]
        # visits before the last recorded one are done or missed (the next one was done)
        pending = [c for c in codes[(recorded[-1] + 1) if recorded else 0:]
                   if c not in s.visits]
        next_step = f"record visit {pending[0]}" if pending else "complete the study"
    if s.phase in TERMINAL:
        next_step = None
    return {
        "subject": s.subject,
        "phase": s.phase,
        "days_in_phase": (today - s.phase_since).days if s.phase_since else None,
        "study_day": (today - s.infused_on).days if s.infused_on else None,
        "cohort": s.cohort,
        "enrolment_order": s.enrolment_order,
        "site": s.site,
        "protocol_version": s.protocol_version,
        "exit_reason": s.exit_reason,
        "next_step": next_step,
    }
