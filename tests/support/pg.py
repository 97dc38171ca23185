"""PostgreSQL for tests: a fresh database per use on the server at 127.0.0.1:5432.

With CI=true a missing server fails the run; elsewhere the tests skip and say why.

"Fresh" is checked, not assumed. Creating and dropping a database costs 0.1 s on a quiet
machine and 0.3 s under the suite's load (its copy of the template goes through the WAL), and
about 900 tests use one; so a test process keeps the databases its tests gave back and hands
them out again, each time under a new name (a URL is never handed out twice). Given back, a
database is emptied (its other sessions ended, every schema
dropped, `public` made again as PostgreSQL makes it) and then compared with a database just
created: its schemas and their privileges, every object outside the system schemas, its
database-level privileges, settings and options, its extensions, event triggers,
publications, large objects and prepared transactions. Anything a reset cannot take back (a
`GRANT CONNECT ON DATABASE`, an `ALTER DATABASE … SET`) makes the comparison differ, and that
database is dropped instead of kept. `TRIALFLOW_TEST_PG_REUSE=0` creates and drops one per
use as before.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

PG_HOST = os.environ.get("TRIALFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TRIALFLOW_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TRIALFLOW_TEST_PG_USER", "postgres")
REUSE = os.environ.get("TRIALFLOW_TEST_PG_REUSE", "1") != "0"

# What a database is, seen from inside, apart from its name and object ids. Two databases with
# the same answer are alike for every test: no test can tell a reset one from a new one.
_FINGERPRINT = """
SELECT json_build_object(
  'database', (SELECT json_build_object(
      'owner', pg_get_userbyid(d.datdba), 'encoding', d.encoding, 'collate', d.datcollate,
      'ctype', d.datctype, 'template', d.datistemplate, 'allow', d.datallowconn,
      'limit', d.datconnlimit, 'acl', d.datacl::text, 'tablespace', d.dattablespace)
    FROM pg_database d WHERE d.datname = current_database()),
  'settings', (SELECT json_agg(s.setconfig::text ORDER BY s.setrole)
    FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
    WHERE d.datname = current_database()),
  'schemas', (SELECT json_agg(json_build_array(n.nspname, pg_get_userbyid(n.nspowner),
                                               n.nspacl::text,
                                               obj_description(n.oid, 'pg_namespace'))
                              ORDER BY n.nspname)
    FROM pg_namespace n
    WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'),
  'relations', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'),
  'functions', (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'),
  'types', (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'),
  'default_acl', (SELECT count(*) FROM pg_default_acl),
  'extensions', (SELECT json_agg(json_build_array(extname, extversion) ORDER BY extname)
    FROM pg_extension),
  'event_triggers', (SELECT count(*) FROM pg_event_trigger),
  'publications', (SELECT count(*) FROM pg_publication),
  'subscriptions', (SELECT count(*) FROM pg_subscription s JOIN pg_database d
    ON d.oid = s.subdbid WHERE d.datname = current_database()),
  'large_objects', (SELECT count(*) FROM pg_largeobject_metadata),
  'prepared', (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()),
  'casts', (SELECT count(*) FROM pg_cast WHERE oid >= 16384),
  'operators', (SELECT count(*) FROM pg_operator WHERE oid >= 16384),
  'foreign', (SELECT count(*) FROM pg_foreign_data_wrapper) + (SELECT count(*)
    FROM pg_foreign_server),
  'shared_dependencies', (SELECT count(*) FROM pg_shdepend s JOIN pg_database d
    ON d.oid = s.dbid WHERE d.datname = current_database())
)::text
"""

# Empty a database: every schema outside the system's dropped (with all it holds), then
# `public` made again as PostgreSQL 15 makes it (owned by pg_database_owner, USAGE for all).
_RESET = """
DO $$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
END $$;
CREATE SCHEMA public AUTHORIZATION pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;
COMMENT ON SCHEMA public IS 'standard public schema';
"""

_spare: list[str] = []  # emptied databases this process created, checked fresh
_pristine: list[str] = []  # a new database's fingerprint, taken once per process


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
    """Yield the SQLAlchemy URL of a database no test has anything in (new, or reset and
    checked alike to a new one); give it back after."""
    require_server()
    name = _spare.pop() if _spare else _create()
    try:
        yield url_for(name)
    finally:
        _give_back(name)


def fingerprint(name: str) -> str:
    """The database's fingerprint (_FINGERPRINT): equal for a new and a reset database."""
    import psycopg

    with psycopg.connect(admin_dsn(name), autocommit=True) as conn:
        row = conn.execute(_FINGERPRINT).fetchone()
    assert row is not None
    return str(row[0])


def reset(name: str) -> bool:
    """Empty the database (its other sessions ended first) and say whether it is now alike
    to a new one."""
    import psycopg

    with psycopg.connect(admin_dsn(name), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute(_RESET)
    return fingerprint(name) == _pristine[0]


def _create() -> str:
    import psycopg

    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    if REUSE and not _pristine:
        _pristine.append(fingerprint(name))
    return name


def _give_back(name: str) -> None:
    import psycopg

    if REUSE:
        try:
            if reset(name):
                _spare.append(_renamed(name))
                return
        except psycopg.Error:
            pass  # not reusable (or still in use by a session ending): dropped below
    _drop(name)


def _renamed(name: str) -> str:
    """The database under a new unique name: a URL is never handed out twice, so whatever a
    test keeps by URL (a secret file, a session token) never meets another test's study."""
    import psycopg

    new = f"tf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" RENAME TO "{new}"')
    return new


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_spares(*_: Any) -> None:
    """Drop the databases kept for reuse (at the end of the session, and at exit)."""
    while _spare:
        with contextlib.suppress(Exception):  # the server may be gone at exit
            _drop(_spare.pop())


atexit.register(drop_spares)
