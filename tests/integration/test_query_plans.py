"""Every query the request paths send, EXPLAINed against a table of 1,000,000 records spread over
10,000 users (seeded straight in SQL, triggers off, then ANALYZEd): index scans only, never a
sequential scan of a table that grows with the data.

The queries are the ones the code really sends: the connection's `execute` is wrapped while the
API is exercised (listings filtered and not, at depth with a cursor, by attachment, with
thumbnails; a record, its content, a patch, an attachment, usage, the change feed), and each one is
explained with its own parameters."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from common import backfill
from common.database import DeadlineConnection
from common.migrate import migrate
from common.services import build_services
from common.tokens import ADMIN
from localdev.seed import seed_at_scale
from tests import support
from tests.factories import bearer, token

pytestmark = pytest.mark.slow  # a minute: the seed and the ANALYZE

RECORDS = 1_000_000
USERS = 10_000
GROWING = {
    "media",
    "attachments",
    "outbox",
    "image_jobs",
    "image_variants",
    "usage",
    "quota_holds",
    "erasures",
}
USER = "user-42"


@pytest.fixture(scope="module")
def big_database(pg: support.RunningPostgres) -> Iterator[str]:
    name = "plans_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(pg.url, dbname=name)
    migrate(url)
    started = time.monotonic()
    seed_at_scale(url, RECORDS, USERS)
    print(f"\nseeded {RECORDS} records over {USERS} users in {time.monotonic() - started:.1f} s")
    yield url
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(node type, relation) of every scan in an EXPLAIN (FORMAT JSON) plan."""
    if "Relation Name" in plan:
        yield plan["Node Type"], plan["Relation Name"]
    for child in plan.get("Plans", []):
        yield from scans(child)


def test_every_request_path_query_uses_an_index_on_a_million_records(
    big_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = build_services(
        support.make_config(tmp_path / "data", big_database, MEDIA_DB_TIMEOUT_SECONDS="10"), background=False
    )
    sent: list[tuple[Any, Any]] = []
    real = DeadlineConnection.execute

    def recording(self: DeadlineConnection, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.append((query, params))
        return real(self, query, params, **kwargs)

    try:
        api = support.api_client(services)
        user, admin = bearer(token(USER)), bearer(token("root", scopes=(ADMIN,)))
        first = api.get("/media?limit=20", headers=user).get_json()
        with psycopg.connect(big_database, client_encoding="utf8") as conn:
            row = conn.execute(
                "SELECT m.id, a.ref FROM media m JOIN attachments a ON a.media_id = m.id"
                " WHERE m.owner = %s LIMIT 1",
                (USER,),
            ).fetchone()
        assert row is not None and first["next_cursor"]
        media_id, ref = str(row[0]), row[1]
        monkeypatch.setattr(DeadlineConnection, "execute", recording)
        calls = [
            api.get("/media?limit=20", headers=user),
            api.get(f"/media?limit=20&cursor={first['next_cursor']}", headers=user),
            api.get("/media?limit=100&content_type=image/&status=ready&include=variants", headers=user),
            api.get("/media?limit=20&status=failed", headers=admin),
            api.get("/media?limit=20&content_type=application/", headers=admin),
            api.get(f"/media?attached_to=recipe:{ref}&include=variants", headers=admin),
            api.get(f"/media/{media_id}", headers=user),
            api.get("/users/me/usage", headers=user),
            api.get("/media/changes?limit=100", headers=admin),
            api.patch(
                f"/media/{media_id}",
                json={"alt": "soup"},
                headers=user,
                content_type="application/merge-patch+json",
            ),
            api.put(f"/media/{media_id}/attachments/recipe/plans-{ref}", headers=user),
            api.delete(f"/media/{media_id}/attachments/recipe/plans-{ref}", headers=user),
        ]
        assert [c.status_code for c in calls] == [200] * 10 + [201, 204], (
            ref,
            [c.get_data()[:300] for c in calls if c.status_code >= 400],
        )
        # The maintenance's processing backfill walks the table too, a bounded batch a round.
        assert backfill.backfill(services.repo, recipe=999, batch=50) > 0
    finally:
        monkeypatch.setattr(DeadlineConnection, "execute", real)
        services.repo.close()

    seen = 0
    with psycopg.connect(big_database, client_encoding="utf8") as conn:
        cursor = psycopg.ClientCursor(conn)
        for query, params in sent:
            text = query.decode() if isinstance(query, bytes) else str(query)
            words = text.lower().split()
            if not words or words[0] not in ("select", "update", "delete", "insert", "with"):
                continue
            if "pg_advisory_xact_lock" in text or "rate_limits" in text or text.strip() == "SELECT 1":
                continue
            literal = cursor.mogrify(text, params)
            conn.execute("SAVEPOINT explained")
            explained = conn.execute(f"EXPLAIN (FORMAT JSON) {literal}").fetchone()
            assert explained is not None
            plan = explained[0]
            conn.execute("ROLLBACK TO SAVEPOINT explained")
            doc = plan if isinstance(plan, list) else json.loads(plan)
            sequential = [rel for node, rel in scans(doc[0]["Plan"]) if node == "Seq Scan" and rel in GROWING]
            assert sequential == [], (
                f"a sequential scan of {sequential}:\n{literal}\n{json.dumps(doc)[:1500]}"
            )
            seen += 1
    assert seen >= 15, sent  # the wrapper really saw the request paths' queries
