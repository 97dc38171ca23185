"""`trialflow login|logout|sign|signatures`: sessions and electronic signatures."""

from __future__ import annotations

import click

from cli.context import Env
from cli.options import POSITION, command_id_option
from cli.render import emit, table
from cli.writes import send, show


@click.command("login", help="Check your password and print a session token; put it in "
               "TRIALFLOW_SESSION so writes need no password until it expires (a signature "
               "or a password change still asks for it).")
@click.option("--hours", type=click.IntRange(1, 24), default=8, show_default=True,
              help="Hours until the session expires.")
@click.pass_obj
def login(env: Env, hours: int) -> None:
    from cli.auth import credential
    from workflow.errors import RuleViolation
    from workflow.identity import Password

    proof = credential(env, password=True)
    if not isinstance(proof, Password):
        raise RuleViolation("Logging in needs the password.", rule="authentication_required",
                            field="password")
    token, expires = env.executor.login(proof, hours)
    emit(env, {"user": proof.name, "token": token, "expires_at": expires.isoformat()},
         f"export TRIALFLOW_SESSION={token}\n# {proof.name}'s session expires at "
         f"{expires.isoformat()}")


@click.command("logout", help="End every session of --user (proven by the session or the "
               "password).")
@click.pass_obj
def logout(env: Env) -> None:
    from cli.auth import credential

    proof = credential(env)
    ended = env.executor.logout(proof)
    emit(env, {"user": proof.name, "ended": ended}, f"Ended {ended} session(s) of {proof.name}.")


@click.command("sign", help="Sign a record electronically (the password is asked again, a "
               "session is not enough): bound to the exact event hash it signs.")
@click.argument("subject")
@click.argument("position", type=POSITION)
@click.option("--meaning", required=True, type=click.Choice(["reviewed", "approved",
                                                               "authored"]))
@command_id_option
@click.pass_obj
def sign(env: Env, subject: str, position: int, meaning: str, command_id: str | None) -> None:
    from cli.auth import credential
    from workflow.commands.messages import Sign

    message = Sign(subject, position, meaning)
    # Part 11 §11.200(a)(1): both components (user and password) at every signing
    proof = credential(env, password=True, prompt=f"Password for {env.user} (signing)")
    show(env, f"Position {position} of {subject} signed ({meaning}) by {proof.name}",
         send(env, message, command_id, credential=proof))


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
