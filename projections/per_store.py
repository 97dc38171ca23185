"""State a process keeps beside one event store, for as long as that store lives (the
scheduler's folded reminders, the catch-ups' kept streams)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from events.store import EventStore

_V = TypeVar("_V")


class PerStore(Generic[_V]):
    """One value per live store, made by `make` on first use and let go with the store."""

    def __init__(self, make: Callable[[], _V]) -> None:
        self._make = make
        self._values: dict[int, _V] = {}  # by id() of a live store (not hashable)
        self._lock = threading.Lock()

    def of(self, store: EventStore) -> _V:
        with self._lock:
            value = self._values.get(id(store))
            if value is None:
                value = self._values[id(store)] = self._make()
                weakref.finalize(store, self._values.pop, id(store), None)  # gone with it
            return value
