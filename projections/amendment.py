"""`trialflow protocol preview`: the preview of a protocol amendment (workflow/amendment.py)
over the whole log, read in one pass, with a progress bar's ticks. A read: nothing is written
and the read models are not touched (not even caught up)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from events.store import EventStore
from events.streams import STUDY_STREAM
from projections.progress import Progress, ticker
from workflow.amendment import Candidate, Preview, candidate_from_text, candidate_of, preview
from workflow.protocol import read_protocol_file
from workflow.study import Study, fold_study
from workflow.subject import subject_streams


def candidate_named(study: Study, target: str) -> Candidate:
    """`FILE|VERSION`: a version number (loaded or builtin) or a protocol file to read."""
    if target.strip().isdigit():
        return candidate_of(study, int(target))
    return candidate_from_text(study, read_protocol_file(Path(target)), target)


def preview_of(store: EventStore, target: str, *, now: datetime | None = None,
               up_to: int | None = None, progress: Progress | None = None) -> Preview:
    """The preview of `target` against the log at its head now, or as it stood at position
    `up_to` (an auditor's check of a recorded amendment's digest)."""
    head = store.last_position() if up_to is None else min(up_to, store.last_position())
    study = fold_study(store.read_stream(STUDY_STREAM, up_to_position=head))
    candidate = candidate_named(study, target)
    streams = subject_streams(store, head)
    tick = ticker(progress, len(streams))
    return preview(study, candidate, streams, head, now=now,
                   tick=lambda: tick("folding each subject under both protocols"))
