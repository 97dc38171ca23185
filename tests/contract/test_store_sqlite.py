from __future__ import annotations

import pytest

from events.store import EventStore
from tests.contract.store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def url(self, sqlite_url: str) -> str:
        return sqlite_url

    def disable_guards(self, store: EventStore) -> None:
        for trigger in ("events_refuse_update", "events_refuse_delete", "events_guard_insert",
                        "commands_refuse_delete"):
            self.raw(store, f"DROP TRIGGER {trigger}")

    def test_sqlite_settings(self, store: EventStore) -> None:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
