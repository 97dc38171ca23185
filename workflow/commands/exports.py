"""The decision of an export record: `ExportRecorded` {kind, file, sha256, position} in the
`study` stream, so an auditor sees who took which data out, when, and can prove which file it
was. An export is a read; this record is its one write, made by the proven acting user."""

from __future__ import annotations

from typing import Any

from events.envelope import NewEvent
from events.streams import STUDY_STREAM
from workflow import event_types as T
from workflow.commands.decision import Context, Decision, decided
from workflow.commands.messages import RecordExport


def record_export(m: RecordExport, c: Context) -> Decision:
    payload: dict[str, Any] = {"kind": m.kind, "file": m.file, "sha256": m.sha256,
                               "position": m.position}
    if m.subject is not None:
        payload["subject"] = m.subject
    return decided(STUDY_STREAM, [NewEvent(T.EXPORT_RECORDED, payload)], dict(payload))
