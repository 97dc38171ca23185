"""The log guards itself: a global chain, in-database checks of every insert, and on
PostgreSQL one door for appends and a schema for credentials that personal logins cannot read.

Both databases
- `events.chain_hash`: the global chain (events.envelope.link), filled for the events already
  stored, so that a gap, a removed stream or a reordering anywhere in the log breaks it.

SQLite
- `events_guard_insert` (BEFORE INSERT): a new event must take the next position and its
  stream's next version, link to its stream's last hash, not go back in recorded time, and
  carry a JSON object as payload. `INSERT OR REPLACE` therefore cannot rewrite an event (REPLACE
  fires no DELETE trigger, but this one fires first and refuses an existing position or
  version).
- `commands_guard_insert`: a command row needs its own events (same transaction, inserted
  first) and cannot replace an earlier row.

PostgreSQL
- `payload` must be a JSON object (a CHECK constraint; existing rows are left to `audit
  verify`, NOT VALID).
- `trialflow_append(...)`, SECURITY DEFINER: the only way to append for every role but the
  owner. Under the append lock it checks each event's position (the next one), version and
  previous hash, that recorded time does not go back, that a personal login appends only in
  its own name (`actor = session_user`) with the role and site the study gave it while it is
  active, computes the global chain itself and inserts the events and the command row.
  INSERT on `events` and `commands` is revoked from every role but the owner.
- schema `trialflow_private` holds `credentials`, `sessions` and `attempts` (moved there from
  the default schema when they exist); it is granted to the application role only, so a
  personal login checks no password: it writes no study-level event (users, sites, protocol,
  locks, failed attempts), no signature and no credential change; those go through the
  application's login. For a personal login the function also recomputes each event's hash
  and keeps recorded time within a minute of the database's clock.
Roles and grants: events/roles.py (`trialflow init --roles`).
"""

from __future__ import annotations

from sqlalchemy import Connection

from events.envelope import GENESIS_HASH, link

VERSION = 3
NAME = "global chain, insert guards, append function, private identity schema"

PRIVATE_SCHEMA = "trialflow_private"
APPEND_FUNCTION = "trialflow_append"
APPEND_LOCK_KEY = 7_320_002  # as events.store.APPEND_LOCK_KEY (the function takes it too)

_REFUSE_UPDATE = """CREATE TRIGGER IF NOT EXISTS events_refuse_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE refused'); END"""

_SQLITE_GUARDS = (
    f"""CREATE TRIGGER IF NOT EXISTS events_guard_insert BEFORE INSERT ON events
    BEGIN
      SELECT RAISE(ABORT, 'events is append-only: an event must take the next position')
       WHERE NEW.position IS NOT (SELECT coalesce(max(position), 0) + 1 FROM events);
      SELECT RAISE(ABORT, 'events is append-only: an event must take its stream''s next version')
       WHERE NEW.version IS NOT (SELECT coalesce(max(version), 0) + 1 FROM events
                                 WHERE stream_id = NEW.stream_id);
      SELECT RAISE(ABORT, 'events is append-only: an event must link to its stream''s last hash')
       WHERE NEW.prev_hash IS NOT coalesce((SELECT hash FROM events
                                            WHERE stream_id = NEW.stream_id
                                            ORDER BY version DESC LIMIT 1), '{GENESIS_HASH}');
      SELECT RAISE(ABORT, 'events is append-only: recorded_at may not go back in time')
       WHERE NEW.recorded_at < (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1);
      SELECT RAISE(ABORT, 'events: the payload must be a JSON object')
       WHERE NOT json_valid(NEW.payload) OR json_type(NEW.payload) IS NOT 'object';
      SELECT RAISE(ABORT, 'events: an event needs its global chain hash')
       WHERE length(NEW.chain_hash) IS NOT 64;
    END""",
    """CREATE TRIGGER IF NOT EXISTS commands_guard_insert BEFORE INSERT ON commands
    BEGIN
      SELECT RAISE(ABORT, 'commands is append-only: a command id is recorded once')
       WHERE EXISTS (SELECT 1 FROM commands WHERE command_id = NEW.command_id);
      SELECT RAISE(ABORT, 'commands: a command row needs the events of its command')
       WHERE NOT EXISTS (SELECT 1 FROM events WHERE command_id = NEW.command_id);
    END""",
)

_IDENTITY_TABLES_SQLITE = (
    """CREATE TABLE IF NOT EXISTS credentials (
         name VARCHAR(64) NOT NULL PRIMARY KEY, scheme VARCHAR(40) NOT NULL,
         salt VARCHAR(64) NOT NULL, hash VARCHAR(128) NOT NULL, changed_at DATETIME NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
         token_hash VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL,
         created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS attempts (
         name VARCHAR(64) NOT NULL PRIMARY KEY, failures INTEGER NOT NULL)""",
)

_IDENTITY_TABLES_POSTGRES = {
    "credentials": """(name VARCHAR(64) NOT NULL PRIMARY KEY, scheme VARCHAR(40) NOT NULL,
         salt VARCHAR(64) NOT NULL, hash VARCHAR(128) NOT NULL,
         changed_at TIMESTAMP WITH TIME ZONE NOT NULL)""",
    "sessions": """(token_hash VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL,
         created_at TIMESTAMP WITH TIME ZONE NOT NULL,
         expires_at TIMESTAMP WITH TIME ZONE NOT NULL)""",
    "attempts": "(name VARCHAR(64) NOT NULL PRIMARY KEY, failures INTEGER NOT NULL)",
}


def upgrade(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        _upgrade_sqlite(conn)
    else:
        _upgrade_postgres(conn)


def _backfill(conn: Connection, mark: str) -> None:
    """The global chain of the events stored before this migration, in position order."""
    rows = conn.exec_driver_sql("SELECT position, hash FROM events ORDER BY position").all()
    chain, updates = GENESIS_HASH, []
    for position, digest in rows:
        chain = link(chain, str(digest))
        updates.append((chain, int(position)))
    if updates:
        conn.exec_driver_sql(
            f"UPDATE events SET chain_hash = {mark} WHERE position = {mark}", updates)


def _upgrade_sqlite(conn: Connection) -> None:
    conn.exec_driver_sql(
        "ALTER TABLE events ADD COLUMN chain_hash CHAR(64) NOT NULL DEFAULT ''")
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS events_refuse_update")
    _backfill(conn, "?")
    conn.exec_driver_sql(_REFUSE_UPDATE)
    for statement in (*_SQLITE_GUARDS, *_IDENTITY_TABLES_SQLITE):
        conn.exec_driver_sql(statement)


def _upgrade_postgres(conn: Connection) -> None:
    schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
    conn.exec_driver_sql("ALTER TABLE events ADD COLUMN chain_hash CHAR(64)")
    conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER events_refuse_update_delete")
    _backfill(conn, "%s")
    conn.exec_driver_sql("ALTER TABLE events ENABLE TRIGGER events_refuse_update_delete")
    conn.exec_driver_sql("ALTER TABLE events ALTER COLUMN chain_hash SET NOT NULL")
    conn.exec_driver_sql(
        "ALTER TABLE events ADD CONSTRAINT events_payload_object "
        "CHECK (json_typeof(payload::json) = 'object') NOT VALID")
    conn.exec_driver_sql(
        "ALTER TABLE events ADD CONSTRAINT events_chain_hash CHECK (length(chain_hash) = 64)")
    _private_schema(conn, schema)
    for statement in _postgres_functions(schema):
        conn.exec_driver_sql(statement)
    # No role but the owner inserts directly (earlier versions documented GRANT INSERT).
    grantees = conn.exec_driver_sql(
        "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
        "WHERE table_schema = current_schema() AND table_name IN ('events', 'commands') "
        "AND privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE') "
        "AND grantee <> current_user").scalars().all()
    for grantee in grantees:
        conn.exec_driver_sql(
            f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON events, commands FROM {_ident(grantee)}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"' if name != "PUBLIC" else "PUBLIC"


def _private_schema(conn: Connection, schema: str) -> None:
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {PRIVATE_SCHEMA}")
    conn.exec_driver_sql(f"REVOKE ALL ON SCHEMA {PRIVATE_SCHEMA} FROM PUBLIC")
    for table, columns in _IDENTITY_TABLES_POSTGRES.items():
        exists = conn.exec_driver_sql(
            "SELECT to_regclass(%s)", (f"{_ident(schema)}.{table}",)).scalar()
        if exists is not None:
            conn.exec_driver_sql(f"ALTER TABLE {_ident(schema)}.{table} SET SCHEMA "
                                 f"{PRIVATE_SCHEMA}")
            conn.exec_driver_sql(f"REVOKE ALL ON {PRIVATE_SCHEMA}.{table} FROM PUBLIC")
        else:
            conn.exec_driver_sql(
                f"CREATE TABLE IF NOT EXISTS {PRIVATE_SCHEMA}.{table} {columns}")


def _postgres_functions(schema: str) -> tuple[str, ...]:
    """The functions' DDL. No `%` in it: the driver would read it as a parameter mark."""
    path = f"SET search_path = {_ident(schema)}, pg_temp"
    append = f"""CREATE OR REPLACE FUNCTION {APPEND_FUNCTION}(
        p_positions bigint[], p_streams text[], p_versions integer[], p_types text[],
        p_schemas integer[], p_payloads text[], p_occurred text[], p_recorded_at text,
        p_actor text, p_role text, p_site text, p_reasons text[], p_command_id text,
        p_correlation_id text, p_causations text[], p_prev text[], p_hashes text[],
        p_request_hash text, p_result text) RETURNS void
      LANGUAGE plpgsql SECURITY DEFINER {path} AS $$
      DECLARE
        n integer := coalesce(cardinality(p_positions), 0);
        last_position bigint;
        last_recorded text;
        chain text;
        chains text[] := '{{}}';
        head_version integer;
        head_hash text;
        r record;
        k integer;
        seen text[] := '{{}}';
        seen_versions integer[] := '{{}}';
        seen_hashes text[] := '{{}}';
        user_role text;
        user_site text;
        u record;
      BEGIN
        PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
        IF p_recorded_at !~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}'
                            '[.][0-9]{{6}}Z$' THEN
          RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = 'events: recorded_at is a UTC time YYYY-MM-DDTHH:MM:SS.ffffffZ';
        END IF;
        -- trusted: the owner (this function's definer), a superuser, the application role
        IF session_user <> current_user
           AND NOT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles
                             WHERE rolname = session_user), false)
           AND NOT (CASE WHEN to_regrole('trialflow_app') IS NULL THEN false
                         ELSE pg_has_role(session_user, 'trialflow_app', 'MEMBER') END) THEN
          IF p_actor IS DISTINCT FROM session_user::text THEN
            RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
              MESSAGE = 'identity_mismatch: the database login ' || session_user
                        || ' may append only in its own name, not as ' || coalesce(p_actor, '');
          END IF;
          -- and only with the role and site the study gave that user, while active
          SELECT payload::json->>'role', payload::json->>'site' INTO user_role, user_site
            FROM events WHERE stream_id = 'study' AND type IN ('UserAdded', 'StudyInitialised')
             AND payload::json->>'name' = session_user::text
            ORDER BY version DESC LIMIT 1;
          IF user_role IS NULL OR p_role IS DISTINCT FROM user_role
             OR p_site IS DISTINCT FROM user_site
             OR EXISTS (SELECT 1 FROM events WHERE stream_id = 'study'
                          AND type = 'UserDeactivated'
                          AND payload::json->>'name' = session_user::text) THEN
            RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
              MESSAGE = 'identity_mismatch: the database login ' || session_user
                        || ' is not an active user of this study with role '
                        || coalesce(p_role, 'none') || ' and site ' || coalesce(p_site, 'none');
          END IF;
          IF p_recorded_at > to_char(clock_timestamp() AT TIME ZONE 'UTC'
                                     + interval '60 seconds', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
              MESSAGE = 'events: a personal login records at the database''s time, not later';
          END IF;
          FOR u IN SELECT * FROM unnest(p_positions, p_streams, p_versions, p_types, p_schemas,
                                        p_payloads, p_occurred, p_reasons, p_causations,
                                        p_prev, p_hashes)
                     AS t(position, stream_id, version, type, schema_version, payload,
                          occurred_at, reason, causation_id, prev_hash, hash)
          LOOP
            -- who may do what in the study (users, sites, protocol, locks) and signatures
            -- (whose password only the application can check) are the application's to write
            IF u.stream_id = 'study' OR u.type IN ('SignatureRecorded', 'CredentialsChanged') THEN
              RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
                MESSAGE = 'identity_mismatch: the personal database login ' || session_user
                          || ' may not record ' || coalesce(u.type, 'an event') || ' in '
                          || coalesce(u.stream_id, 'a stream')
                          || '; use the application''s login';
            END IF;
            -- the hash, recomputed (events.envelope.event_hash): an event is what it says
            IF encode(sha256(convert_to(
                 '{{"actor":' || to_json(p_actor)::text
                 || ',"causation_id":' || coalesce(to_json(u.causation_id)::text, 'null')
                 || ',"command_id":' || to_json(p_command_id)::text
                 || ',"correlation_id":' || to_json(p_correlation_id)::text
                 || ',"occurred_at":' || coalesce(to_json(u.occurred_at)::text, 'null')
                 || ',"payload":' || to_json(u.payload)::text
                 || ',"position":' || u.position::text
                 || ',"prev_hash":' || to_json(u.prev_hash)::text
                 || ',"reason":' || coalesce(to_json(u.reason)::text, 'null')
                 || ',"recorded_at":' || to_json(p_recorded_at)::text
                 || ',"role":' || to_json(p_role)::text
                 || ',"schema_version":' || u.schema_version::text
                 || ',"site":' || coalesce(to_json(p_site)::text, 'null')
                 || ',"stream_id":' || to_json(u.stream_id)::text
                 || ',"type":' || to_json(u.type)::text
                 || ',"version":' || u.version::text || '}}', 'UTF8')), 'hex')
               IS DISTINCT FROM u.hash THEN
              RAISE EXCEPTION USING ERRCODE = 'check_violation',
                MESSAGE = 'events: an event''s hash must be the hash of its content';
            END IF;
          END LOOP;
          -- the command row names exactly these events (AppendResult, canonical JSON)
          IF p_result IS DISTINCT FROM
             '{{"command_id":' || to_json(p_command_id)::text
             || ',"positions":[' || array_to_string(p_positions, ',')
             || '],"recorded_at":' || to_json(p_recorded_at)::text || ',"versions":{{'
             || coalesce((SELECT string_agg(to_json(m.s)::text || ':' || m.v::text, ','
                                            ORDER BY m.s COLLATE "C")
                          FROM (SELECT x.s, max(x.v) AS v
                                  FROM unnest(p_streams, p_versions) AS x(s, v)
                                 GROUP BY x.s) m), '')
             || '}}}}' THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
              MESSAGE = 'events: a command row names exactly the events appended with it';
          END IF;
        END IF;
        IF n = 0 THEN
          RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = 'events: an append has at least one event';
        END IF;
        SELECT position, recorded_at, chain_hash INTO last_position, last_recorded, chain
          FROM events ORDER BY position DESC LIMIT 1;
        last_position := coalesce(last_position, 0);
        chain := coalesce(chain, '{GENESIS_HASH}');
        IF p_recorded_at < coalesce(last_recorded, '') THEN
          RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = 'events is append-only: recorded_at may not go back in time';
        END IF;
        IF n = 1 THEN  -- the usual command: one event, no loop
          SELECT version, hash INTO head_version, head_hash FROM events
            WHERE stream_id = p_streams[1] ORDER BY version DESC LIMIT 1;
          IF p_positions[1] IS DISTINCT FROM last_position + 1 THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
              MESSAGE = 'events is append-only: an event must take the next position';
          END IF;
          IF p_versions[1] IS DISTINCT FROM coalesce(head_version, 0) + 1
             OR p_prev[1] IS DISTINCT FROM coalesce(head_hash, '{GENESIS_HASH}') THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
              MESSAGE = 'events is append-only: an event must follow its stream''s last one';
          END IF;
          INSERT INTO events (position, stream_id, version, type, schema_version, payload,
                              occurred_at, recorded_at, actor, role, site, reason, command_id,
                              correlation_id, causation_id, prev_hash, hash, chain_hash)
          VALUES (p_positions[1], p_streams[1], p_versions[1], p_types[1], p_schemas[1],
                  p_payloads[1], p_occurred[1], p_recorded_at, p_actor, p_role, p_site,
                  p_reasons[1], p_command_id, p_correlation_id, p_causations[1], p_prev[1],
                  p_hashes[1], encode(sha256(convert_to(chain || p_hashes[1], 'UTF8')), 'hex'));
          INSERT INTO commands (command_id, request_hash, result, recorded_at)
          VALUES (p_command_id, p_request_hash, p_result, p_recorded_at);
          RETURN;
        END IF;
        -- one pass in order (unnest, not subscripts: a subscript of a text array walks it)
        FOR r IN SELECT * FROM unnest(p_positions, p_streams, p_versions, p_prev, p_hashes)
                   WITH ORDINALITY AS t(position, stream_id, version, prev_hash, hash, i)
        LOOP
          IF r.position IS DISTINCT FROM last_position + r.i THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
              MESSAGE = 'events is append-only: an event must take the next position';
          END IF;
          -- the stream's head: an earlier event of this append, else the table's
          k := array_position(seen, r.stream_id);
          IF k IS NOT NULL THEN
            head_version := seen_versions[k];
            head_hash := seen_hashes[k];
          ELSE
            SELECT version, hash INTO head_version, head_hash FROM events
              WHERE stream_id = r.stream_id ORDER BY version DESC LIMIT 1;
            seen := seen || r.stream_id;
            seen_versions := seen_versions || 0;
            seen_hashes := seen_hashes || ''::text;
            k := cardinality(seen);
          END IF;
          IF r.version IS DISTINCT FROM coalesce(head_version, 0) + 1
             OR r.prev_hash IS DISTINCT FROM coalesce(head_hash, '{GENESIS_HASH}') THEN
            RAISE EXCEPTION USING ERRCODE = 'check_violation',
              MESSAGE = 'events is append-only: an event must follow its stream''s last one';
          END IF;
          seen_versions[k] := r.version;
          seen_hashes[k] := r.hash;
          chain := encode(sha256(convert_to(chain || r.hash, 'UTF8')), 'hex');
          chains := chains || chain;
        END LOOP;
        INSERT INTO events (position, stream_id, version, type, schema_version, payload,
                            occurred_at, recorded_at, actor, role, site, reason, command_id,
                            correlation_id, causation_id, prev_hash, hash, chain_hash)
        SELECT e.position, e.stream_id, e.version, e.type, e.schema_version, e.payload,
               e.occurred_at, p_recorded_at, p_actor, p_role, p_site, e.reason, p_command_id,
               p_correlation_id, e.causation_id, e.prev_hash, e.hash, e.chain_hash
          FROM unnest(p_positions, p_streams, p_versions, p_types, p_schemas, p_payloads,
                      p_occurred, p_reasons, p_causations, p_prev, p_hashes, chains)
               AS e(position, stream_id, version, type, schema_version, payload, occurred_at,
                    reason, causation_id, prev_hash, hash, chain_hash);
        INSERT INTO commands (command_id, request_hash, result, recorded_at)
        VALUES (p_command_id, p_request_hash, p_result, p_recorded_at);
      END $$"""
    revoke = tuple(
        f"REVOKE ALL ON FUNCTION {name} FROM PUBLIC" for name in (
            f"{APPEND_FUNCTION}(bigint[], text[], integer[], text[], integer[], text[], "
            "text[], text, text, text, text, text[], text, text, text[], text[], text[], "
            "text, text)",
        ))
    return (append, *revoke)
