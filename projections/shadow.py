"""Shadow read models: rebuilt under new code beside the live ones, compared, promoted.

When the code of a rule changes (a fixed endpoint, a corrected window rule) while a
projection's row shape stays (its `version` in projections/registry.py unchanged), the live
tables still hold what the old code folded. `projections rebuild --shadow` folds the whole log
under the code now installed into tables of the same shape named `shadow_…` (with their own
checkpoints), through the same runner; the live tables keep serving reads.
`projections diff` brings both up to the log's head and lists, per subject and read model,
the rows that would appear, disappear or change; `projections promote` replaces the live
tables by the shadow ones in one transaction, which readers see whole or not at all.

A projection whose `version` changed is reset and rebuilt by the first catch-up as before:
the new code cannot read the old rows' shape, so there is nothing to keep serving.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, MetaData, Table, inspect, select
from sqlalchemy.sql.elements import quoted_name

from events.engine import is_sqlite
from events.store import EventStore
from events.translate import translated
from projections import registry
from projections import tables as t
from projections.runner import CatchUp, Progress, Runner
from workflow.errors import RuleViolation

PREFIX: Final = "shadow_"


def _shadow_set() -> registry.TableSet:
    metadata = MetaData()

    def copy(table: Table) -> Table:
        shadow = table.to_metadata(metadata, name=PREFIX + table.name)
        for index in shadow.indexes:  # index names are per database (SQLite) or schema
            index.name = quoted_name(PREFIX + str(index.name), None)
        return shadow

    return registry.TableSet(copy(t.checkpoints), {
        name: tuple(copy(table) for table in tables)
        for name, tables in registry.TABLES.items()})


SHADOW: Final = _shadow_set()


def build(engine: Engine, store: EventStore, progress: Progress | None = None) -> CatchUp:
    """Every read model folded from position 0 into the shadow tables (one transaction)."""
    return Runner(engine, store, SHADOW).rebuild(progress=progress)


def _require(engine: Engine) -> None:
    with translated(), engine.connect() as conn:
        present = inspect(conn).has_table(SHADOW.checkpoints.name)
    if not present:
        raise RuleViolation("There is no shadow build: run `trialflow projections rebuild "
                            "--shadow` first.", rule="no_shadow_build", field="shadow")


def diff(engine: Engine, store: EventStore) -> dict[str, Any]:
    """Both sets caught up to the log's head, then compared: per read model and subject, the
    rows only the live tables hold (`removed` by promoting), only the shadow ones hold
    (`added`), and the columns that differ in rows of the same key (`changed`)."""
    _require(engine)
    live = Runner(engine, store).catch_up()
    shadow = Runner(engine, store, SHADOW).catch_up()
    head = min(live.head, shadow.head)
    out = []
    with translated(), engine.connect() as conn:
        for name in registry.NAMES:
            for old, new in zip(registry.LIVE.projections[name], SHADOW.projections[name],
                                strict=True):
                out += _table_diff(name, old, _rows(conn, old), _rows(conn, new))
    subjects = sorted({d["subject"] for d in out if d["subject"] is not None})
    return {"head": head, "differences": len(out), "subjects": subjects, "by_table": out}


def _rows(conn: Connection, table: Table) -> list[dict[str, Any]]:
    result = conn.execute(select(table))
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


def _key_columns(table: Table) -> list[str]:
    """What identifies a row: its primary key; a table without one, the whole row."""
    return [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]


def _table_diff(name: str, table: Table, before: Sequence[dict[str, Any]],
                after: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = _key_columns(table)
    subject_of = "subject" if "subject" in table.c else None
    groups: dict[Any, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for side, rows in ((0, before), (1, after)):
        for row in rows:
            groups.setdefault(row[subject_of] if subject_of else None, ([], []))[side].append(row)
    out = []
    for subject in sorted(groups, key=lambda s: (s is None, s or "")):
        old, new = groups[subject]
        found = _rows_diff(keys, old, new)
        if any(found.values()):
            out.append({"projection": name, "table": table.name, "subject": subject, **found})
    return out


def _rows_diff(keys: list[str], before: Iterable[dict[str, Any]],
               after: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    def key(row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(repr(row[k]) for k in keys)

    old = Counter(key(r) for r in before)
    new = Counter(key(r) for r in after)
    old_rows = {key(r): r for r in before}
    new_rows = {key(r): r for r in after}
    removed = [old_rows[k] for k in sorted((old - new).elements())]
    added = [new_rows[k] for k in sorted((new - old).elements())]
    changed = []
    for k in sorted(set(old_rows) & set(new_rows)):
        a, b = old_rows[k], new_rows[k]
        for column in a:
            if a[column] != b[column]:
                changed.append({"key": {c: a[c] for c in keys}, "column": column,
                                "before": a[column], "after": b[column]})
    return {"added": added, "removed": removed, "changed": changed}


def promote(engine: Engine, store: EventStore) -> CatchUp:
    """The shadow tables, caught up to the log's head, become the live ones in one
    transaction (the live tables dropped, the shadow ones renamed, their indexes renamed);
    readers see the old tables until it commits and the new ones after."""
    _require(engine)
    runner = Runner(engine, store, SHADOW)
    result = runner.catch_up()
    with translated(), runner._transaction() as conn:
        marks = {r.name: (int(r.version), int(r.position))
                 for r in conn.execute(select(SHADOW.checkpoints)).all()}
        head = store.last_position()
        stale = [n for n in registry.NAMES if marks.get(n) != (registry.VERSIONS[n], head)]
        if stale:  # an append between the catch-up and the lock: caught up on the next run
            raise RuleViolation(f"The shadow build of {', '.join(stale)} is not at the log's "
                                f"head ({head}) at its current version: run `trialflow "
                                "projections promote` again.", rule="shadow_behind",
                                field="shadow")
        if not is_sqlite(engine):
            conn.exec_driver_sql(f"LOCK TABLE {t.checkpoints.name} IN ACCESS EXCLUSIVE MODE")
        for live, shadow in zip(registry.LIVE.all(), SHADOW.all(), strict=True):
            _swap(conn, live, shadow)
    return result


def _swap(conn: Connection, live: Table, shadow: Table) -> None:
    quote = conn.dialect.identifier_preparer.quote
    for index in shadow.indexes:
        index.drop(conn, checkfirst=False)
    live.drop(conn, checkfirst=True)
    conn.exec_driver_sql(f"ALTER TABLE {quote(shadow.name)} RENAME TO {quote(live.name)}")
    for index in live.indexes:
        index.create(conn)
