"""The PostgreSQL tests' databases are reused only when a reset makes them alike to a new one
(tests/support/pg.py): what the application leaves in a database is taken back; what a reset
cannot take back makes the database be dropped instead."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from events.roles import create_roles
from events.schema import upgrade
from tests.support import pg
from workflow.bootstrap import build_app

pytestmark = pytest.mark.postgres


def _execute(name: str, *statements: str) -> None:
    with psycopg.connect(pg.admin_dsn(name), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _new() -> tuple[str, str]:
    """A database created for this test (not a spare), and a new one's fingerprint."""
    pg.require_server()
    name = pg._create()
    return name, pg.fingerprint(name)


def test_a_study_with_its_schema_sessions_and_an_open_connection_is_reset_to_new() -> None:
    name, new = _new()
    try:
        app = build_app(pg.url_for(name))
        upgrade(app.engine)  # `trialflow init`'s migrations: tables, functions, triggers, schemas
        held = psycopg.connect(pg.admin_dsn(name))  # an open transaction holding a lock
        held.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        _execute(name, "CREATE SCHEMA extra", "CREATE TABLE extra.t (x int)",
                 "CREATE TYPE mood AS ENUM ('ok')", "CREATE SEQUENCE public.s",
                 "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                 "COMMENT ON SCHEMA public IS 'changed'")
        assert pg.fingerprint(name) != new
        assert pg.reset(name)
        assert pg.fingerprint(name) == new
        assert held.closed or held.broken or _is_terminated(held)
        app.engine.dispose()
        again = build_app(pg.url_for(name))
        upgrade(again.engine)  # a study can be made in it again
        again.engine.dispose()
    finally:
        pg._drop(name)


def _is_terminated(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def _init_roles(name: str) -> None:
    engine = build_app(pg.url_for(name)).engine
    upgrade(engine)
    create_roles(engine)
    engine.dispose()


@pytest.mark.parametrize("change", [
    pytest.param(lambda name: _init_roles(name), id="init --roles (CONNECT revoked from PUBLIC)"),
    pytest.param(lambda name: _execute(name, f'ALTER DATABASE "{name}" SET work_mem = 1234'),
                 id="a database setting"),
    pytest.param(lambda name: _execute(name, f'ALTER DATABASE "{name}" CONNECTION LIMIT 50'),
                 id="a database option"),
    pytest.param(lambda name: _execute(name, "SELECT lo_create(0)"), id="a large object"),
    pytest.param(lambda name: _execute(name, "CREATE PUBLICATION p FOR ALL TABLES"),
                 id="a publication"),
])
def test_what_a_reset_cannot_take_back_is_seen(change: Callable[[str], None]) -> None:
    name, new = _new()
    try:
        change(name)
        assert not pg.reset(name)
        assert pg.fingerprint(name) != new
    finally:
        pg._drop(name)


def test_a_database_given_back_unlike_a_new_one_is_dropped_not_kept() -> None:
    pg.require_server()
    with pg.fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        _execute(name, f'ALTER DATABASE "{name}" SET work_mem = 1234')
    assert name not in pg._spare
    with psycopg.connect(pg.admin_dsn(), autocommit=True) as conn:
        found = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                             (name,)).fetchone()
    assert found == (0,)
    with pg.fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        _execute(name, "CREATE TABLE kept (x int)")
    kept = pg._spare[-1]
    assert kept != name  # kept under a new name: no URL is handed out twice
    with pg.fresh_database() as again:
        assert again == pg.url_for(kept) and again != url
        with psycopg.connect(pg.admin_dsn(kept)) as conn:
            assert conn.execute("SELECT to_regclass('public.kept')").fetchone() == (None,)
