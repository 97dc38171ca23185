"""`trialflow login|logout|sign|signatures`: sessions and electronic signatures."""

from __future__ import annotations

import click

from cli.context import Env
from cli.options import POSITION, command_id_option
from cli.render import emit, table
from cli.writes import show


@click.command("login", help="Check your password and print a session token; put it in "
               "TRIALFLOW_SESSION so writes need no password until it expires.")
@click.option("--hours", type=click.IntRange(1, 24), default=8, show_default=True,
              help="Hours until the session expires.")
@click.pass_obj
def login(env: Env, hours: int) -> None:
    from cli.auth import read_secret
    from workflow import identity
    from workflow.errors import RuleViolation

    if not env.user:
        raise RuleViolation("Logging in needs --user NAME.", rule="unknown_user", field="user")
    engine = env.app.engine
    from workflow.commands import Workflow

    Workflow(env.app).study().user(env.user)  # unknown or deactivated users are refused
    identity.verify_password(engine, env.user, read_secret(env, f"Password for {env.user}"))
    token, expires = identity.create_session(engine, env.user, env.app.clock(), hours)
    emit(env, {"user": env.user, "token": token, "expires_at": expires.isoformat()},
         f"export TRIALFLOW_SESSION={token}\n# {env.user}'s session expires at "
         f"{expires.isoformat()}")


@click.command("logout", help="End every session of --user.")
@click.pass_obj
def logout(env: Env) -> None:
    from workflow import identity
    from workflow.errors import RuleViolation

    if not env.user:
        raise RuleViolation("Logging out needs --user NAME.", rule="unknown_user",
                            field="user")
    ended = identity.end_sessions(env.app.engine, env.user)
    emit(env, {"user": env.user, "ended": ended}, f"Ended {ended} session(s) of {env.user}.")


@click.command("sign", help="Sign a record electronically (the password is asked again, a "
               "session is not enough): bound to the exact event hash it signs.")
@click.argument("subject")
@click.argument("position", type=POSITION)
@click.option("--meaning", required=True, type=click.Choice(["reviewed", "approved",
                                                               "authored"]))
@command_id_option
@click.pass_obj
def sign(env: Env, subject: str, position: int, meaning: str, command_id: str | None) -> None:
    from cli.auth import database_login, read_secret
    from workflow import identity
    from workflow.errors import RuleViolation
    from workflow.signing import Signing

    if not env.user:
        raise RuleViolation("Signing needs --user NAME.", rule="unknown_user", field="user")
    if database_login(env) not in (None, env.user):
        raise RuleViolation(f"The database login may not sign as {env.user}.",
                            rule="identity_mismatch", field="user")
    # Part 11 §11.200(a)(1): both components (user and password) at every signing
    identity.verify_password(env.app.engine, env.user,
                             read_secret(env, f"Password for {env.user} (signing)"))
    from workflow.commands import Workflow

    flow = Workflow(env.app)  # authenticated just above, by the password itself
    show(env, f"Position {position} of {subject} signed ({meaning}) by {env.user}",
         Signing(flow).sign(env.user, subject, position, meaning, command_id, env.app.clock))


@click.command("signatures", help="Electronic signatures of a subject, each checked against "
               "the record it signs.")
@click.argument("subject")
@click.pass_obj
def signatures(env: Env, subject: str) -> None:
    from events.streams import check_subject_id
    from workflow.signing import signatures as listed

    rows = listed(env.app.store.read_stream(check_subject_id(subject)))
    emit(env, rows, lambda: table(
        ["position", "signs", "meaning", "by", "at", "state"],
        [[r["position"], f"{r['target_type']} @{r['target_position']}", r["meaning"],
          r["printed_name"], r["signed_at"], r["state"]] for r in rows])
         if rows else f"No signatures for {subject}.")
