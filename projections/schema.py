"""Create the read models' tables and checkpoints; reset a projection whose code version
changed (its tables are dropped, recreated and refilled from position 0 by the runner)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, insert, select

from projections import registry
from projections import tables as t


def ensure_schema(conn: Connection, names: Sequence[str] = registry.NAMES) -> None:
    """Idempotent: missing tables are created, outdated projections reset to position 0."""
    t.checkpoints.create(conn, checkfirst=True)
    known = {r.name: int(r.version) for r in conn.execute(select(t.checkpoints)).all()}
    for name in names:
        version = registry.VERSIONS[name]
        tables = registry.TABLES[name]
        if known.get(name) not in (None, version):
            for table in tables:
                table.drop(conn, checkfirst=True)
            conn.execute(delete(t.checkpoints).where(t.checkpoints.c.name == name))
            known.pop(name)
        for table in tables:
            table.create(conn, checkfirst=True)
        if name not in known:
            conn.execute(insert(t.checkpoints).values(name=name, version=version, position=0))
