"""PostgreSQL frozen, not down: its processes stopped (`docker pause`, or SIGSTOP of the embedded
server), every connection left open and silent. Nothing resets, nothing answers. Requests must
still end, fast, with 503, lose nothing, and the same process must recover by itself."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from werkzeug.test import EnvironBuilder, TestResponse, run_wsgi_app
from werkzeug.wrappers import Request

from common.migrate import migrate
from common.services import Services, build_services
from tests import support
from tests.factories import bearer, png, token, upload_body

TIMEOUT = 1.0  # MEDIA_DB_TIMEOUT_SECONDS in these tests
BOUND = 2 * TIMEOUT + 1  # what the service promises while the database is frozen
POOL = 4


@pytest.fixture
def own_postgres() -> Iterator[support.RunningPostgres]:
    with support.postgres() as running:
        migrate(running.url)
        try:
            yield running
        finally:
            running.thaw()  # whatever a failed assertion left behind


@pytest.fixture
def frozen_services(own_postgres: support.RunningPostgres, tmp_path: Path) -> Iterator[Services]:
    config = support.make_config(
        tmp_path,
        own_postgres.url,
        MEDIA_DB_TIMEOUT_SECONDS=str(TIMEOUT),
        MEDIA_DB_POOL_MAX=str(POOL),
    )
    services = build_services(config, background=False)
    yield services
    services.repo.close()


def timed(call: Callable[[], TestResponse]) -> tuple[float, TestResponse]:
    started = time.monotonic()
    resp = call()
    return time.monotonic() - started, resp


def assert_unavailable(seconds: float, resp: TestResponse, what: str) -> None:
    assert resp.status_code == 503, f"{what}: {resp.status_code} {resp.get_data(as_text=True)[:300]}"
    assert resp.headers["Content-Type"] == "application/problem+json", what
    assert int(resp.headers["Retry-After"]) >= 1, what
    assert json.loads(resp.get_data())["status"] == 503
    assert seconds < BOUND, f"{what} took {seconds:.2f} s while the database was frozen"


class PausingBody(io.RawIOBase):
    """A request body that sends `head`, then waits for `go` before it sends `tail`."""

    def __init__(self, head: bytes, tail: bytes, go: threading.Event) -> None:
        self._parts = [head, tail]
        self._go = go
        self.paused = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._parts:
            return 0
        if len(self._parts) == 1:
            self.paused.set()
            assert self._go.wait(30), "the test never let the body go on"
        part = self._parts[0]
        n = min(len(buffer), len(part))
        buffer[:n] = part[:n]
        self._parts[0] = part[n:]
        if not self._parts[0]:
            self._parts.pop(0)
        return n


def live_threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def media_connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'media'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def blobs(services: Services) -> list[Path]:
    return [p for p in (services.config.cas_root / "sha256").rglob("*") if p.is_file()]


def test_a_frozen_database_gives_fast_503s_loses_nothing_and_recovers_without_a_restart(
    own_postgres: support.RunningPostgres, frozen_services: Services
) -> None:
    services = frozen_services
    api = support.api_client(services)
    tok = token()
    auth = bearer(tok)
    body, ctype = upload_body(png())
    created = api.post("/media", data=body, content_type=ctype, headers=auth)
    assert created.status_code == 201, created.get_data(as_text=True)
    media_id = created.get_json()["id"]
    # Warm the pool to several connections, as a busy process has.
    with ThreadPoolExecutor(POOL) as pool:
        assert all(
            r.status_code == 200
            for r in pool.map(lambda _: support.api_client(services).get("/media", headers=auth), range(8))
        )
    threads_before = live_threads()
    blobs_before = blobs(services)

    # An upload in flight: its first bytes are on the volume when the database freezes.
    big = png(600, 600)
    upload, upload_type = upload_body(big)
    go = threading.Event()
    slow = PausingBody(upload[: len(upload) // 2], upload[len(upload) // 2 :], go)
    in_flight: dict[str, Any] = {}

    # By hand: the test client would seek in the body to find its length, or encode a form of its own.
    environ = EnvironBuilder(method="POST", path="/media", headers=list(auth.items())).get_environ()
    environ.update({"wsgi.input": slow, "CONTENT_TYPE": upload_type, "CONTENT_LENGTH": str(len(upload))})

    def send_upload() -> None:
        def call() -> TestResponse:
            body, status, headers = run_wsgi_app(api.application, environ, buffered=True)
            return TestResponse(body, status, headers, request=Request(environ))

        in_flight["result"] = timed(call)

    uploader = threading.Thread(target=send_upload)
    uploader.start()
    assert slow.paused.wait(10), "the upload never started"

    # Every wait in the test is bounded too: without the deadlines, it must fail, not hang.
    pool = ThreadPoolExecutor(16)
    own_postgres.freeze()
    try:
        go.set()
        requests: dict[str, Callable[[], TestResponse]] = {
            "metadata": lambda: support.api_client(services).get(f"/media/{media_id}", headers=auth),
            "content": lambda: support.api_client(services).get(f"/media/{media_id}/content", headers=auth),
            "listing": lambda: support.api_client(services).get("/media", headers=auth),
            "upload": lambda: support.api_client(services).post(
                "/media", data=upload_body(png())[0], content_type=ctype, headers=auth
            ),
            "presign": lambda: support.api_client(services).post(
                "/media/uploads",
                json={"filename": "a.png", "content_type": "image/png", "size": 100},
                headers=auth,
            ),
            "delete": lambda: support.api_client(services).delete(f"/media/{media_id}", headers=auth),
        }
        futures = {
            f"{name} #{i}": pool.submit(timed, call) for name, call in requests.items() for i in range(2)
        }
        ready = pool.submit(timed, lambda: support.api_client(services).get("/health/ready"))
        live = pool.submit(timed, lambda: support.api_client(services).get("/health/live"))
        for what, future in futures.items():
            assert_unavailable(*future.result(timeout=BOUND + 5), what)
        ready_seconds, ready_resp = ready.result(timeout=BOUND + 5)
        assert ready_resp.status_code == 503
        assert ready_resp.get_json()["checks"]["database"]["status"] == "failed"
        assert ready_seconds < TIMEOUT + 0.5, f"readiness took {ready_seconds:.2f} s"
        live_seconds, live_resp = live.result(timeout=BOUND + 5)
        assert live_resp.status_code == 200 and live_seconds < 0.5
        uploader.join(BOUND + 5)
        assert "result" in in_flight, "the upload in flight got no answer"
        upload_seconds, upload_resp = in_flight["result"]
        assert_unavailable(upload_seconds, upload_resp, "the upload in flight")
        assert list((services.config.cas_root / "tmp").iterdir()) == []
        assert blobs(services) == blobs_before  # no blob without a record
    finally:
        own_postgres.thaw()
        go.set()
        pool.shutdown(wait=True)
        uploader.join(30)

    started = time.monotonic()
    while True:
        meta = api.get(f"/media/{media_id}", headers=auth)
        probe = api.get("/health/ready")
        if meta.status_code == 200 and probe.status_code == 200:
            break
        assert time.monotonic() - started < 10, f"not recovered after 10 s: {meta.status_code}"
        time.sleep(0.1)
    assert meta.get_json()["id"] == media_id  # the delete during the freeze did not happen
    again = api.post("/media", data=upload, content_type=upload_type, headers=auth)
    assert again.status_code == 201, again.get_data(as_text=True)

    # Nothing leaked: no thread left waiting, no connection beyond the pool's size.
    deadline = time.monotonic() + 10
    while live_threads() - threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_threads() - threads_before == set()
    while media_connections(own_postgres.url) > POOL and time.monotonic() < deadline:
        time.sleep(0.1)
    assert media_connections(own_postgres.url) <= POOL


def test_pool_exhaustion_on_a_slow_database_is_503_after_the_checkout_timeout(
    own_postgres: support.RunningPostgres, tmp_path: Path
) -> None:
    config = support.make_config(
        tmp_path, own_postgres.url, MEDIA_DB_TIMEOUT_SECONDS=str(TIMEOUT), MEDIA_DB_POOL_MAX="1"
    )
    services = build_services(config, background=False)
    try:
        auth = bearer(token())
        body, ctype = upload_body(png())
        media_id = support.api_client(services).post("/media", data=body, content_type=ctype, headers=auth)
        media_id = media_id.get_json()["id"]
        # Slow, not frozen: every query on `media` waits behind this lock until statement_timeout.
        with psycopg.connect(own_postgres.url, autocommit=True) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE media IN ACCESS EXCLUSIVE MODE")
            pool = ThreadPoolExecutor(12)
            try:
                futures = [
                    pool.submit(
                        timed, lambda: support.api_client(services).get(f"/media/{media_id}", headers=auth)
                    )
                    for _ in range(12)
                ]
                results = [f.result(timeout=BOUND + 5) for f in futures]
            finally:
                blocker.execute("ROLLBACK")  # releases whatever still waits, pass or fail
                pool.shutdown(wait=True)
        for seconds, resp in results:
            assert_unavailable(seconds, resp, "a request beyond the pool")
        # One connection, at most 4 waiting for it: the rest are refused at once, not queued.
        assert sum(seconds < 0.5 for seconds, _ in results) >= 12 - 1 - 4
        # Requests that waited the whole checkout opened the circuit breaker: refused at once for
        # MEDIA_DB_TIMEOUT_SECONDS, then one tries, and its success closes it.
        started = time.monotonic()
        while support.api_client(services).get(f"/media/{media_id}", headers=auth).status_code != 200:
            assert time.monotonic() - started < 3 * TIMEOUT, "the breaker did not close again"
            time.sleep(0.05)
    finally:
        services.repo.close()
