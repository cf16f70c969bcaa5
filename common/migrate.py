"""Apply the numbered SQL migrations once each, in order (`make migrate`; also run by `make run`).

Idempotent and safe to run from several processes at once: a session advisory lock serialises
runners, and each migration commits together with its row in `schema_migrations`. Run it against
PostgreSQL itself, not through a transaction pooler (the lock is a session's).

With `MEDIA_DB_POOLING=transaction` it also gives the role its statement timeout
(`ALTER ROLE CURRENT_USER SET statement_timeout`, from MEDIA_DB_TIMEOUT_SECONDS): through PgBouncer
the functions cannot send it as a startup option, so their sessions take it from the role.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from common.config import Config

log = logging.getLogger("media.migrate")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6D656469615F6D67  # "media_mg"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("common.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers: {versions}")
    return found


def migrate(conninfo: str) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    applied_now: list[int] = []
    with psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=10,
        client_encoding="utf8",
        options="-c statement_timeout=0",  # a migration takes as long as it takes, whatever the role says
    ) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for mig in available():
                if mig.version in done:
                    continue
                with conn.transaction():
                    conn.execute(mig.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
                log.info("applied migration %04d_%s", mig.version, mig.name)
                applied_now.append(mig.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def set_role_statement_timeout(conninfo: str, seconds: float) -> None:
    """The connecting role's sessions get this statement timeout by default (a role may set its own)."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE CURRENT_USER SET statement_timeout = {}").format(
                sql.Literal(f"{round(seconds * 1000)}ms")
            )
        )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = Config.from_env(os.environ)
    url = config.require_database_url()
    applied = migrate(url)
    print(f"migrations applied: {applied or 'none (up to date)'}")
    if config.db_pooling == "transaction":
        set_role_statement_timeout(url, config.db_timeout_seconds)
        print(f"statement_timeout of the role: {config.db_timeout_seconds} s (MEDIA_DB_POOLING=transaction)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
