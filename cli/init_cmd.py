"""`trialflow init [--admin NAME]`: create or upgrade the database (idempotent) and, the first
time, create the first admin, the scheduler service user and the default protocol."""

from __future__ import annotations

import click

from cli.context import Env
from cli.options import command_id_option
from cli.render import emit


@click.command("init", help="Create or upgrade the database schema; safe to run again. With "
               "--admin NAME the first time, also create the first admin.")
@click.option("--admin", default=None, help="Name of the first admin (once per study).")
@click.option("--protocol-version", type=int, default=2, show_default=True,
              help="Builtin protocol version to start the study with.")
@command_id_option
@click.pass_obj
def init(env: Env, admin: str | None, protocol_version: int, command_id: str | None) -> None:
    from events.schema import latest_version, upgrade

    applied = upgrade(env.app.engine)
    data: dict[str, object] = {"database": _safe_url(env.db_url), "applied": applied,
                               "schema_version": latest_version()}
    if admin is not None:
        from cli.auth import read_secret
        from workflow import identity
        from workflow.commands import Workflow
        from workflow.signing import Signing

        password = read_secret(env, f"Password for the first admin {admin}")
        identity.check_new_password(admin, password)
        flow = Workflow(env.app)
        outcome = flow.initialise(admin, protocol_version=protocol_version,
                                  command_id=command_id)
        if not outcome.result.duplicate:
            Signing(flow).change_password(admin, admin, password, None, env.app.clock())
        data.update(outcome.summary)
    from projections.runner import Runner

    Runner(env.app.engine, env.app.store).catch_up()  # read models' tables and checkpoints
    emit(env, data, lambda: (
        f"Database {data['database']} is at schema version {data['schema_version']}"
        + (f"; applied: {', '.join(applied)}." if applied else "; nothing to do.")
        + (f"\nAdmin {admin} created; protocol version {protocol_version} in force." if admin
           else "")
    ))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
