"""Every public instrument function names its published source in one comment line above it."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "sledai2k", "eular_acr_2019", "lldas", "doris", "renal", "crs", "icans", "ctcae",
    "steroids", "dosing", "study_days", "persistence",
]


def public_functions(name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(f"workflow.instruments.{name}")
    return [
        (fname, func) for fname, func in inspect.getmembers(module, inspect.isfunction)
        if not fname.startswith("_") and func.__module__ == module.__name__
    ]


@pytest.mark.parametrize("name", MODULES)
def test_each_public_function_has_one_source_line(name: str) -> None:
    functions = public_functions(name)
    assert functions, name
    for fname, func in functions:
        lines, _ = inspect.getsourcelines(func)  # type: ignore[arg-type]
        module = inspect.getmodule(func)
        assert module is not None
        source = inspect.getsource(module).splitlines()
        index = source.index(lines[0].rstrip("\n"))
        above = source[index - 1]
        assert above.startswith("# Source: "), (name, fname)
        assert not source[index - 2].startswith("#"), (name, fname)
