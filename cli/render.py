"""Hand results to the user: one JSON document with --json, readable text otherwise."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from cli.context import Env


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def emit(env: Env, data: Any, text: str | Callable[[], str]) -> None:
    """Print `data` as JSON with --json, else the text (built only when needed)."""
    if env.json:
        env.stdout.write(to_json(data) + "\n")
    else:
        body = text() if callable(text) else text
        env.stdout.write(body if body.endswith("\n") else body + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain, aligned text table (no colour codes, so it pipes and diffs cleanly)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
