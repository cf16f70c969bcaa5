"""`make bench SCALE=1`: the service on a database of 1,000,000 records over 10,000 users.

Through the rehearsal (nginx in front, each function its own processes), one client at a time,
so that each figure is the request's own latency and not a queue's:
- the upload commit: 200 small uploads (16 KiB, a PDF: no image processing) on the empty
  database, then 200 more after the seed; p50 and p99 of each, and the ratio of the p99s
  (target: unchanged, within 1.25x, the noise of two runs here);
- listing pages of the seeded tables, 200 GETs each: a user's first page, its next page, a
  user's images with their variants, every record (an admin) on the first page and at a depth of
  500,000 records, the failed ones at depth, a recipe's attachments (target: p99 < 10 ms each);
- one maintenance round in-process on the seeded database (the sweeps, expiries, purges and
  erasure resumption of `maintenance.maintain`), which works in bounded batches.

The records are seeded straight in SQL (`localdev.seed.seed_at_scale`, the same seed as the
EXPLAIN test `tests/integration/test_query_plans.py`), in a database of the benchmark's own: an
embedded PostgreSQL, or a new database on MEDIA_DATABASE_URL's server, dropped afterwards.
Written to bench/results/scale.json; every loop is bounded in count, all traffic on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import database, save
from bench.rehearsal import bench_env, form
from common.config import Config
from common.listing import encode_cursor
from common.maintenance import maintain
from common.migrate import migrate
from common.records import MEDIA_COLUMNS, media_record
from common.services import build_services
from common.tokens import ADMIN, READ, WRITE, issue_hs256
from localdev.rehearsal import Rehearsal
from localdev.seed import seed_at_scale

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
RECORDS = 1_000_000
USERS = 10_000
USER = "user-42"  # seeded with processed JPEGs and attachments
UPLOADS = 200
REQUESTS = 200
LISTING_P99_MS = 10.0
COMMIT_P99_RATIO = 1.25


@contextmanager
def own_database(tmp: Path) -> Iterator[str]:
    """A database for this benchmark alone (a million records do not go into anyone's data)."""
    if not os.environ.get("MEDIA_DATABASE_URL"):
        url, stop = database(tmp)
        try:
            yield url
        finally:
            stop()
        return
    server = os.environ["MEDIA_DATABASE_URL"]
    name = "bench_scale_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


class Client:
    """One keep-alive connection to the ingress, one request at a time."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)

    def timed(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> float:
        started = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        assert response.status in (200, 201), (method, path, response.status, data[:300])
        return elapsed

    def close(self) -> None:
        self.conn.close()


def latencies(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
    }


def upload_commits(base: str, token: str) -> dict[str, float]:
    """`UPLOADS` distinct 16 KiB PDFs, one after another: the request's time is mostly the commit
    (the digest lock, the record, the usage trigger, the outbox row, the fsyncs)."""
    client = Client(base)
    samples = []
    try:
        for _ in range(UPLOADS):
            body, form_type = form("s.pdf", "application/pdf", b"%PDF-1.4\n" + os.urandom(16 * 1024))
            headers = {"Authorization": f"Bearer {token}", "Content-Type": form_type}
            samples.append(client.timed("POST", "/media", headers, body))
    finally:
        client.close()
    return latencies(samples)


def record_at(url: str, where: str, offset: int) -> Any:
    """The record `offset` places into the newest-first order of `where` (for a deep cursor)."""
    with psycopg.connect(url, client_encoding="utf8", row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute(
            f"SELECT {MEDIA_COLUMNS} FROM media WHERE {where}"  # noqa: S608 - constants only
            " ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            (offset,),
        ).fetchone()
    assert row is not None, (where, offset)
    return media_record(row)


def listing_paths(url: str, base: str, user_auth: dict[str, str]) -> dict[str, str]:
    client = http.client.HTTPConnection(urlsplit(base).hostname or "", urlsplit(base).port, timeout=30)
    client.request("GET", "/media?limit=20", headers=user_auth)
    first = json.loads(client.getresponse().read())
    client.close()
    assert first["next_cursor"], first
    with psycopg.connect(url, client_encoding="utf8") as conn:
        ref = conn.execute(
            "SELECT a.ref FROM attachments a JOIN media m ON m.id = a.media_id"
            " GROUP BY a.ref ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    assert ref is not None
    deep = encode_cursor(record_at(url, "true", RECORDS // 2))
    deep_failed = encode_cursor(record_at(url, "status = 'failed'", 5000))
    return {
        "user, first page": "/media?limit=20",
        "user, next page": f"/media?limit=20&cursor={first['next_cursor']}",
        "user, images with variants": "/media?limit=20&content_type=image/&include=variants",
        "admin, every record, first page": "/media?limit=20",
        "admin, every record, at 500,000": f"/media?limit=20&cursor={deep}",
        "admin, failed ones, at 5,000": f"/media?limit=20&status=failed&cursor={deep_failed}",
        "a recipe's attachments": f"/media?attached_to=recipe:{ref[0]}&include=variants",
    }


def listings(base: str, paths: dict[str, str], user_auth: dict[str, str], admin_auth: dict[str, str]) -> Any:
    client = Client(base)
    found = {}
    try:
        for label, path in paths.items():
            auth = user_auth if label.startswith("user") else admin_auth
            client.timed("GET", path, auth)  # warm
            found[label] = {
                "path": path.split("&cursor=")[0],
                **latencies([client.timed("GET", path, auth) for _ in range(REQUESTS)]),
            }
    finally:
        client.close()
    return found


def main() -> int:
    secret = "scale-" + uuid.uuid4().hex
    with (
        tempfile.TemporaryDirectory(prefix="mscale", dir="/tmp") as tmp_name,
        own_database(Path(tmp_name)) as url,
    ):
        tmp = Path(tmp_name)
        migrate(url)
        env = {
            **bench_env(url, secret, "scale-presign-" + uuid.uuid4().hex),
            "MEDIA_SCRUB_MIB_PER_SECOND": "0",
        }
        uploader = issue_hs256(secret, "bench-commit", [READ, WRITE], ttl_seconds=7200)
        rehearsal = Rehearsal(data_dir=tmp / "data", env=env)
        try:
            rehearsal.start()
            empty = upload_commits(rehearsal.base, uploader)
        finally:
            rehearsal.stop()
        started = time.perf_counter()
        seed_at_scale(url, RECORDS, USERS)
        with psycopg.connect(url, autocommit=True) as conn:  # the seed's change events: as if relayed
            conn.execute("UPDATE outbox SET sent_at = clock_timestamp() WHERE sent_at IS NULL")
            conn.execute("VACUUM ANALYZE outbox")
        seeded = round(time.perf_counter() - started, 1)
        config = Config.from_env({**env, "MEDIA_DATA_DIR": str(tmp / "data")})
        services = build_services(config, background=False)
        try:
            started = time.perf_counter()
            maintain(config, services.store, services.repo)
            maintenance = round(time.perf_counter() - started, 2)
        finally:
            services.repo.close()
        rehearsal = Rehearsal(data_dir=tmp / "data", env=env)
        try:
            rehearsal.start()
            user_auth = {"Authorization": "Bearer " + issue_hs256(secret, USER, [READ], ttl_seconds=7200)}
            admin_auth = {
                "Authorization": "Bearer " + issue_hs256(secret, "root", [READ, ADMIN], ttl_seconds=7200)
            }
            pages = listings(
                rehearsal.base, listing_paths(url, rehearsal.base, user_auth), user_auth, admin_auth
            )
            seeded_commits = upload_commits(rehearsal.base, uploader)
        finally:
            rehearsal.stop()
    ratio = round(seeded_commits["p99_ms"] / empty["p99_ms"], 2) if empty["p99_ms"] else float("nan")
    result = {
        "records": RECORDS,
        "users": USERS,
        "seed_seconds": seeded,
        "database": "embedded"
        if not os.environ.get("MEDIA_DATABASE_URL")
        else conninfo_to_dict(url).get("host"),
        "upload_commit": {"empty": empty, "seeded": seeded_commits, "p99_ratio": ratio},
        "listings": pages,
        "maintenance_round_seconds": maintenance,
        "targets": {
            "listing_p99_ms": f"< {LISTING_P99_MS}",
            "upload_commit_p99_ratio": f"<= {COMMIT_P99_RATIO}",
        },
        "met": {
            "listings": all(p["p99_ms"] < LISTING_P99_MS for p in pages.values()),
            "upload_commit": ratio <= COMMIT_P99_RATIO,
        },
    }
    report(result)
    save(RESULTS, result)
    return 0


def report(r: dict[str, Any]) -> None:
    print(f"\nAt scale: {r['records']:,} records over {r['users']:,} users (seeded in {r['seed_seconds']} s)")
    print("  one client through the ingress, 200 requests each: p50 ms, p99 ms, target, met")
    for label, p in r["listings"].items():
        mark = "pass" if p["p99_ms"] < LISTING_P99_MS else "FAIL"
        print(f"  {label:<34} {p['p50_ms']:>7} {p['p99_ms']:>7}   < {LISTING_P99_MS} ms  {mark}")
    c = r["upload_commit"]
    mark = "pass" if r["met"]["upload_commit"] else "FAIL"
    print(
        f"  upload commit (16 KiB), empty      {c['empty']['p50_ms']:>7} {c['empty']['p99_ms']:>7}"
        f"\n  upload commit (16 KiB), 1M records {c['seeded']['p50_ms']:>7} {c['seeded']['p99_ms']:>7}"
        f"   p99 ratio {c['p99_ratio']} (<= {COMMIT_P99_RATIO})  {mark}"
    )
    print(f"  one maintenance round on the seeded database: {r['maintenance_round_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
