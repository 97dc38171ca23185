"""`trialflow init`: create or upgrade the database (idempotent)."""

from __future__ import annotations

import click

from cli.context import Env
from cli.render import emit


@click.command("init", help="Create or upgrade the database schema; safe to run again.")
@click.pass_obj
def init(env: Env) -> None:
    from events.schema import latest_version, upgrade

    applied = upgrade(env.app.engine)
    data = {"database": _safe_url(env.db_url), "applied": applied,
            "schema_version": latest_version()}
    emit(env, data, lambda: (
        f"Database {data['database']} is at schema version {data['schema_version']}"
        + (f"; applied: {', '.join(applied)}." if applied else "; nothing to do.")
    ))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
