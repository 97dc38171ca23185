"""What a query reads: the read-model rows at one position of the log.

- Now (no `--as-of`/`--on`): the runner catches up first, so a user never reads stale rows,
  and the rows come from the tables. A login that may not write (an auditor on a read-only
  database) cannot catch up: the subjects with events after the checkpoint are refolded in
  memory and shown instead of their stale rows.
- `--as-of TIME|@N` ("what the system showed then") and `--on DATE` ("what was true that
  day"): every subject is folded in memory up to that point; no table is read or written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

import structlog
from sqlalchemy import Engine, Table, select

from events.errors import SchemaMissing, StoreUnavailable
from events.store import EventStore
from events.streams import STUDY_STREAM
from events.translate import translated
from projections import registry
from projections import tables as t
from projections.as_of import as_of_position
from projections.runner import REFOLD_ALL, Runner, is_subject_stream
from projections.study_facts import study_from_facts
from projections.subject_rows import Row, Rows, SubjectContext, events_on, fold_context, zone_of
from workflow import event_types as T
from workflow.study import Study, fold_study

log = structlog.get_logger("trialflow.projections")
PLACE_EVENTS = frozenset({T.ENROLMENT_PLACE_TAKEN, T.ENROLMENT_PLACE_FREED})


@dataclass
class View:
    """Read-model rows at `position`: from the tables, from memory, or tables overlaid by the
    subjects refolded in memory (`overlay`)."""

    position: int
    study: Study
    source: str  # tables | memory | tables+memory
    engine: Engine | None = None
    memory: dict[str, list[Row]] = field(default_factory=dict)  # table -> rows (memory)
    overlay: dict[str, Rows] = field(default_factory=dict)  # subject -> its rows (lag)
    on: date | None = None

    def rows(self, table: Table, subject: str | None = None) -> list[Row]:
        if self.source == "memory":
            found = self.memory.get(table.name, [])
            return [r for r in found if subject is None or r["subject"] == subject]
        assert self.engine is not None
        query = select(table)
        if subject is not None:
            query = query.where(table.c.subject == subject)
        with translated(), self.engine.connect() as conn:
            stored = [dict(r._mapping) for r in conn.execute(query).all()]
        if not self.overlay:
            return stored
        out = [r for r in stored if r["subject"] not in self.overlay]
        for name, rows in self.overlay.items():
            if subject is None or name == subject:
                out.extend(rows.get(table.name, []))
        return out

    def subjects(self) -> list[Row]:
        return sorted(self.rows(t.subjects), key=lambda r: r["subject"])

    def subject(self, subject: str) -> Row | None:
        found = self.rows(t.subjects, subject)
        return found[0] if found else None


def open_view(engine: Engine, store: EventStore, *, as_of: str | None = None,
              on: date | None = None) -> View:
    if as_of is not None or on is not None:
        position = as_of_position(as_of, store)
        return memory_view(store, store.last_position() if position is None else position, on)
    try:
        result = Runner(engine, store).catch_up()
    except StoreUnavailable as error:
        # read-only or full: the tables cannot move; busy: another process holds the write
        # lock past the timeout (SQLite readers still read). Either way the answer is the
        # tables at their checkpoint plus the lag folded in memory, never stale data.
        if error.retryable and error.rule != "database_busy":
            raise
        log.info("read models not caught up: folding the lag in memory", reason=error.rule)
        return lag_view(engine, store)
    with translated(), engine.connect() as conn:
        facts = conn.execute(select(t.study_facts.c.kind, t.study_facts.c.key,
                                    t.study_facts.c.value)).all()
    study = study_from_facts((r.kind, r.key, r.value) for r in facts)
    return View(result.head, study, "tables", engine=engine)


def fold_subjects(store: EventStore, study: Study, position: int, subjects: list[str],
                  on: date | None = None) -> Iterator[tuple[str, Rows]]:
    """Each subject's rows of every read model, folded in memory up to `position`."""
    for subject in subjects:
        events = store.read_stream(subject, up_to_position=position)
        ctx = fold_context(study, subject, events)
        if ctx is not None and on is not None:
            ctx = fold_context(study, subject, events_on(events, on, zone_of(study,
                                                                              ctx.state.site)))
        yield subject, rows_of(ctx)


def rows_of(ctx: SubjectContext | None) -> Rows:
    rows: Rows = {}
    if ctx is None:
        return rows
    for projection in registry.SUBJECT_PROJECTIONS:
        rows.update(projection.fold(ctx))
    return rows


def memory_view(store: EventStore, position: int, on: date | None = None) -> View:
    study_events = store.read_stream(STUDY_STREAM, up_to_position=position)
    if on is not None:  # enrolment places taken or freed after that day did not exist yet
        study_events = [e for e in study_events if e.type not in PLACE_EVENTS
                        or e.occurred_at[:10] <= on.isoformat()]
    study = fold_study(study_events)
    subjects = sorted(s for s in store.stream_heads() if is_subject_stream(s))
    memory: dict[str, list[Row]] = {}
    for _, rows in fold_subjects(store, study, position, subjects, on):
        for table, table_rows in rows.items():
            memory.setdefault(table, []).extend(table_rows)
    return View(position, study, "memory", memory=memory, on=on)


def lag_view(engine: Engine, store: EventStore) -> View:
    """The tables as far as their checkpoint, and the rest folded in memory."""
    head = store.last_position()
    try:
        with translated(), engine.connect() as conn:
            marks = [int(r.position) for r in conn.execute(select(t.checkpoints)).all()
                     if r.name in registry.VERSIONS
                     and int(r.version) == registry.VERSIONS[r.name]]
    except SchemaMissing:
        marks = []
    if len(marks) < len(registry.NAMES):
        return memory_view(store, head)
    lag = list(store.read_all(after=min(marks), up_to=head))
    if any(e.stream_id == STUDY_STREAM and e.type in REFOLD_ALL for e in lag):
        return memory_view(store, head)
    touched = sorted({e.stream_id for e in lag if is_subject_stream(e.stream_id)})
    study = fold_study(store.read_stream(STUDY_STREAM, up_to_position=head))
    overlay = dict(fold_subjects(store, study, head, touched))
    return View(head, study, "tables+memory" if overlay else "tables", engine=engine,
                overlay=overlay)
