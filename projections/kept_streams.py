"""Subjects' streams (and the study's facts) a process keeps folded for its catch-ups, per
store (issue 17).

A catch-up refolds each subject its new events touch. Without this, it reads that subject's
whole stream again and folds it from the first event, though a long-running process (the
scheduler, a server, the demo) caught up the same subject a moment ago. Here the catch-up
reads only the events after the version it keeps, starting one version early: the stored
event at the kept version must be the very event kept (same hash, and the hashes chain each
event to the one before), or the stream is read and folded again from the start. A log that
was put back to an older copy, or that differs in any event the fold saw, is therefore never
folded onto.

Only catch-ups use it: a rebuild folds every stream afresh, as its name promises, and a
parallel catch-up (a protocol amendment refolding every subject) folds in worker processes.

The study's facts that subject folds read are kept the same way, for the study stream they
fold: its last event's version and hash at the study read model's checkpoint (one indexed
row). A catch-up with no study event since its checkpoint, whose study stream there ends in
the event kept, uses them instead of reading the facts table again. A study event reads the
table, as before, and keeps nothing; so does a log whose study stream differs (put back to
an older copy, another study's file), whatever the positions.
The kept state only spares work: the rows written are those of a fold of the whole stream,
since `fold_onto` gives exactly that (tests/projections/test_kept_streams.py checks tables
caught up this way against a rebuild).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from events.envelope import RecordedEvent
from events.store import EventStore
from projections.per_store import PerStore
from workflow.study import Study
from workflow.subject import SubjectState, fold_onto, fold_subject

# per store, least recently caught up out: a complete stream (about 80 events) and its fold
# take about 250 KiB in memory, so at most about 32 MiB
SUBJECTS_KEPT: Final = 128


StudyHead = tuple[int, str] | None  # the study stream's last (version, hash); None: empty


@dataclass(frozen=True)
class KeptStream:
    """A subject's stream up to some version, and its fold (never changed: a newer read
    makes another)."""

    events: tuple[RecordedEvent, ...]
    state: SubjectState


class KeptStreams:
    """The streams one store's catch-ups keep (a bounded, thread-safe cache)."""

    def __init__(self, size: int = SUBJECTS_KEPT) -> None:
        self._size = size
        self._streams: OrderedDict[str, KeptStream] = OrderedDict()
        self._study: tuple[StudyHead, Study] | None = None
        self._lock = threading.Lock()

    def study_for(self, head: StudyHead) -> Study | None:
        """The study's facts as subject folds read them, if kept for the study stream ending
        in exactly `head` (its last event's version and hash: the hashes chain every event to
        the one before, so equal heads are equal streams, and the facts are their fold)."""
        with self._lock:
            kept = self._study
        return kept[1] if kept is not None and kept[0] == head else None

    def keep_study(self, head: StudyHead, study: Study) -> None:
        """`study` is the facts of the study stream ending in `head`; no caller changes it
        afterwards."""
        with self._lock:
            self._study = (head, study)

    def __len__(self) -> int:
        return len(self._streams)

    def stream(self, store: EventStore, subject: str, head: int) -> KeptStream | None:
        """`subject`'s stream up to position `head` and its fold (None: no event yet)."""
        with self._lock:
            kept = self._streams.get(subject)
        found = None if kept is None else _onto(store, kept, head)
        if found is None:
            events = tuple(store.read_stream(subject, up_to_position=head))
            if not events:
                return None
            found = KeptStream(events, fold_subject(subject, events))
        with self._lock:
            self._streams[subject] = found
            self._streams.move_to_end(subject)
            while len(self._streams) > self._size:
                self._streams.popitem(last=False)
        return found


def _onto(store: EventStore, kept: KeptStream, head: int) -> KeptStream | None:
    """`kept` with the events after it up to `head` folded in, or None when `kept` cannot be
    proved to be the start of the stream as stored now (then it is read again)."""
    last = kept.events[-1]
    if last.position > head:  # kept beyond what this catch-up may see
        return None
    read = store.read_stream(last.stream_id, after_version=last.version - 1,
                             up_to_position=head)
    if not read or read[0].version != last.version or read[0].hash != last.hash:
        return None  # the stored event at the kept version is not the one kept
    newer: Sequence[RecordedEvent] = read[1:]
    if not newer:
        return kept
    if any(e.version != last.version + i for i, e in enumerate(newer, start=1)):
        return None  # never expected of the store (versions are dense); read it whole then
    return KeptStream((*kept.events, *newer), fold_onto(kept.state, newer))


_KEPT: Final = PerStore(KeptStreams)


def kept_streams(store: EventStore) -> KeptStreams:
    """The streams kept for `store`, for as long as it lives."""
    return _KEPT.of(store)
