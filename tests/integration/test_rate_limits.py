"""Rate limits in PostgreSQL: one atomic decision per request, shared by every process."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from common.config import Config
from common.problems import TooManyRequests
from common.ratelimit import BYTES_STEP
from common.services import Services, build_services
from tests import support
from tests.factories import bearer, png, token, upload_body


def test_the_limit_holds_across_processes_under_concurrency(config_for: Callable[..., Config]) -> None:
    """Two services, two pools (as two processes would have): ten allowed out of forty, not more."""
    config = config_for(MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="10")
    first, second = build_services(config, background=False), build_services(config, background=False)
    who = f"racer-{uuid.uuid4().hex}"

    def attempt(n: int) -> bool:
        svc = first if n % 2 else second
        try:
            svc.limiter.take(svc.limiter.uploads, who)
            return True
        except TooManyRequests:
            return False

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(attempt, range(40)))
    finally:
        first.repo.close()
        second.repo.close()
    assert outcomes.count(True) == 10


def test_over_the_upload_limit_is_429_with_retry_after_and_ratelimit_headers(
    config_for: Callable[..., Config], tmp_path: Path
) -> None:
    svc = build_services(config_for(MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="2"), background=False)
    try:
        api = support.api_client(svc)
        auth = bearer(token())
        statuses = []
        for _ in range(3):
            body, ctype = upload_body(png())
            resp = api.post("/media", data=body, content_type=ctype, headers=auth)
            statuses.append(resp.status_code)
        assert statuses == [201, 201, 429]
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.get_json()["type"].endswith("/too-many-requests")
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["RateLimit-Policy"] == '"uploads";q=2;w=60'
        assert resp.headers["RateLimit"].startswith('"uploads";r=0;')
        presigned = api.post(
            "/media/uploads", json={"filename": "a.png", "content_type": "image/png", "size": 9}, headers=auth
        )
        assert presigned.status_code == 429  # a presigned URL is an upload too
        assert list((svc.config.cas_root / "tmp").iterdir()) == []
    finally:
        svc.repo.close()


def test_the_per_ip_limit_covers_every_rate_limited_operation(config_for: Callable[..., Config]) -> None:
    svc = build_services(config_for(MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP="3"), background=False)
    try:
        api = support.api_client(svc)
        ip = {"REMOTE_ADDR": f"198.51.100.{uuid.uuid4().int % 250}"}
        body, ctype = upload_body(png())
        created = api.post("/media", data=body, content_type=ctype, headers=bearer(token()), environ_base=ip)
        assert created.status_code == 201
        assert created.headers["RateLimit"].startswith('"requests";r=2;')  # on answers that pass too
        deleted = api.delete(created.get_json()["links"]["self"], headers=bearer(token()), environ_base=ip)
        assert deleted.status_code == 404  # someone else's: but it counted
        other_user = api.post(
            "/media", data=body, content_type=ctype, headers=bearer(token()), environ_base=ip
        )
        assert other_user.status_code == 201
        limited = api.post(
            "/media/uploads",
            json={"filename": "a.png", "content_type": "image/png", "size": 9},
            headers=bearer(token()),
            environ_base=ip,
        )
        assert limited.status_code == 429 and limited.headers["RateLimit-Policy"] == '"requests";q=3;w=60'
        assert api.get("/media", headers=bearer(token()), environ_base=ip).status_code == 200  # reads: not
    finally:
        svc.repo.close()


def test_the_byte_budget_stops_an_upload_while_it_streams(config_for: Callable[..., Config]) -> None:
    svc = build_services(
        config_for(
            MEDIA_RATE_LIMIT_UPLOAD_BYTES_PER_HOUR=str(BYTES_STEP),
            MEDIA_MAX_UPLOAD_BYTES=str(4 * BYTES_STEP),
        ),
        background=False,
    )
    try:
        api = support.api_client(svc)
        auth = bearer(token())
        big = png(2400, 2400)  # random pixels: about 16 MiB, two steps of the budget
        assert len(big) > 2 * BYTES_STEP
        body, ctype = upload_body(big)
        resp = api.post("/media", data=body, content_type=ctype, headers=auth)
        assert resp.status_code == 429, resp.get_data(as_text=True)[:300]
        assert list((svc.config.cas_root / "tmp").iterdir()) == []
        assert not [p for p in (svc.config.cas_root / "sha256").rglob("*") if p.is_file()]
        assert api.get("/media", headers=auth).get_json()["items"] == []
    finally:
        svc.repo.close()


def test_keys_back_at_full_quota_are_forgotten(services: Services) -> None:
    key = f"requests:{uuid.uuid4().hex}"
    allowed, ahead = services.repo.rate_take(key, 0.05, 60)
    assert allowed and 0 < ahead <= 0.05
    time.sleep(0.1)  # its TAT passes: at full quota again
    assert services.repo.purge_rate_limits() >= 1
    allowed, ahead = services.repo.rate_take(key, 0, 60)
    assert allowed and ahead == 0.0  # as new


def test_the_limiter_state_is_written_without_wal(pg: support.RunningPostgres) -> None:
    """Migration 0009: rate_limits is UNLOGGED (a crash only resets the limits), so a charge
    during an upload does not wait for a WAL flush."""
    with psycopg.connect(pg.url, client_encoding="utf8") as conn:
        row = conn.execute("SELECT relpersistence FROM pg_class WHERE relname = 'rate_limits'").fetchone()
    assert row == ("u",)
