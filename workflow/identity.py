"""Who is writing: passwords and sessions (21 CFR Part 11 §11.10(d), §11.300).

Credentials change, so they live outside the event log, in two tables of the same database:
`credentials` (one scrypt hash per user) and `sessions` (hashes of session tokens with their
expiry). The log records that a credential changed (`CredentialsChanged` in the `study`
stream, by whom), never the hash. Tokens are shown once, at `trialflow login`; the database
keeps only their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
)

from workflow.errors import InvalidInput, RuleViolation

SCRYPT_N: Final = 2**14  # OWASP password storage: scrypt N=2^14 (16 MiB), r=8, p=1
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
MIN_LENGTH: Final = 10
SESSION_HOURS: Final = 8  # a working day; after that `trialflow login` again

metadata = MetaData()
credentials = Table(
    "credentials", metadata,
    Column("name", String(64), primary_key=True),
    Column("scheme", String(40), nullable=False),  # scrypt$N$r$p
    Column("salt", String(64), nullable=False),
    Column("hash", String(128), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)
sessions = Table(
    "sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


def ensure_tables(engine: Engine) -> None:
    from events.translate import translated

    with translated():  # a database that cannot be opened is StoreUnavailable, not a crash
        metadata.create_all(engine, checkfirst=True)


def _scrypt(password: str, salt: bytes) -> str:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                          p=SCRYPT_P, dklen=32).hex()


def check_new_password(name: str, password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"The password of {name} must have at least {MIN_LENGTH} "
                           "characters.", field="password")
    if name.lower() in password.lower():
        raise InvalidInput(f"The password of {name} must not contain the user name.",
                           field="password")


def set_password(conn: Connection, name: str, password: str, now: datetime) -> None:
    check_new_password(name, password)
    salt = secrets.token_bytes(16)
    conn.execute(delete(credentials).where(credentials.c.name == name))
    conn.execute(insert(credentials).values(
        name=name, scheme=f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}", salt=salt.hex(),
        hash=_scrypt(password, salt), changed_at=now))
    conn.execute(delete(sessions).where(sessions.c.name == name))  # old sessions end


def has_password(engine: Engine, name: str) -> bool:
    ensure_tables(engine)
    with engine.connect() as conn:
        return conn.execute(select(credentials.c.name).where(
            credentials.c.name == name)).first() is not None


def verify_password(engine: Engine, name: str, password: str) -> None:
    """Raises RuleViolation (`authentication_failed`) unless `password` is `name`'s."""
    ensure_tables(engine)
    with engine.connect() as conn:
        row = conn.execute(select(credentials).where(credentials.c.name == name)).first()
    if row is None:
        raise RuleViolation(f"User {name} has no password yet: an admin sets one with "
                            f"`trialflow users passwd {name}`.", rule="no_password",
                            field="user")
    if not hmac.compare_digest(_scrypt(password, bytes.fromhex(row.salt)), row.hash):
        raise RuleViolation(f"The password given for user {name} is wrong.",
                            rule="authentication_failed", field="password")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_session(engine: Engine, name: str, now: datetime,
                   hours: int = SESSION_HOURS) -> tuple[str, datetime]:
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(hours=hours)
    with engine.begin() as conn:
        conn.execute(insert(sessions).values(token_hash=_token_hash(token), name=name,
                                             created_at=now, expires_at=expires))
    return token, expires


def check_session(engine: Engine, name: str, token: str, now: datetime) -> None:
    """Raises RuleViolation unless `token` is a live session of `name`."""
    ensure_tables(engine)
    with engine.connect() as conn:
        row = conn.execute(select(sessions).where(
            sessions.c.token_hash == _token_hash(token))).first()
    if row is None or row.name != name:
        raise RuleViolation(f"The session token does not belong to user {name}; run "
                            "`trialflow login` as that user.", rule="authentication_failed",
                            field="session")
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(
        tzinfo=now.tzinfo)
    if expires <= now:
        raise RuleViolation(f"The session of user {name} expired at {expires.isoformat()}; "
                            "run `trialflow login` again.", rule="session_expired",
                            field="session")


def end_sessions(engine: Engine, name: str) -> int:
    ensure_tables(engine)
    with engine.begin() as conn:
        return conn.execute(delete(sessions).where(sessions.c.name == name)).rowcount
