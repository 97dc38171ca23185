"""`trialflow calc NAME [key=value | flag]...`: run one clinical instrument."""

from __future__ import annotations

from typing import Any

import click

from cli.context import Env
from cli.render import emit, human


@click.command(
    "calc",
    context_settings={"ignore_unknown_options": True},
    help="Run a clinical instrument: trialflow calc NAME [key=value | flag]... "
    "(`calc --list` names every instrument and its inputs).",
)
@click.argument("name", required=False)
@click.argument("inputs", nargs=-1, type=click.UNPROCESSED)
@click.option("--list", "list_all", is_flag=True, help="List instruments and their inputs.")
@click.pass_obj
def calc(env: Env, name: str | None, inputs: tuple[str, ...], list_all: bool) -> None:
    from workflow.instruments import catalog

    if list_all:
        described = catalog.describe_all()
        emit(env, described, lambda: _list_text(described))
        return
    if name is None:
        raise click.UsageError("Name an instrument, or use --list to see them.")
    result = catalog.run(name, inputs)
    emit(env, result, lambda: _result_text(result))


def _result_text(result: dict[str, Any]) -> str:
    lines = [
        f"{key}: {_value(value)}"
        for key, value in result.items()
        if key != "explanation" and not isinstance(value, dict | list)
    ]
    explanation = result.get("explanation")
    if explanation:
        lines.append(f"explanation: {explanation}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    """A result as the instrument rounded it (1570.0 as 1570), never a Python repr."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float | int) and not isinstance(value, bool):
        return str(value)
    return human(value)


def _list_text(described: list[dict[str, Any]]) -> str:
    blocks = []
    for item in described:
        inputs = ", ".join(str(i.get("name")) for i in item.get("inputs", []))
        blocks.append(f"{item['name']}: {item.get('description', '')}\n  inputs: {inputs}")
    return "\n".join(blocks)
