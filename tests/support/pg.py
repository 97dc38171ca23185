"""PostgreSQL for tests: a fresh database per use on the server at 127.0.0.1:5432.

With CI=true a missing server fails the run; elsewhere the tests skip and say why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_HOST = os.environ.get("TRIALFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TRIALFLOW_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TRIALFLOW_TEST_PG_USER", "postgres")


def admin_dsn(dbname: str = "postgres") -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname} connect_timeout=3"


def url_for(dbname: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def server_problem() -> str | None:
    import psycopg

    try:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return f"no PostgreSQL server answers at {PG_HOST}:{PG_PORT} ({error})".strip()
    return None


def require_server() -> None:
    problem = server_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {problem}: the PostgreSQL tests must run in CI.")
    pytest.skip(f"{problem}; set up PostgreSQL or run with CI=true to require it")


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create a database with a unique name, yield its SQLAlchemy URL, drop it after."""
    import psycopg

    require_server()
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_for(name)
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
