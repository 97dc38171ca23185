"""Calls of the CLI for the demo's tests (in-process, --json)."""

from __future__ import annotations

import io
import json
from typing import Any

from cli.app import run


def cli_json(db: str, *argv: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(["--db", db, "--json", *argv], stdout=out, stderr=err, environ={})
    return status, (json.loads(out.getvalue()) if out.getvalue() else {}), err.getvalue()


def demo_json(db: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    return cli_json(db, "demo", *extra)
