"""The projection runner: apply new events to the read models, exactly once.

One catch-up is one transaction: it locks the checkpoints (SQLite: `BEGIN IMMEDIATE`, the
database write lock; PostgreSQL: `SELECT … FOR UPDATE` on the checkpoint rows), reads them
again under the lock, applies the events between each checkpoint and the log's head, and
moves the checkpoints to the head in the same commit. A crash anywhere rolls all of it back;
a second runner waits for the lock and then finds nothing left to do. The head is read after
the lock is taken, and appends commit in position order (events/store.py), so no event below
the head can still be missing.

Subject read models are folds of one subject's stream plus the study's facts, so applying
new events means refolding the subjects they touch and replacing those subjects' rows: the
result is by construction the rows a rebuild produces. Events of the `study` stream update
`rm_study_facts`; a protocol or site event refolds every subject (rare: an amendment).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import structlog
from sqlalchemy import (
    Connection,
    Delete,
    Engine,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    delete,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from events.engine import WRITE, is_sqlite, read_only
from events.envelope import RecordedEvent
from events.errors import database_read_only
from events.store import EventStore
from events.streams import STUDY_STREAM, is_subject_id
from events.translate import translated
from projections import parallel, registry
from projections.kept_streams import KeptStreams, StudyHead, kept_streams
from projections.schema import ensure_schema
from projections.study_facts import changed_facts, facts_of, study_from_facts
from projections.subject_rows import Rows, SubjectContext
from workflow import event_types as T
from workflow.errors import InvalidInput
from workflow.study import Study, apply_study, fold_study

log = structlog.get_logger("trialflow.projections")

# study events that change what a subject's rows show (time zones, protocol texts/in force)
REFOLD_ALL: Final = frozenset({T.SITE_ADDED, T.PROTOCOL_LOADED, T.PROTOCOL_AMENDED})
FOLD_FACTS: Final = ("stream", "site", "protocol", "in_force")  # what subject folds read
CHUNK: Final = 200  # subjects written per batch of statements

Progress = Callable[[int, int], None]  # (subjects done, subjects in all)
_T = TypeVar("_T")


def is_subject_stream(stream_id: str) -> bool:
    return is_subject_id(stream_id)


@dataclass
class CatchUp:
    """What one catch-up did (for logs, `projections status` and tests)."""

    head: int
    applied: dict[str, int] = field(default_factory=dict)  # name -> events applied
    subjects: int = 0  # subjects refolded


class Runner:
    """`tables`: the live read models (default), or the shadow ones (projections/shadow.py)."""

    def __init__(self, engine: Engine, store: EventStore,
                 tables: registry.TableSet = registry.LIVE) -> None:
        self.engine = engine
        self.store = store
        self.tables = tables
        self._schema_seen = False

    # ------------------------------------------------------------------ public
    def catch_up(self, names: Sequence[str] = registry.NAMES, *,
                 up_to: int | None = None) -> CatchUp:
        """Bring `names` up to the log's head (or to position `up_to`); a no-op when
        nothing is new."""
        names = _with_study(names)
        self._writable()
        with translated(), self._transaction() as conn:
            marks = self._lock(conn, names)
            head = self._head(up_to)
            lagging = {name: at for name, at in marks.items() if at < head}
            result = CatchUp(head)
            if lagging:
                self._apply(conn, lagging, head, result, kept=kept_streams(self.store),
                            study_ahead=marks[registry.STUDY] > head)
            return result

    def rebuild(self, names: Sequence[str] = registry.NAMES,
                progress: Progress | None = None, *, up_to: int | None = None) -> CatchUp:
        """Recreate `names` from position 0 (up to the head or `up_to`) in one transaction;
        readers keep the old rows until it commits."""
        names = _with_study(names)
        self._writable()
        with translated(), self._transaction() as conn:
            marks = self._lock(conn, names)
            for name in names:
                for table in self.tables.projections[name]:
                    conn.execute(delete(table))
                marks[name] = 0
            head = self._head(up_to)
            result = CatchUp(head)
            lagging = {n: at for n, at in marks.items() if at < head or n in names}
            self._apply(conn, lagging, head, result, progress)
            return result

    def status(self) -> list[dict[str, Any]]:
        """Each projection's checkpoint and lag behind the log's head."""
        head = self.store.last_position()
        with translated(), self.engine.connect() as conn:
            rows = {r.name: r for r in conn.execute(select(self.tables.checkpoints)).all()}
        out = []
        for name in registry.NAMES:
            row = rows.get(name)
            at = None if row is None else int(row.position)
            current = row is not None and int(row.version) == registry.VERSIONS[name]
            out.append({"name": name, "version": registry.VERSIONS[name],
                        "checkpoint": at, "head": head,
                        "lag": None if at is None or not current else head - at,
                        "state": "missing" if row is None else
                        ("ok" if current else "outdated"),
                        "updated_at": None if row is None else row.updated_at})
        return out

    def _writable(self) -> None:
        """A SQLite file opened read-only (events/engine.py `read_only`) is refused before any
        transaction: SQLite would let BEGIN IMMEDIATE through and refuse the first row
        written. A query then folds the lag in memory (projections/views.py)."""
        if read_only(self.engine):
            raise database_read_only()

    def _head(self, up_to: int | None) -> int:
        last = self.store.last_position()
        return last if up_to is None else min(up_to, last)

    # ------------------------------------------------------------------ transaction
    def _transaction(self) -> Any:
        return _Transaction(self.engine)

    def _lock(self, conn: Connection, names: Sequence[str]) -> dict[str, int]:
        """Checkpoints of `names`, read under the lock (create or reset them when needed)."""
        if not self._schema_seen:  # the product never drops its tables: seen once is enough
            if inspect(conn).has_table(self.tables.checkpoints.name):
                self._schema_seen = True
            else:  # committed with the catch-up, or not at all
                ensure_schema(conn, names, self.tables)
        rows = self._checkpoints(conn, names)
        if len(rows) < len(names) or any(
                rows[n][0] != registry.VERSIONS[n] for n in names if n in rows):
            ensure_schema(conn, names, self.tables)
            rows = self._checkpoints(conn, names)
        return {name: rows[name][1] for name in names}

    def _checkpoints(self, conn: Connection, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """name -> (version, position) of `names`' checkpoints (PostgreSQL: locked FOR
        UPDATE; SQLite: the transaction holds the write lock)."""
        table = self.tables.checkpoints
        if conn.dialect.name == "sqlite":  # on the driver: a catch-up's fixed cost (issue 17)
            sql = _sqlite_checkpoints(table, conn.dialect, len(names))
            found = _on_driver(conn, sql, lambda cursor: cursor.execute(sql, tuple(names))
                               .fetchall())
        else:
            found = conn.execute(_checkpoints_query(table, tuple(names))).all()
        return {str(r[0]): (int(r[1]), int(r[2])) for r in found}

    def _set_checkpoint(self, conn: Connection, names: Sequence[str], position: int) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        table = self.tables.checkpoints
        if conn.dialect.name == "sqlite":
            sql = _sqlite_move(table, conn.dialect, len(names))
            _on_driver(conn, sql, lambda cursor: cursor.execute(sql, (position, stamp, *names)))
            return
        conn.execute(_move_checkpoints(table), {
            "names": list(names), "new_position": position, "new_updated_at": stamp})

    # ------------------------------------------------------------------ applying
    def _apply(self, conn: Connection, lagging: dict[str, int], head: int, result: CatchUp,
               progress: Progress | None = None, *, kept: KeptStreams | None = None,
               study_ahead: bool = False) -> None:
        """`kept`: the streams to fold onto (a catch-up; a rebuild folds every one afresh).
        `study_ahead`: the study's checkpoint is past `head` (a catch-up of some projections
        moved it; `catch_up(up_to=…)` of the others then folds the study stream to `head` in
        memory rather than read the table's later facts)."""
        study_at = lagging.get(registry.STUDY)
        subject_lag = {n: at for n, at in lagging.items() if n != registry.STUDY}
        scan_from = min([at for at in lagging.values() if at > 0], default=None)
        scanned, touched = self._scan(scan_from, head)
        study_new = ([] if study_at is None else
                     self.store.read_stream(STUDY_STREAM, up_to_position=head) if study_at == 0
                     else [e for e in scanned if e.position > study_at])
        if study_ahead:  # the table is past `head`: the subjects' folds take the study at it
            study = fold_study(self.store.read_stream(STUDY_STREAM, up_to_position=head))
        else:
            study = self._study(conn, study_new, study_at, kept)
        if study_at is not None:
            result.applied[registry.STUDY] = len(study_new)
        refold_all = {n for n, at in subject_lag.items() if at == 0 or any(
            e.type in REFOLD_ALL and e.position > at for e in scanned)}
        every = self._all_subjects() if refold_all else []
        wanted: dict[str, list[str]] = {}  # subject -> projections to refold it for
        for name, at in subject_lag.items():
            chosen = every if name in refold_all else [
                s for s, last in touched.items() if last > at]
            for subject in chosen:
                wanted.setdefault(subject, []).append(name)
            result.applied[name] = head - at
        subjects = sorted(wanted)
        workers = parallel.workers()
        if len(subjects) >= parallel.MIN_SUBJECTS and workers > 1:
            size = parallel.chunk_size(len(subjects), workers)
            chunks = [subjects[i:i + size] for i in range(0, len(subjects), size)]
            folded = parallel.fold_in_parallel(self.engine, study, chunks, wanted, head)
        else:
            chunks = [subjects[i:i + CHUNK] for i in range(0, len(subjects), CHUNK)]
            folded = ((c, parallel.fold_chunk(self.store, study, c, wanted, head, kept))
                      for c in chunks)
        done = 0
        for chunk, rows in folded:
            self._write_rows(conn, chunk, wanted, rows)
            done += len(chunk)
            if progress is not None:
                progress(done, len(subjects))
        result.subjects = len(subjects)
        self._set_checkpoint(conn, list(lagging), head)
        log.info("projections caught up", head=head, projections=sorted(lagging),
                 subjects=len(subjects))

    def _scan(self, after: int | None, head: int
              ) -> tuple[list[RecordedEvent], dict[str, int]]:
        """Study events after `after` and, per subject, the last position of its new events."""
        study_events: list[RecordedEvent] = []
        touched: dict[str, int] = {}
        if after is None:
            return study_events, touched
        for event in self.store.read_all(after=after, up_to=head):
            if event.stream_id == STUDY_STREAM:
                study_events.append(event)
            elif is_subject_stream(event.stream_id):
                touched[event.stream_id] = event.position
        return study_events, touched

    def _study(self, conn: Connection, new_events: Sequence[RecordedEvent],
               study_at: int | None, kept: KeptStreams | None) -> Study:
        """The study's facts moved to the head (in the same transaction). `study_at`: the
        study read model's checkpoint, read under the lock; with no study event since, the
        facts kept (`kept`, a catch-up's) for the study stream as it ends at the checkpoint
        are those in the table."""
        ends: StudyHead = None
        keeping = not new_events and kept is not None and study_at is not None
        if keeping:
            assert kept is not None and study_at is not None
            ends = self.store.stream_head_at(STUDY_STREAM, study_at)
            found = kept.study_for(ends)
            if found is not None:
                return found
        facts = self.tables.study_facts
        query = select(facts.c.kind, facts.c.key, facts.c.value)
        if not new_events:  # subject folds need no users or places: O(1) in the study's size
            query = query.where(facts.c.kind.in_(FOLD_FACTS))
        rows = conn.execute(query).all()
        study = study_from_facts((r.kind, r.key, r.value) for r in rows)
        if not new_events:
            if keeping:
                assert kept is not None
                kept.keep_study(ends, study)
            return study
        old = {(r.kind, r.key): r.value for r in rows}  # the rows as stored, not re-derived
        for event in new_events:
            apply_study(study, event)
        gone, write = changed_facts(old, facts_of(study))
        stale = [*gone, *(key for key in write if key in old)]  # a new key has no row yet
        if stale:
            conn.execute(_delete_fact(facts), [{"old_kind": k, "old_key": key}
                                               for k, key in stale])
        if write:
            conn.execute(insert(facts), [{"kind": k, "key": key, "value": v}
                                         for (k, key), v in write.items()])
        return study

    def _all_subjects(self) -> list[str]:
        return sorted(s for s in self.store.stream_heads() if is_subject_stream(s))

    def _write_rows(self, conn: Connection, subjects: Sequence[str],
                    wanted: dict[str, list[str]], rows: dict[str, list[Any]]) -> None:
        for name in sorted({n for s in subjects for n in wanted[s]}):
            mine = [s for s in subjects if name in wanted[s]]
            for live, table in zip(registry.TABLES[name], self.tables.projections[name],
                                   strict=True):  # rows are folded by the live table's name
                replace_rows(conn, table, mine, rows.get(live.name, []))


def _with_study(names: Sequence[str]) -> list[str]:
    """Subject folds need the study's facts at the head: the study projection always moves."""
    unknown = [n for n in names if n not in registry.VERSIONS]
    if unknown:
        raise InvalidInput(f"Projection {unknown[0]!r} does not exist; the projections are "
                           f"{', '.join(registry.NAMES)}.", field="name")
    return [registry.STUDY, *(n for n in names if n != registry.STUDY)]


def subject_rows_of(name: str, ctx: SubjectContext | None) -> Rows:
    if ctx is None:
        return {}
    return registry.subject_projection(name).fold(ctx)


def replace_rows(conn: Connection, table: Table, subjects: Sequence[str],
                 rows: Sequence[Any]) -> None:
    """Replace `subjects`' rows of `table` with `rows` (as `encode_rows` made them)."""
    if not subjects:
        return
    if conn.dialect.name == "sqlite":
        _replace_sqlite(conn, table, subjects, rows)
        return
    remove, add = _statements(table)
    conn.execute(remove, {"subjects": list(subjects)})
    if rows:
        conn.execute(add, list(rows))


_TABLES: Final = {table.name: table for tables in registry.TABLES.values() for table in tables}


@functools.cache
def _checkpoints_query(checkpoints: Table, names: tuple[str, ...]) -> Select[Any]:
    """The checkpoint rows of `names`, locked FOR UPDATE (PostgreSQL), built once."""
    return select(checkpoints.c.name, checkpoints.c.version, checkpoints.c.position).where(
        checkpoints.c.name.in_(names)).with_for_update()


@functools.cache
def _sqlite_checkpoints(checkpoints: Table, dialect: Any, count: int) -> str:
    """`_checkpoints_query` as plain SQL for SQLite (no FOR UPDATE there)."""
    return (f"SELECT name, version, position FROM {_quoted(checkpoints, dialect)} "
            f"WHERE name IN ({', '.join('?' * count)})")


@functools.cache
def _sqlite_move(checkpoints: Table, dialect: Any, count: int) -> str:
    """`_move_checkpoints` as plain SQL for SQLite: (position, updated_at, *names)."""
    return (f"UPDATE {_quoted(checkpoints, dialect)} SET position = ?, updated_at = ? "
            f"WHERE name IN ({', '.join('?' * count)})")


def _quoted(table: Table, dialect: Any) -> str:
    return str(dialect.identifier_preparer.quote(table.name))


@functools.cache
def _move_checkpoints(checkpoints: Table) -> Update:
    return update(checkpoints).where(
        checkpoints.c.name.in_(bindparam("names", expanding=True))).values(
        position=bindparam("new_position"), updated_at=bindparam("new_updated_at"))


@functools.cache
def _delete_fact(facts: Table) -> Delete:
    return delete(facts).where(facts.c.kind == bindparam("old_kind"),
                               facts.c.key == bindparam("old_key"))


@functools.cache
def _statements(table: Table) -> tuple[Delete, Insert]:
    """A table's delete-by-subjects and insert, built once (a catch-up of one event runs
    eighteen of them; building them costs more than running them)."""
    return (delete(table).where(table.c.subject.in_(bindparam("subjects", expanding=True))),
            insert(table))


def encode_rows(dialect: Any, rows: dict[str, list[dict[str, Any]]]
                ) -> dict[str, list[Any]]:
    """On SQLite, each row as the tuple its INSERT takes, every value converted by its column
    type's own bind processor (so the stored values are exactly those of the Core statements).
    Done where the rows are folded: in a parallel rebuild that is a worker process, and a
    tuple crosses the process boundary cheaper than a dict. Other databases: unchanged."""
    if dialect.name != "sqlite":
        return dict(rows)
    encoded: dict[str, list[Any]] = {}
    for name, table_rows in rows.items():
        _, columns, processors = _sqlite_insert(_TABLES[name], dialect)
        converted = [(i, convert) for i, convert in enumerate(processors) if convert is not None]
        if not converted:
            encoded[name] = [tuple(map(row.get, columns)) for row in table_rows]
            continue
        out = []
        for row in table_rows:
            values = list(map(row.get, columns))
            for i, convert in converted:
                values[i] = convert(values[i])
            out.append(tuple(values))
        encoded[name] = out
    return encoded


def _replace_sqlite(conn: Connection, table: Table, subjects: Sequence[str],
                    rows: Sequence[tuple[Any, ...]]) -> None:
    """The same statements as plain SQL on SQLite, run by the driver's cursor in the
    connection's transaction (SQLAlchemy's own `exec_driver_sql` costs more than the
    statement when one subject's rows are replaced); a driver error is wrapped as SQLAlchemy
    wraps it, so it is translated like any other, with the rows `encode_rows` made."""
    insert_sql, _, _ = _sqlite_insert(table, conn.dialect)
    delete_sql = _sqlite_delete(table, conn.dialect, len(subjects))
    _on_driver(conn, delete_sql, lambda cursor: cursor.execute(delete_sql, tuple(subjects)))
    if rows:
        _on_driver(conn, insert_sql, lambda cursor: cursor.executemany(insert_sql, rows))


def _on_driver(conn: Connection, statement: str, run: Callable[[Any], _T]) -> _T:
    """`run(cursor)` on the driver's cursor, in the connection's transaction; a driver error
    is wrapped as SQLAlchemy wraps it (naming `statement`), so it is translated like any
    other."""
    error_type: type[Exception] = conn.dialect.loaded_dbapi.Error
    try:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            return run(cursor)
        finally:
            cursor.close()
    except error_type as error:
        wrapped = DBAPIError.instance(statement, None, error, error_type, dialect=conn.dialect)
        raise wrapped from error


@functools.cache
def _sqlite_delete(table: Table, dialect: Any, count: int) -> str:
    return f"DELETE FROM {_quoted(table, dialect)} WHERE subject IN ({', '.join('?' * count)})"


@functools.cache
def _sqlite_insert(table: Table, dialect: Any) -> tuple[
        str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]:
    """The INSERT (identifiers quoted by the dialect), its columns and their converters."""
    quote = dialect.identifier_preparer.quote
    columns = tuple(column.name for column in table.columns)
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
           f"VALUES ({', '.join('?' * len(columns))})")
    return sql, columns, tuple(column.type.bind_processor(dialect) for column in table.columns)


class _Transaction:
    """A writing connection and its transaction (SQLite: BEGIN IMMEDIATE).

    On SQLite the runner's commits are not synced to disk one by one (`synchronous = NORMAL`
    for this transaction, back to `FULL` for the pooled connection afterwards): read models
    are derived data, and in WAL mode a power cut can only lose whole transactions, so rows
    and checkpoint are lost together and the next catch-up redoes them. The log's own appends
    keep `FULL`, and each of them syncs every frame written before it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Connection:
        self.conn = self.engine.connect().execution_options(**WRITE)
        self.sqlite = is_sqlite(self.engine)
        try:
            if self.sqlite:  # on the driver's connection: outside any transaction
                self._pragma("NORMAL")
            self.tx = self.conn.begin()
        except BaseException:
            self._close()
            raise
        return self.conn

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        try:
            if kind is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        finally:
            self._close()

    def _pragma(self, level: str) -> None:
        driver: Any = self.conn.connection.driver_connection
        driver.execute(f"PRAGMA synchronous = {level}")

    def _close(self) -> None:
        try:
            if self.sqlite and not self.conn.invalidated:
                self._pragma("FULL")
        finally:
            self.conn.close()
