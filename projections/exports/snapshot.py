"""The log as every export sees it: read once, `ExportRecorded` events left out.

An export must not change what the next export of the same log contains, so the events that
record exports are never part of an export, and the position an export covers is that of the
last event it did include. Two exports of one log, with any number of exports recorded in
between, therefore read the same events and give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from events.envelope import RecordedEvent
from events.store import EventStore
from events.streams import STUDY_STREAM, is_subject_id
from workflow import event_types as T
from workflow.protocol import Protocol
from workflow.study import Study, fold_study
from workflow.subject import SubjectState, fold_subject

EXCLUDED_TYPES: Final = frozenset({T.EXPORT_RECORDED})
EPOCH: Final = "1970-01-01T00:00:00Z"  # the time of an empty log


@dataclass(frozen=True)
class Snapshot:
    """Every exported event up to `position`, the study folded, and each consented subject."""

    position: int  # the last position included (0: nothing recorded yet)
    as_of: str  # recorded_at of that event: the only time an export states
    events: tuple[RecordedEvent, ...]
    study: Study
    study_events: tuple[RecordedEvent, ...]
    streams: Mapping[str, tuple[RecordedEvent, ...]] = field(default_factory=dict)
    subjects: Mapping[str, SubjectState] = field(default_factory=dict)  # sorted by id

    @property
    def protocol(self) -> Protocol:
        """The protocol version in force."""
        return self.study.protocol

    @property
    def registry_id(self) -> str:
        return self.protocol.registry_id


def snapshot_of(events: list[RecordedEvent]) -> Snapshot:
    """A snapshot of `events` (in position order); export records are dropped here too."""
    kept = tuple(e for e in events if e.type not in EXCLUDED_TYPES)
    study_events = tuple(e for e in kept if e.stream_id == STUDY_STREAM)
    grouped: dict[str, list[RecordedEvent]] = {}
    for event in kept:
        if is_subject_id(event.stream_id):
            grouped.setdefault(event.stream_id, []).append(event)
    streams = {name: tuple(grouped[name]) for name in sorted(grouped)}
    subjects = {}
    for name, stream in streams.items():
        state = fold_subject(name, stream)
        if state.consented:
            subjects[name] = state
    last = kept[-1] if kept else None
    return Snapshot(
        position=last.position if last else 0,
        as_of=last.recorded_at if last else EPOCH,
        events=kept,
        study=fold_study(study_events),
        study_events=study_events,
        streams=streams,
        subjects=subjects,
    )


def take_snapshot(store: EventStore) -> Snapshot:
    """Read the whole log once (one consistent read) and fold what the exports need."""
    return snapshot_of(list(store.read_all()))
