"""PostgreSQL roles: the owner migrates, the application appends through the append function,
personal logins append in their own name only (`trialflow init --roles`, docs/audit.md).

- **owner**: the login that runs `trialflow init` (migrations). It owns every table, function
  and trigger; no other role can alter them, disable a trigger or insert into the log directly.
  Use it for migrations only.
- **trialflow_app** (a group role, NOLOGIN): the application's login is made a member. It reads
  the log, appends only through `trialflow_append`, may append in any user's name (it proves
  users by their passwords and sessions, which only it can read in `trialflow_private`), and
  maintains the read models.
- **trialflow_person** (a group role, NOLOGIN): each person's login, named as their trialflow
  user, is made a member. It reads the log and the read models, appends through
  `trialflow_append` in its own name, role and site only (the function checks them against
  `session_user` and the study's users), never in the `study` stream and never a signature or
  a credential change; it reads nothing of the identity tables.
"""

from __future__ import annotations

from sqlalchemy import Engine

from events.migrations.v003_guards import APPEND_FUNCTION, PRIVATE_SCHEMA

APP_ROLE = "trialflow_app"
PERSON_ROLE = "trialflow_person"
LOG_TABLES = "events, commands, schema_migrations"
_APPEND_SIGNATURE = (
    f"{APPEND_FUNCTION}(bigint[], text[], integer[], text[], integer[], text[], text[], text, "
    "text, text, text, text[], text, text, text[], text[], text[], text, text)")


def role_statements() -> list[str]:
    """The SQL `trialflow init --roles` runs (as the owner, after the migrations), in order;
    `trialflow init --print-roles` prints it for a DBA. Idempotent."""
    return [
        f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
    CREATE ROLE {APP_ROLE} NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PERSON_ROLE}') THEN
    CREATE ROLE {PERSON_ROLE} NOLOGIN;
  END IF;
END $$""",
        # roles are the cluster's, not the database's: only logins granted CONNECT on this
        # database (one by one, never the group roles) reach it, so another study's logins
        # on the same server do not
        """DO $$ BEGIN
  EXECUTE 'REVOKE CONNECT ON DATABASE ' || quote_ident(current_database()) || ' FROM PUBLIC';
  EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO '
          || quote_ident(current_user);
END $$""",
        f"REVOKE ALL ON {LOG_TABLES} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}, {PERSON_ROLE}",
        # read everything in the default schema: the log and the read models
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {APP_ROLE}, {PERSON_ROLE}",
        # the application maintains the read models, never the log
        f"GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {LOG_TABLES} "
        f"FROM {APP_ROLE}, {PERSON_ROLE}",
        # appends: one door, for both
        f"GRANT EXECUTE ON FUNCTION {_APPEND_SIGNATURE} TO {APP_ROLE}, {PERSON_ROLE}",
        # credentials, sessions, attempts: the application only
        f"GRANT USAGE ON SCHEMA {PRIVATE_SCHEMA} TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {PRIVATE_SCHEMA} "
        f"TO {APP_ROLE}",
        # read models the owner creates later (a new projection) are granted alike
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES "
        f"TO {APP_ROLE}, {PERSON_ROLE}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, UPDATE, DELETE ON TABLES "
        f"TO {APP_ROLE}",
    ]


LOGIN_EXAMPLES = f"""-- Then the application's login, and each person's (named as their user;
-- authenticated by password, certificate or SSO as pg_hba.conf says), each granted CONNECT
-- on this study's database only:
CREATE ROLE trialflow LOGIN PASSWORD '...' IN ROLE {APP_ROLE};
CREATE ROLE cora LOGIN IN ROLE {PERSON_ROLE};
GRANT CONNECT ON DATABASE trial TO trialflow, cora;
"""


def roles_script() -> str:
    return "".join(statement + ";\n" for statement in role_statements()) + LOGIN_EXAMPLES


def create_roles(engine: Engine) -> None:
    """Run `role_statements` in one transaction (needs CREATEROLE for the group roles)."""
    from events.engine import WRITE
    from events.translate import translated

    with translated(), engine.connect().execution_options(**WRITE) as conn, conn.begin():
        for statement in role_statements():
            conn.exec_driver_sql(statement)
