"""The decision of `CopySubjects` (`trialflow demo --subjects N`): copies of a template subject's
history into new subjects, each shifted by whole days and with the positions its payloads name
renumbered (workflow/demo.py), and their enrolment places. Only in a study created by
`trialflow demo`: the copies are synthetic, and the audit trail names the admin who made them."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from events.envelope import NewEvent, RecordedEvent
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.commands.decision import Context, Decision, Write
from workflow.commands.messages import CopySubjects
from workflow.demo import copy_history
from workflow.errors import InvalidInput, RuleViolation


def copy_subjects(m: CopySubjects, c: Context) -> Decision:
    if c.study.purpose != "demo":
        raise RuleViolation("Subjects are copied only in a study made by `trialflow demo`; this "
                            "study holds real data.", rule="demo_only", field="template")
    if not c.template:
        raise InvalidInput(f"Template subject {m.template} has no events.", field="template")
    template = tuple(_as_enrolled_under(e, m.protocol_version) for e in c.template
                     if e.type not in (T.SUBJECT_RECONSENTED, T.SIGNATURE_RECORDED))
    place = c.study.place_of(m.template)
    head = c.last_position
    writes, places = [], []
    for index, subject in enumerate(m.subjects):
        order = m.first_order + index
        shift = timedelta(days=(m.offset + index) % m.spread_days)
        events = copy_history(template, subject, shift, head, order)
        head += len(events)
        writes.append(Write(subject, tuple(events), new=True))
        if place is not None:
            places.append(NewEvent(T.ENROLMENT_PLACE_TAKEN, {
                "subject": subject, "order": order, "cohort": place.cohort}))
    if places:
        writes.append(Write(STUDY_STREAM, tuple(places)))
    return Decision(tuple(writes), {"template": m.template, "copies": len(m.subjects),
                                    "first_order": m.first_order}, expects_head=True)


def _as_enrolled_under(event: RecordedEvent, version: int) -> RecordedEvent:
    """A template event as if its subject had consented under protocol `version` (re-consents
    and signatures are left out by the caller: a copied signature would name the template's
    hash, not the copy's)."""
    if "protocol_version" not in event.payload:
        return event
    payload = {**event.payload, "protocol_version": version}
    return replace(event, payload_text=json.dumps(payload, sort_keys=True, separators=(",", ":")))
