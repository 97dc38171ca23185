"""Versioned schema migrations.

Each migration is a module `vNNN_name.py` with `VERSION`, `NAME` and `upgrade(conn)`; they run
in order inside one transaction (all that are pending, or none), and `schema_migrations`
records each one.
A migration's DDL is frozen once released: a later change to the schema is a new migration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection

MODULES = ("v001_events", "v002_commands", "v003_guards", "v004_sqlite_indexes")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    upgrade: Callable[[Connection], None]


def all_migrations() -> list[Migration]:
    found = []
    for module_name in MODULES:
        module = importlib.import_module(f"events.migrations.{module_name}")
        found.append(Migration(module.VERSION, module.NAME, module.upgrade))
    return sorted(found, key=lambda m: m.version)
