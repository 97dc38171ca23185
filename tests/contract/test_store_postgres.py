from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from events.store import EventStore
from tests.contract.store_contract import StoreContract, ctx, ev
from tests.support.pg import fresh_database

pytestmark = pytest.mark.postgres


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def url(self) -> Iterator[str]:
        with fresh_database() as url:
            yield url

    def disable_guards(self, store: EventStore) -> None:
        self.raw(store, "ALTER TABLE events DISABLE TRIGGER USER;"
                 "ALTER TABLE commands DISABLE TRIGGER USER")

    def test_truncate_is_refused(self, store: EventStore) -> None:
        store.append("S-001", 0, [ev()], ctx())
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            self.raw(store, "TRUNCATE events")
        assert store.last_position() == 1
