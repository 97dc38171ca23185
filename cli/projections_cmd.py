"""`trialflow projections status|rebuild`: the read models' checkpoints, lag and rebuild."""

from __future__ import annotations

from typing import Any

import click

from cli.context import Env
from cli.render import emit, table


@click.group("projections", help="Read models: checkpoint and lag of each, rebuild from the log.")
def projections() -> None:
    pass


@projections.command("status", help="Each projection's checkpoint, the log's head and the lag.")
@click.pass_obj
def status(env: Env) -> None:
    from projections.runner import Runner

    data = Runner(env.app.engine, env.app.store).status()
    emit(env, data, lambda: table(
        ["projection", "version", "checkpoint", "head", "lag", "state"],
        [[p["name"], p["version"], p["checkpoint"], p["head"], p["lag"], p["state"]]
         for p in data]))


@projections.command("rebuild", help="Recreate NAME (default: every projection) from position 0 "
                     "in one transaction; readers see the old rows until it commits.")
@click.argument("name", required=False)
@click.pass_obj
def rebuild(env: Env, name: str | None) -> None:
    from projections import registry
    from projections.runner import Runner

    names = list(registry.NAMES) if name is None else [name]
    runner = Runner(env.app.engine, env.app.store)
    from cli.progress import progress_bar

    with progress_bar(env, "rebuilding (subjects)") as advance:
        result = runner.rebuild(names, progress=advance)
    data: dict[str, Any] = {"rebuilt": names if name is None else [name], "head": result.head,
            "subjects": result.subjects, "events": result.applied}
    emit(env, data, f"Rebuilt {', '.join(data['rebuilt'])} up to position {result.head} "
         f"({result.subjects} subjects).")

