"""`trialflow projections status|rebuild|diff|promote`: the read models' checkpoints, lag and
rebuild; shadow read models built under new code, compared and promoted (projections/shadow.py)."""

from __future__ import annotations

from typing import Any

import click

from cli.context import Env
from cli.render import emit, table


@click.group("projections", help="Read models: checkpoint and lag of each, rebuild from the log; "
             "shadow rebuild, diff and promote for a code change.")
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
                     "in one transaction; readers see the old rows until it commits. "
                     "--shadow: every read model into shadow tables beside the live ones, under "
                     "the code installed now (then `projections diff`, `projections promote`).")
@click.argument("name", required=False)
@click.option("--shadow", is_flag=True, help="Build into the shadow tables; the live ones keep "
              "serving reads.")
@click.pass_obj
def rebuild(env: Env, name: str | None, shadow: bool) -> None:
    from cli.progress import progress_bar
    from projections import registry
    from projections.runner import Runner

    if shadow and name is not None:
        from workflow.errors import InvalidInput

        raise InvalidInput("--shadow rebuilds every read model: give no NAME.", field="name")
    names = list(registry.NAMES) if name is None else [name]
    with progress_bar(env, "rebuilding (subjects)") as advance:
        if shadow:
            from projections.shadow import build

            result = build(env.app.engine, env.app.store, progress=advance)
        else:
            result = Runner(env.app.engine, env.app.store).rebuild(names, progress=advance)
    data: dict[str, Any] = {"rebuilt": names, "shadow": shadow, "head": result.head,
                            "subjects": result.subjects, "events": result.applied}
    where = " into the shadow tables" if shadow else ""
    emit(env, data, f"Rebuilt {', '.join(names)}{where} up to position {result.head} "
         f"({result.subjects} subjects)."
         + (" Compare with `trialflow projections diff`." if shadow else ""))


@projections.command("diff", help="The shadow read models against the live ones, both caught up "
                     "to the log's head: per read model and subject, the rows promoting would "
                     "add or remove and the columns it would change.")
@click.pass_obj
def diff(env: Env) -> None:
    from projections.shadow import diff as compare

    data = compare(env.app.engine, env.app.store)
    emit(env, data, lambda: _diff_text(data))


def _diff_text(data: dict[str, Any]) -> str:
    if not data["by_table"]:
        return (f"The shadow read models equal the live ones at position {data['head']}: "
                "promoting changes nothing.")
    rows = []
    for entry in data["by_table"]:
        who = entry["subject"] or "(study)"
        for row in entry["removed"]:
            rows.append([entry["projection"], who, "removed", _brief(row), ""])
        for row in entry["added"]:
            rows.append([entry["projection"], who, "added", "", _brief(row)])
        for change in entry["changed"]:
            key = ", ".join(f"{v}" for k, v in change["key"].items() if k != "subject")
            rows.append([entry["projection"], who, f"{key} {change['column']}".strip(),
                         _brief(change["before"]), _brief(change["after"])])
    return (f"Shadow against live at position {data['head']}: {data['differences']} "
            f"difference(s) over {len(data['subjects'])} subject(s).\n"
            + table(["projection", "subject", "what", "live", "shadow"], rows))


def _brief(value: Any, width: int = 60) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


@projections.command("promote", help="Make the shadow read models (caught up to the log's head) "
                     "the live ones, in one transaction: readers see the old tables until it "
                     "commits and the new ones after.")
@click.pass_obj
def promote(env: Env) -> None:
    from projections.shadow import promote as swap

    result = swap(env.app.engine, env.app.store)
    emit(env, {"promoted": True, "head": result.head},
         f"The shadow read models are live, at position {result.head}.")
