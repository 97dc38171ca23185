"""One door for writes: outside `events/`, only the executor appends to the log, and only the
executor (through workflow/identity.py) touches credentials and sessions. Read from the source,
so a new side door fails here before it ships."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("workflow", "projections", "cli")
EXECUTOR = "workflow/commands/executor.py"
IDENTITY = "workflow/identity.py"
CREDENTIAL_CALLS = {"password_statements", "end_sessions_statements", "start_session",
                    "end_sessions"}
RAW_WRITE = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(events|commands|"
                       r"credentials|sessions)\b", re.IGNORECASE)


def appends_in(source: str) -> list[int]:
    """Lines that call `…store.append(…)` or any `.append_streams(…)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        receiver = ast.unparse(node.func.value)
        if node.func.attr == "append_streams" or (
                node.func.attr == "append" and receiver.split(".")[-1].endswith("store")):
            found.append(node.lineno)
    return found


def credential_calls_in(source: str) -> list[int]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = (node.func.attr if isinstance(node.func, ast.Attribute) else
                    node.func.id if isinstance(node.func, ast.Name) else "")
            if name in CREDENTIAL_CALLS:
                found.append(node.lineno)
    return found


def product_files() -> list[tuple[str, str]]:
    return [(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
            for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))]


def test_only_the_executor_appends() -> None:
    doors = {name: lines for name, source in product_files()
             if (lines := appends_in(source)) and name != EXECUTOR}
    assert doors == {}, f"appends outside the executor: {doors}"
    assert appends_in((ROOT / EXECUTOR).read_text(encoding="utf-8"))  # the door is there


def test_only_the_executor_changes_credentials_and_sessions() -> None:
    doors = {name: lines for name, source in product_files()
             if (lines := credential_calls_in(source)) and name not in (EXECUTOR, IDENTITY)}
    assert doors == {}, f"credential writes outside the executor: {doors}"
    raw = {name: RAW_WRITE.findall(source) for name, source in product_files()
           if name != IDENTITY and RAW_WRITE.search(source)}
    assert raw == {}, f"SQL writing the log or credentials outside events/: {raw}"


def test_the_checks_see_a_side_door() -> None:
    """The checks above can fail: they find each kind of side door in a sample."""
    sample = ("def f(app, flow):\n"
              "    app.store.append('S-1', None, [], ctx)\n"
              "    flow.store.append_streams([], ctx)\n"
              "    rows.append(1)\n"
              "    identity.start_session(engine, 'ada', now, 8)\n")
    assert appends_in(sample) == [2, 3]
    assert credential_calls_in(sample) == [5]
    assert RAW_WRITE.search("conn.execute('DELETE FROM sessions WHERE name = ?')")
