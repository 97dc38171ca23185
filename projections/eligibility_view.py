"""Eligibility of one subject (DESIGN.md `eligibility SUBJECT`), from the same pure rules the
`confirm-eligibility` guard calls, so the screen and the guard never disagree."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from workflow.eligibility import evaluate_eligibility
from workflow.errors import InvalidInput
from workflow.study import Study
from workflow.subject import SubjectState


def eligibility_view(study: Study, subject: SubjectState, now: datetime) -> dict[str, Any]:
    if not subject.consented:
        raise InvalidInput(f"Subject {subject.subject} is not known: it has no consent recorded.",
                           field="subject", subject=subject.subject)
    today = now.astimezone(ZoneInfo(study.sites.get(subject.site or "", "UTC"))).date()
    result = evaluate_eligibility(list(subject.forms.values()), subject.consent, study.protocol,
                                  today=today)
    return {"subject": subject.subject, "phase": subject.phase, **result.to_json()}
