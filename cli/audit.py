"""`trialflow audit …`: the audit trail of a stream, chain verification and seals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.context import Env
from cli.render import emit, table


@click.group("audit", help="Audit trail, integrity verification and seals.")
def audit() -> None:
    pass


@audit.command("log", help="Print a stream's events in order: who, when, what and why.")
@click.argument("stream")
@click.pass_obj
def log(env: Env, stream: str) -> None:
    from events.streams import check_stream_id

    events = env.app.store.read_stream(check_stream_id(stream))
    rows = [
        {
            "position": e.position, "version": e.version, "type": e.type,
            "recorded_at": e.recorded_at, "occurred_at": e.occurred_at,
            "actor": e.actor, "role": e.role, "site": e.site, "reason": e.reason,
            "command_id": e.command_id, "payload": e.payload, "hash": e.hash,
        }
        for e in events
    ]
    emit(env, {"stream": stream, "events": rows}, lambda: _log_text(stream, rows))


def _log_text(stream: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"Stream {stream} has no events."
    return table(
        ["pos", "ver", "recorded_at", "occurred_at", "who", "type", "reason"],
        [[r["position"], r["version"], r["recorded_at"], r["occurred_at"],
          f"{r['actor']} ({r['role']})", r["type"], r["reason"]] for r in rows],
    )


@audit.command("verify", help="Recompute every stream's hash chain; exit 4 at the first break.")
@click.option("--seal", "seal_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check against a seal printed earlier by `audit seal`.")
@click.pass_obj
def verify(env: Env, seal_file: Path | None) -> None:
    from events.chain import parse_seal, verify_against_seal
    from events.chain import verify as verify_chains

    if seal_file is not None:
        try:
            text = seal_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise click.BadParameter(
                f"cannot read {seal_file}: {error}", param_hint="--seal"
            ) from error
        result = verify_against_seal(env.app.store, parse_seal(text, str(seal_file)))
    else:
        result = verify_chains(env.app.store)
    data = {"ok": True, "events": result.events, "streams": result.streams,
            "position": result.position, "seal_checked": seal_file is not None}
    emit(env, data, lambda: (
        f"OK: {result.events} events in {result.streams} streams verify up to position "
        f"{result.position}" + (", and match the seal." if seal_file else ".")
    ))


@audit.command("seal", help="Verify, then print a seal of every stream's head as JSON.")
@click.pass_obj
def seal(env: Env) -> None:
    from events.chain import make_seal

    data = make_seal(env.app.store, now=env.app.clock())
    env.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
