"""Engines for the two supported databases, with the settings the event log relies on.

SQLite: WAL, synchronous=FULL (a committed clinical record survives power loss), a busy
timeout, foreign keys on, and the driver's own transaction handling switched off so that
writers open with BEGIN IMMEDIATE (they take the write lock before reading the stream head).
The connections of a file database are pooled (SQLAlchemy's QueuePool, as for any file
database): each is opened and configured once, not per command; closing the last connection
of a WAL database checkpoints and removes the WAL, which NullPool did on every command. The
pool never makes a caller wait (its overflow is unbounded, as NullPool's was); SQLite's own
locks, not the pool, serialise writers across threads and processes. An in-memory database
keeps SQLAlchemy's default (one connection per thread).
The busy timeout is 5 s unless the URL sets another with `?timeout=SECONDS` (the sqlite3
driver's own spelling, e.g. `sqlite:///trialflow.db?timeout=0.5`).
A file this process may not write (its mode, its folder's, a read-only mount), or a URL that
asks for it (`?mode=ro&uri=true`), is opened read-only (`mode=ro`), and with `immutable=1`
when SQLite cannot create the WAL index (`-shm`) beside it and no write-ahead log is waiting
there; its journal mode is left alone (`read_only`). Writes on it are refused
(`database_read_only`), and the read models fold their lag in memory.
PostgreSQL: psycopg 3; appends serialise on a transaction-level advisory lock (store.py).
Every session waits for a lock at most `lock_timeout` (5 s unless the URL sets another with
`?lock_timeout=SECONDS`, taken out of the URL before psycopg sees it; 0 waits forever), so a
writer never hangs behind a session that holds the append lock: it fails as `database_busy`.
Connections are pinged on checkout like `pool_pre_ping`, by a listener the event store can
switch off for its own checkouts (see `_postgres_engine`).
A URL's password is never shown (`hide_passwords`), and `url_has_password` lets the CLI refuse
one on its command line, where every user of the machine can read it.

Pooled connections must not cross a fork: a child process starts with empty pools (the
parent's connections are left to the parent), see `_forget_pools_after_fork`.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.util import asbool

from events.errors import InvalidDatabaseUrl, StoreUnavailable, database_full

DEFAULT_URL = "sqlite:///trialflow.db"
SQLITE_BUSY_TIMEOUT_MS = 5000
POSTGRES_LOCK_TIMEOUT_MS = 5000  # how long a PostgreSQL session waits for any lock
ROOM_BYTES = 1 << 20  # a filesystem with less free space than this is full for a database
SQLITE_POOL_SIZE = 5  # connections kept open per engine (more are opened, then closed, on demand)
WRITE = {"trialflow_write": True}  # execution option: this connection's transaction writes

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_FRESH = "trialflow_fresh"  # connection-record info key: not yet checked out
_UNPINGED: ContextVar[bool] = ContextVar("trialflow_unpinged", default=False)


def normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def create_store_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
                        create: bool = True) -> Engine:
    """`create=False`: a SQLite file that does not exist is never created (the CLI's every
    command but `init` and `demo`); connecting raises `missing_sqlite_file` instead."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise InvalidDatabaseUrl(f"The database URL {_shown(url)} is not a URL such as "
                                 "sqlite:///trialflow.db or postgresql://host/db.") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise InvalidDatabaseUrl(f"The database URL {_shown(url)} names {_shown(backend)}; "
                                 "only SQLite (sqlite:///FILE) and PostgreSQL "
                                 "(postgresql://…) are supported.")
    if backend == "postgresql":
        _remember_passwords(parsed)
    try:
        if backend == "sqlite":
            timeout = parsed.query.get("timeout")  # seconds, as sqlite3 and SQLAlchemy spell it
            if isinstance(timeout, str):
                busy_timeout_ms = _busy_timeout_ms(timeout)
            engine = _sqlite_engine(url, busy_timeout_ms, create)
        else:
            engine = _postgres_engine(parsed)
    except (sa_exc.ArgumentError, ImportError, ValueError, OverflowError) as error:
        reason = hide_passwords(str(error).rstrip('.') or type(error).__name__)
        raise InvalidDatabaseUrl(f"The database URL {_shown(url)} cannot be used: "
                                 f"{reason}.") from error
    _ENGINES.add(engine)
    return engine


def _busy_timeout_ms(seconds: str) -> int:
    """The busy timeout a SQLite URL asks for (`?timeout=0.5`: half a second); a value that
    is no number raises ValueError, as SQLAlchemy's own parsing of it does."""
    return max(0, int(float(seconds) * 1000))


def _lock_timeout_ms(seconds: object) -> int:
    """The lock timeout a PostgreSQL URL asks for (`?lock_timeout=0.5`: half a second; 0:
    wait forever), in milliseconds; ValueError for anything else."""
    if not isinstance(seconds, str):
        raise ValueError("lock_timeout is given more than once")
    try:
        value = float(seconds)
    except ValueError:
        raise ValueError(f"lock_timeout={seconds!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or value * 1000 > 2**31 - 1:
        raise ValueError(f"lock_timeout={seconds!r} is not a number of seconds from 0 to "
                         "2147483")
    return math.ceil(value * 1000)


def _shown(text: str) -> str:
    """A URL for a message: its password hidden (also in a URL that does not parse), at most
    80 characters."""
    with suppress(sa_exc.ArgumentError, ValueError):
        text = make_url(text).render_as_string(hide_password=True)
    text = hide_passwords(text)
    return repr(text if len(text) <= 80 else text[:80] + "…")


_USERINFO = re.compile(r"(//[^/:@\s]*):[^/@\s]*@")  # `//user:password@` of a URL
# `password=…` of a URL's query or of a libpq connection string (quoted or not)
_PASSWORD_SETTING = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")
_PASSWORDS: set[str] = set()  # of the PostgreSQL URLs this process was given


def hide_passwords(text: str) -> str:
    """`text` (a message, a URL) with every password it could carry replaced by `***`: a
    URL's `user:password@` and `password=` settings, the passwords of the URLs this process
    opened, and PGPASSWORD's."""
    text = _USERINFO.sub(r"\1:***@", text)
    text = _PASSWORD_SETTING.sub(r"\1***", text)
    secrets = set(_PASSWORDS)
    if os.environ.get("PGPASSWORD"):
        secrets.add(os.environ["PGPASSWORD"])
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def url_has_password(url: str) -> bool:
    """Whether a database URL carries a password (`user:password@` or `?password=`)."""
    try:
        parsed = make_url(normalise_url(url))
    except (sa_exc.ArgumentError, ValueError):
        return hide_passwords(url) != url
    return bool(parsed.password) or any(key.lower() == "password" for key in parsed.query)


def _remember_passwords(parsed: URL) -> None:
    """Keep the URL's passwords, so that no message of this process shows them."""
    found = [parsed.password] + [value for key, value in parsed.query.items()
                                 if key.lower() == "password"]
    for value in found:
        for secret in ([value] if isinstance(value, str) else value or ()):
            if secret:
                _PASSWORDS.add(str(secret))


def _postgres_engine(parsed: URL) -> Engine:
    """A pool whose connections are pinged on checkout, exactly as `pool_pre_ping=True` does
    (a dead one is replaced, and the connections older than it are recycled), except for a
    checkout made inside `unpinged()`: the event store proves a connection alive with its own
    first round trip instead, and retries on a fresh one when that trip finds it dead
    (events/store.py), which saves a round trip per command.

    Every new connection sets the session's `lock_timeout` (`?lock_timeout=SECONDS` of the URL,
    default 5 s), so no lock wait of any statement (the append's advisory lock included) lasts
    longer: PostgreSQL then cancels the statement (SQLSTATE 55P03), which is `database_busy`.
    It is set by a statement rather than the startup packet's `options`, which would displace
    the `options` of a service file or of PGOPTIONS."""
    lock_timeout_ms = POSTGRES_LOCK_TIMEOUT_MS
    if "lock_timeout" in parsed.query:
        lock_timeout_ms = _lock_timeout_ms(parsed.query["lock_timeout"])
        parsed = parsed.difference_update_query(["lock_timeout"])
    engine = create_engine(parsed, pool_size=2, max_overflow=4)
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True  # a new connection needs no ping (nor does pre-ping)
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # one round trip, nothing left open
        try:
            dbapi_connection.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        finally:
            dbapi_connection.autocommit = autocommit

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop(_FRESH, False) or _UNPINGED.get():
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if not dialect.is_disconnect(error, dbapi_connection, None):
                raise
            alive = False
        if not alive:  # the pool reconnects, and recycles the connections older than this
            raise sa_exc.InvalidatePoolError("the connection failed its ping")

    return engine


@contextmanager
def unpinged() -> Iterator[None]:
    """Checkouts in this block skip the ping: the caller's first round trip is the check."""
    token = _UNPINGED.set(True)
    try:
        yield
    finally:
        _UNPINGED.reset(token)


def _is_file_database(url: str) -> bool:
    parsed = make_url(url)
    return bool(parsed.database) and parsed.database != ":memory:" and (
        parsed.query.get("mode") != "memory"
    )


def _sqlite_engine(url: str, busy_timeout_ms: int, create: bool = True) -> Engine:
    pool_args: dict[str, Any] = {}
    if _is_file_database(url):  # QueuePool, SQLAlchemy's choice for file databases
        pool_args = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": -1}
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        **pool_args,
    )
    (filename, *_), options = engine.dialect.create_connect_args(engine.url)
    file = SqliteFile.of(str(filename), asbool(options.get("uri", False)))
    if file is not None:
        _SQLITE_FILES[engine] = file

    @event.listens_for(engine, "do_connect")
    def _do_connect(dialect: Any, record: Any, _cargs: Any, cparams: dict[str, Any]) -> Any:
        if file is not None and not create and not os.path.exists(file.path):
            raise missing_sqlite_file(url, file.path)  # never an empty file left behind
        record.info[_READ_ONLY] = file is not None and file.read_only()
        if file is None:
            return None
        if not record.info[_READ_ONLY]:
            if not os.path.exists(file.path) and file.out_of_room():
                raise database_full()  # not even an empty file is left behind
            return None  # SQLAlchemy opens it as the URL says
        return file.open_read_only(dialect.loaded_dbapi, {**cparams, "uri": True})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not record.info.get(_READ_ONLY):  # a read-only file keeps its journal mode
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        writes = conn.get_execution_options().get("trialflow_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def missing_sqlite_file(url: str, path: str) -> StoreUnavailable:
    """The one sentence for a SQLite file that is not there: which file, how the URL's path
    is read (three slashes: relative to the working directory; four: absolute) and how to
    create it."""
    shown = hide_passwords(url).replace("sqlite+pysqlite:", "sqlite:", 1)
    database = make_url(url).database or ""
    if database.startswith("file:"):
        database = unquote(urlsplit(database).path)
    if os.path.isabs(database):
        how = (f"the URL {shown} gives an absolute path; sqlite:///NAME, with three "
               "slashes, is relative to the working directory")
    else:
        how = (f"the URL {shown} gives a path relative to the working directory "
               f"{os.getcwd()}; an absolute path takes four slashes, sqlite:////path/NAME.db")
    return StoreUnavailable(
        f"There is no database file {path} ({how}): create it with `trialflow init --db "
        f"{shown}`, or give the URL of an existing one; nothing was read or written.",
        retryable=False, rule="database_unreachable")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


_READ_ONLY = "trialflow_read_only"  # connection-record info key: opened read-only
_SQLITE_FILES: weakref.WeakKeyDictionary[Engine, SqliteFile] = weakref.WeakKeyDictionary()
_CANNOT_READ_LOG = (
    "The database file cannot be written here and its write-ahead log ({name}-wal) cannot "
    "be read without the index SQLite would create beside it ({name}-shm); nothing was read, "
    "open it once where it may be written.")


@dataclass(frozen=True)
class SqliteFile:
    """The database file a SQLite engine opens, and the parameters of its URI (`mode`, …)."""

    path: str  # absolute
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, filename: str, uri: bool) -> SqliteFile | None:
        """The file sqlite3 is given (`uri`: as a `file:` URI), or None for a memory
        database."""
        params: tuple[tuple[str, str], ...] = ()
        if uri and filename.startswith("file:"):
            parts = urlsplit(filename)
            params = tuple(parse_qsl(parts.query, keep_blank_values=True))
            filename = unquote(parts.path)
        if filename in ("", ":memory:") or dict(params).get("mode") == "memory":
            return None
        return cls(os.path.abspath(filename), params)

    def asks_read_only(self) -> bool:
        """The URL asks for it: `?mode=ro` or `?immutable=1` (with `uri=true`)."""
        found = dict(self.params)
        return found.get("mode") == "ro" or _true(found.get("immutable"))

    def read_only(self) -> bool:
        """Whether the file is to be opened read-only: the URL asks for it, or this process
        may not write the file or create its `-wal` and `-shm` in its folder (its mode, the
        folder's, a read-only mount). A file that does not exist yet is not (SQLite creates
        it, or says why it cannot)."""
        if self.asks_read_only():
            return True
        if not os.path.exists(self.path):
            return False
        return not (_may(self.path, os.W_OK)
                    and _may(os.path.dirname(self.path), os.W_OK | os.X_OK))

    def uri(self, **changes: str) -> str:
        params = {**dict(self.params), **changes}
        return f"file:{quote(self.path)}?{urlencode(params)}"

    def open_read_only(self, dbapi: Any, connect_args: dict[str, Any]) -> Any:
        """A read-only connection (`mode=ro`). SQLite reads a WAL database through its index,
        the `-shm` file beside it; where that cannot be created (a read-only folder or mount)
        and no write-ahead log waits to be read, the file is read as it is (`immutable=1`:
        no index, no locks: nobody can write it). A waiting log cannot be read that way
        (`immutable` ignores it): refused."""
        if _true(dict(self.params).get("immutable")):
            return dbapi.connect(self.uri(mode="ro"), **connect_args)
        connection = dbapi.connect(self.uri(mode="ro"), **connect_args)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the index
            return connection
        except dbapi.OperationalError as error:
            connection.close()
            # CANTOPEN: the -shm cannot be created; READONLY_CANTINIT (and its kin): it
            # cannot be initialised
            code = str(getattr(error, "sqlite_errorname", "") or "")
            no_index = (code.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY"))
                        or "unable to open" in str(error) or "readonly" in str(error))
            if not no_index or not os.path.exists(self.path):
                raise
            try:
                waiting = os.path.getsize(self.path + "-wal") > 0
            except OSError:  # no log
                waiting = False
            if waiting:
                raise StoreUnavailable(
                    _CANNOT_READ_LOG.format(name=os.path.basename(self.path)),
                    retryable=False, rule="database_unreachable") from None
            return dbapi.connect(self.uri(mode="ro", immutable="1"), **connect_args)

    def out_of_room(self) -> bool:
        """Whether the filesystem holding the file has no room left: less than ROOM_BYTES
        free (what root may use, when this process is root), or no free inode (the `-wal`
        and `-shm` files cannot be created)."""
        try:
            found = os.statvfs(os.path.dirname(self.path))
        except OSError:
            return False
        root = os.geteuid() == 0
        blocks = found.f_bfree if root else found.f_bavail
        inodes = found.f_ffree if root else found.f_favail
        return blocks * found.f_frsize < ROOM_BYTES or (found.f_files > 0 and inodes == 0)


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _may(path: str, mode: int) -> bool:
    """os.access: the kernel's answer, capabilities and read-only mounts included (glibc's
    emulation of `effective_ids` grants root everything, so it is not used)."""
    return os.access(path or ".", mode)


def read_only(engine: Engine) -> bool:
    """Whether `engine` opens its SQLite file read-only (see `SqliteFile.read_only`)."""
    file = _SQLITE_FILES.get(engine)
    return file is not None and file.read_only()


def out_of_room(engine: Engine | None = None) -> bool:
    """Whether the filesystem of `engine`'s SQLite file is full (`SqliteFile.out_of_room`);
    without an engine, whether that of any SQLite file this process opened is (a process
    opens one database; the caller of a translation does not always know the engine)."""
    if engine is not None:
        file = _SQLITE_FILES.get(engine)
        return file is not None and file.out_of_room()
    return any(file.out_of_room() for file in list(_SQLITE_FILES.values()))


def _forget_pools_after_fork() -> None:
    """In a forked child, drop the pools' references to the parent's connections without
    closing them (SQLAlchemy's `dispose(close=False)` recipe): a SQLite or PostgreSQL
    connection must never be used by two processes."""
    for engine in list(_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)
