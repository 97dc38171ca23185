"""The one wiring place: engine, store and clock from an explicit URL (nothing connects at
import time). Tests build an App with their own clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from events.engine import create_store_engine
from events.store import EventStore
from workflow.identity import DEFAULT_KDF, Kdf


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    engine: Engine
    store: EventStore
    clock: Callable[[], datetime]
    kdf: Kdf = DEFAULT_KDF  # parameters of new password hashes (tests and the demo: cheaper)


def build_app(
    db_url: str,
    *,
    clock: Callable[[], datetime] = system_clock,
    store_clock: Callable[[], datetime] | None = None,
    new_id: Callable[[], str] | None = None,
    kdf: Kdf = DEFAULT_KDF,
    create: bool = True,
) -> App:
    """`clock` is the application's "now"; `store_clock` overrides the recorded time (tests and
    simulations only: by default `recorded_at` is the database's own clock). `create=False`:
    a missing SQLite file is refused, never created (events/engine.py)."""
    engine = create_store_engine(db_url, create=create)
    store = (EventStore(engine, clock=store_clock) if new_id is None
             else EventStore(engine, clock=store_clock, new_id=new_id))
    return App(engine=engine, store=store, clock=clock, kdf=kdf)
