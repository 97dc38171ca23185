"""Create the read models' tables and checkpoints; reset a projection whose code version
changed (its tables are dropped, recreated and refilled from position 0 by the runner)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, insert, select

from projections import registry


def ensure_schema(conn: Connection, names: Sequence[str] = registry.NAMES,
                  tables: registry.TableSet = registry.LIVE) -> None:
    """Idempotent: missing tables are created, outdated projections reset to position 0."""
    checkpoints = tables.checkpoints
    checkpoints.create(conn, checkfirst=True)
    known = {r.name: int(r.version) for r in conn.execute(select(checkpoints)).all()}
    for name in names:
        version = registry.VERSIONS[name]
        own = tables.projections[name]
        if known.get(name) not in (None, version):
            for table in own:
                table.drop(conn, checkfirst=True)
            conn.execute(delete(checkpoints).where(checkpoints.c.name == name))
            known.pop(name)
        for table in own:
            table.create(conn, checkfirst=True)
        if name not in known:
            conn.execute(insert(checkpoints).values(name=name, version=version, position=0))
