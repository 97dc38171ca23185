"""Folding many subjects on every core (rebuilds): worker processes read and fold chunks of
subjects, the runner's process writes their rows in its one transaction.

Each worker opens its own engine on the same database (pooled connections never cross a
process boundary) and reads committed events only, so it sees exactly what the runner's
head covers. Results come back in submission order with at most two chunks per worker in
flight, so memory stays bounded whatever the size of the study.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Final

from sqlalchemy import Engine

from events.store import EventStore
from projections.kept_streams import KeptStreams
from projections.subject_rows import Rows
from workflow.study import Study

MIN_SUBJECTS: Final = 400  # below this a pool costs more than it saves
CHUNK: Final = 200  # subjects per chunk at most (the rows of a chunk are in memory at once)
MIN_CHUNK: Final = 25

_worker_store: EventStore | None = None
_worker_study: Study | None = None


def workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def chunk_size(subjects: int, count: int) -> int:
    """Subjects per chunk for `count` workers: about sixteen chunks each, so that the last
    chunks (one worker busy, the other done) leave a core idle briefly, but no more than
    `CHUNK` (memory) nor fewer than `MIN_CHUNK` (statements and messages per chunk)."""
    return max(MIN_CHUNK, min(CHUNK, subjects // (16 * count) + 1))


def _start(url: str, study: Study) -> None:
    """A worker's store and the study at the head (given once, not with every chunk)."""
    global _worker_store, _worker_study
    from events.engine import create_store_engine

    _worker_store = EventStore(create_store_engine(url))
    _worker_study = study


def _fold(subjects: Sequence[str], wanted: dict[str, list[str]], head: int
          ) -> dict[str, list[Any]]:
    assert _worker_store is not None and _worker_study is not None
    return fold_chunk(_worker_store, _worker_study, subjects, wanted, head)


def fold_chunk(store: EventStore, study: Study, subjects: Sequence[str],
               wanted: dict[str, list[str]], head: int, kept: KeptStreams | None = None
               ) -> dict[str, list[Any]]:
    """The rows, by table, of `subjects` folded up to `head` for the projections each wants,
    encoded for the database's INSERT (`runner.encode_rows`); with `kept`, each stream is
    folded onto what was kept of it (projections/kept_streams.py)."""
    from projections.runner import encode_rows, subject_rows_of
    from projections.subject_rows import fold_context

    rows: dict[str, list[dict[str, Any]]] = {}
    for subject in subjects:
        if kept is None:
            ctx = fold_context(study, subject, store.read_stream(subject, up_to_position=head))
        else:
            stream = kept.stream(store, subject, head)
            ctx = None if stream is None else fold_context(study, subject, stream.events,
                                                           stream.state)
        for name in wanted[subject]:
            found: Rows = subject_rows_of(name, ctx)
            for table_name, table_rows in found.items():
                rows.setdefault(table_name, []).extend(table_rows)
    return encode_rows(store.engine.dialect, rows)


def fold_in_parallel(engine: Engine, study: Study, chunks: Sequence[Sequence[str]],
                     wanted: dict[str, list[str]], head: int
                     ) -> Iterator[tuple[Sequence[str], dict[str, list[Any]]]]:
    """(chunk, its rows) for each chunk, in order, folded by a pool of processes."""
    url = engine.url.render_as_string(hide_password=False)
    count = workers()
    context = multiprocessing.get_context("fork" if "fork" in
                                          multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(count, mp_context=context, initializer=_start,
                             initargs=(url, study)) as pool:
        pending: deque[tuple[Sequence[str], Future[dict[str, list[Any]]]]] = deque()
        for chunk in chunks:
            part = {s: wanted[s] for s in chunk}
            pending.append((chunk, pool.submit(_fold, chunk, part, head)))
            if len(pending) >= 2 * count:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
