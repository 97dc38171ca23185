"""A subject's status (docs/design.md `status SUBJECT`): derived at query time from a clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from events.envelope import RecordedEvent
from workflow.errors import InvalidInput
from workflow.study import Study
from workflow.subject import SubjectState
from workflow.tasks import first_task, subject_tasks


def subject_status(study: Study, s: SubjectState, now: datetime,
                   events: Sequence[RecordedEvent] | None = None) -> dict[str, Any]:
    """The subject's phase and its next step: the first of its open tasks (workflow/tasks.py,
    the source `trialflow todo` lists), `next_task` being that task in full. With the
    stream's `events` the data review tasks (queries, source verification, signatures) count
    too."""
    if not s.consented:
        raise InvalidInput(f"Subject {s.subject} is not known: it has no consent recorded.",
                           field="subject", subject=s.subject)
    today = now.astimezone(study.zone(s.site)).date()
    assert s.phase is not None
    first = first_task(subject_tasks(study, s, now, events))
    next_step = None if first is None else first.action
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
        "next_task": None if first is None else first.to_json(),
    }
