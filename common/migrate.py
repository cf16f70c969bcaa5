"""Apply the numbered SQL migrations once each, in order (`make migrate`; also run by `make run`).

Idempotent and safe to run from several processes at once: a session advisory lock serialises
runners, and each migration commits together with its row in `schema_migrations`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources

import psycopg

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
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10, client_encoding="utf8") as conn:
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


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = Config.from_env(os.environ)
    applied = migrate(config.require_database_url())
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
