"""Recording an export in the `study` stream: `ExportRecorded` {kind, file, sha256, position}.

An export is a read; recording it is the one write, so an auditor can later see who took
which data out, when, and prove which file it was (its SHA-256). Any active user may export,
except the scheduler, whose identity may append reminder events only (DESIGN.md). The export
itself never depends on this write: the caller writes the file first and records it after,
so a read-only login still exports (the caller warns that nothing was recorded).
"""

from __future__ import annotations

import re
from typing import Any, Final

from events.envelope import NewEvent
from events.store import StreamAppend
from events.streams import STUDY_STREAM, check_subject_id
from workflow import event_types as T
from workflow.commands import Outcome, Workflow
from workflow.errors import InvalidInput, RuleViolation
from workflow.study import ROLES, Study, User

EXPORT_KINDS: Final[tuple[str, ...]] = ("odm", "fhir", "csv", "ics")
EXPORTERS: Final = frozenset(ROLES) - {"scheduler"}
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


class ExportLog(Workflow):
    """The write of an export record, through the workflow's plumbing (`_run`: the acting
    user must be an active user of the study; idempotent by command id; conflicts retried)."""

    def record_export(self, user: str | None, kind: str, file: str, sha256: str,
                      position: int, *, subject: str | None = None,
                      command_id: str | None = None) -> Outcome:
        payload = _payload(kind, file, sha256, position, subject)

        def build(study: Study, actor: User) -> tuple[list[StreamAppend], dict[str, Any]]:
            if actor.role not in EXPORTERS:
                raise RuleViolation(
                    f"User {actor.name} ({actor.role}) may not record exports: the scheduler "
                    "appends reminder events only.", rule="role", field="user")
            return [StreamAppend(STUDY_STREAM, study.version,
                                 [NewEvent(T.EXPORT_RECORDED, payload)])], dict(payload)
        return self._run("export", payload, user, command_id, build)


def _payload(kind: str, file: str, sha256: str, position: int,
             subject: str | None) -> dict[str, Any]:
    if kind not in EXPORT_KINDS:
        raise InvalidInput(f"Export kind {kind!r} is not one of {', '.join(EXPORT_KINDS)}.",
                           field="kind")
    if not file or len(file) > 255 or any(ord(char) < 32 for char in file):
        raise InvalidInput("An export's file name must be 1 to 255 printable characters.",
                           field="file")
    if not _SHA256.fullmatch(sha256):
        raise InvalidInput("An export's sha256 must be 64 lower-case hex digits.",
                           field="sha256")
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise InvalidInput("An export's position must be a whole number from 0.",
                           field="position")
    payload: dict[str, Any] = {"kind": kind, "file": file, "sha256": sha256,
                               "position": position}
    if subject is not None:
        payload["subject"] = check_subject_id(subject)
    return payload
