"""`trialflow init [--admin NAME]`: create or upgrade the database (idempotent) and, the first
time, create the study: its first admin, the scheduler service account with a generated secret
(written to a file only its owner can read), and the protocol in force."""

from __future__ import annotations

from pathlib import Path

import click

from cli.context import Env
from cli.options import command_id_option
from cli.render import emit


@click.command("init", help="Create or upgrade the database schema; safe to run again. With "
               "--admin NAME the first time, also create the study: its first admin (asks the "
               "admin's password) and the scheduler service account, whose generated secret "
               "goes to --scheduler-secret-file.")
@click.option("--admin", default=None, help="Name of the first admin (once per study).")
@click.option("--protocol-version", type=int, default=2, show_default=True,
              help="Builtin protocol version to start the study with.")
@click.option("--scheduler-secret-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where the scheduler's secret is written (mode 0600; never "
              "overwritten). Default: NAME.scheduler-secret beside a SQLite file NAME.db, "
              "else trialflow-scheduler.secret in the working directory.")
@click.option("--roles", is_flag=True, help="PostgreSQL: also create the group roles "
              "trialflow_app and trialflow_person and grant them what they may do "
              "(docs/audit.md); run as the owner, which needs CREATEROLE.")
@click.option("--print-roles", is_flag=True, help="Print that SQL for a DBA and touch nothing.")
@command_id_option
@click.pass_obj
def init(env: Env, admin: str | None, protocol_version: int,
         scheduler_secret_file: Path | None, roles: bool, print_roles: bool,
         command_id: str | None) -> None:
    from events.schema import latest_version, upgrade

    if print_roles:
        from events.roles import roles_script

        env.stdout.write(roles_script())
        return
    postgres = env.db_url.startswith(("postgresql", "postgres:"))
    if roles and not postgres:
        raise click.UsageError("--roles is for PostgreSQL: on SQLite the database file's "
                               "permissions decide who may read and write (docs/audit.md).")
    env.creates_database = True  # the one command (with `demo`) that makes a SQLite file
    applied = upgrade(env.app.engine)
    data: dict[str, object] = {"database": safe_url(env.db_url), "applied": applied,
                               "schema_version": latest_version()}
    if admin is not None:
        data.update(_initialise(env, admin, protocol_version, scheduler_secret_file,
                                command_id))
    from projections.runner import Runner

    Runner(env.app.engine, env.app.store).catch_up()  # read models' tables and checkpoints
    if roles:
        from events.roles import APP_ROLE, PERSON_ROLE, create_roles

        create_roles(env.app.engine)
        data["roles"] = [APP_ROLE, PERSON_ROLE]
    emit(env, data, lambda: (
        f"Database {data['database']} is at schema version {data['schema_version']}"
        + (f"; applied: {', '.join(applied)}." if applied else "; nothing to do.")
        + ("\nRoles trialflow_app and trialflow_person are granted their rights "
           "(docs/audit.md)." if roles else "")
        + (f"\nAdmin {admin} created; protocol version {protocol_version} in force; the "
           f"scheduler's secret is in {data['scheduler_secret_file']}."
           if admin and data.get("scheduler_secret_file") else "")
    ))


def _initialise(env: Env, admin: str, protocol_version: int, secret_file: Path | None,
                command_id: str | None) -> dict[str, object]:
    from cli.auth import read_secret, write_secret_file
    from cli.writes import send
    from workflow.commands.messages import InitialiseStudy
    from workflow.identity import Password, Secret, new_service_secret

    password = Secret(read_secret(env, f"Password for the first admin {admin}"))
    scheduler = Secret(new_service_secret())
    message = InitialiseStudy(admin, password, scheduler, protocol_version)
    target = secret_file or default_secret_file(env.db_url)
    write_secret_file(target, scheduler.value)
    try:
        outcome = send(env, message, command_id, credential=Password(admin, password))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if outcome.result.duplicate:  # a repeat: the study's scheduler keeps its first secret
        target.unlink(missing_ok=True)
        return {**outcome.summary, "scheduler_secret_file": None}
    return {**outcome.summary, "scheduler_secret_file": str(target)}


def default_secret_file(url: str) -> Path:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        file = Path(str(parsed.database))
        return file.with_name(f"{file.stem}.scheduler-secret")
    return Path("trialflow-scheduler.secret")


def safe_url(url: str) -> str:
    """A database URL as it may be shown: never with its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
