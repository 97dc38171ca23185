"""What a query reads: the read-model rows at one position of the log.

- Now (no `--as-of`/`--on`): the runner catches up first, so a user never reads stale rows,
  and the rows come from the tables; when nothing is new (every checkpoint at the log's head
  at its projection's current version, one query) the runner is not even started. A login
  that may not write (an auditor on a read-only database) cannot catch up: the subjects with
  events after the checkpoint are refolded in memory and shown instead of their stale rows.
- `--as-of TIME|@N` ("what the system showed then") and `--on DATE` ("what was true that
  day"): every subject is folded in memory up to that point; no table is read or written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Engine, Table, column, func, select
from sqlalchemy import table as sql_table

from events.envelope import RecordedEvent
from events.errors import EventStoreError, SchemaMissing, StoreUnavailable
from events.store import EventStore
from events.streams import STUDY_STREAM
from events.translate import translated
from projections import tables as t

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ColumnElement

    from projections.subject_rows import Row, Rows, SubjectContext
    from workflow.study import Study

# The folds (projections.subject_rows, projections.runner and the workflow rules behind them)
# are imported where they are used: a query whose read models are up to date reads tables
# only, and a command's start-up is mostly imports (issue 17, docs/performance.md).
log = structlog.get_logger("trialflow.projections")


def _place_events() -> frozenset[str]:
    from workflow import event_types as T

    return frozenset({T.ENROLMENT_PLACE_TAKEN, T.ENROLMENT_PLACE_FREED})


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
    _subjects: list[Row] | None = field(default=None, init=False, repr=False, compare=False)
    _streams: dict[str, list[RecordedEvent]] = field(default_factory=dict, init=False,
                                                      repr=False, compare=False)

    def stream(self, store: EventStore, subject: str) -> list[RecordedEvent]:
        """A subject's stream up to the view's position, read once per view (it cannot change
        below that position): a page that folds each subject several ways reads it once."""
        found = self._streams.get(subject)
        if found is None:
            found = self._streams[subject] = store.read_stream(subject,
                                                               up_to_position=self.position)
        return found

    def rows(self, table: Table, subject: str | None = None, *,
             where: Filter | None = None) -> list[Row]:
        """The rows of `table` (of one subject); `where` keeps only the rows it accepts (on
        the tables a SQL condition, in memory the same test in Python)."""
        if self.source == "memory":
            found = self.memory.get(table.name, [])
            return [r for r in found if (subject is None or r["subject"] == subject)
                    and (where is None or where.keep(r))]
        assert self.engine is not None
        query = select(table)
        if subject is not None:
            query = query.where(table.c.subject == subject)
        if where is not None:
            query = query.where(where.condition(table))
        with translated(), self.engine.connect() as conn:
            result = conn.execute(query)
            keys = list(result.keys())
            stored = [dict(zip(keys, r, strict=True)) for r in result.all()]
        if not self.overlay:
            return stored
        out = [r for r in stored if r["subject"] not in self.overlay]
        for name, rows in self.overlay.items():
            if subject is None or name == subject:
                out.extend(r for r in rows.get(table.name, []) if where is None or where.keep(r))
        return out

    def subjects(self) -> list[Row]:
        """Every subject's row, by subject (read once per view)."""
        if self._subjects is None:
            self._subjects = sorted(self.rows(t.subjects), key=lambda r: r["subject"])
        return list(self._subjects)

    def subject(self, subject: str) -> Row | None:
        found = self.rows(t.subjects, subject)
        return found[0] if found else None


@dataclass(frozen=True)
class Filter:
    """A condition on a read model's rows, as SQL for the tables and as Python for rows
    folded in memory (the two must agree)."""

    condition: Callable[[Table], ColumnElement[bool]]
    keep: Callable[[Row], bool]


def open_view(engine: Engine, store: EventStore, *, as_of: str | None = None,
              on: date | None = None) -> View:
    if as_of is not None or on is not None:
        from projections.as_of import as_of_position

        position = as_of_position(as_of, store)
        return memory_view(store, store.last_position() if position is None else position, on)
    fresh = _up_to_date(engine)
    if fresh is not None:
        return _tables_view(engine, fresh)
    from projections.runner import Runner

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
    return _tables_view(engine, result.head)


def _up_to_date(engine: Engine) -> int | None:
    """The log's head when every read model's checkpoint is there at its current version
    (nothing to catch up), else None: one query, and no write transaction, where a catch-up
    takes the runner's lock. Any doubt (no tables yet, an error) is left to the runner."""
    from projections import registry

    query = select(t.checkpoints.c.name, t.checkpoints.c.version, t.checkpoints.c.position,
                   _HEAD)
    try:
        with translated(), engine.connect() as conn:
            rows = conn.execute(query).all()
    except EventStoreError:  # no schema yet, busy, …: the runner says what it is
        return None
    if not rows:
        return None
    last = int(rows[0][3] or 0)
    marks = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
    for name, version in registry.VERSIONS.items():
        if marks.get(name) != (version, last):
            return None
    return last


# the log's last position (0 when empty), as `EventStore.last_position` reads it
_HEAD = select(func.max(column("position"))).select_from(sql_table("events")).scalar_subquery()


def _tables_view(engine: Engine, head: int) -> View:
    from projections.study_facts import study_from_facts

    with translated(), engine.connect() as conn:
        facts = conn.execute(select(t.study_facts.c.kind, t.study_facts.c.key,
                                    t.study_facts.c.value)).all()
    study = study_from_facts((r.kind, r.key, r.value) for r in facts)
    return View(head, study, "tables", engine=engine)


def fold_subjects(store: EventStore, study: Study, position: int, subjects: list[str],
                  on: date | None = None) -> Iterator[tuple[str, Rows]]:
    """Each subject's rows of every read model, folded in memory up to `position`."""
    from projections.subject_rows import events_on, fold_context, zone_of

    for subject in subjects:
        events = store.read_stream(subject, up_to_position=position)
        ctx = fold_context(study, subject, events)
        if ctx is not None and on is not None:
            ctx = fold_context(study, subject, events_on(events, on, zone_of(study,
                                                                              ctx.state.site)))
        yield subject, rows_of(ctx)


def rows_of(ctx: SubjectContext | None) -> Rows:
    from projections import registry

    rows: Rows = {}
    if ctx is None:
        return rows
    for projection in registry.SUBJECT_PROJECTIONS:
        rows.update(projection.fold(ctx))
    return rows


def memory_view(store: EventStore, position: int, on: date | None = None) -> View:
    from projections.runner import is_subject_stream
    from workflow.study import fold_study

    study_events = store.read_stream(STUDY_STREAM, up_to_position=position)
    if on is not None:  # enrolment places taken or freed after that day did not exist yet
        place_events = _place_events()
        study_events = [e for e in study_events if e.type not in place_events
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
    from projections import registry
    from projections.runner import REFOLD_ALL, is_subject_stream
    from workflow.study import fold_study

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
