"""Presigned uploads, signed download links and CORS through the router, against real
PostgreSQL and a real CAS."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.test import Client, TestResponse

from common import presigned
from common.config import Config
from common.maintenance import maintain, upload_label
from common.problems import Conflict
from common.records import NewPending
from common.services import Services, build_services
from common.signing import UploadGrant, issue_upload_token, sign_download
from common.tokens import READ, WRITE, Principal
from tests import support
from tests.factories import PUBLIC_BASE, bearer, elf, png, token, upload_body
from tests.support import plant_temp, stored_blobs, temp_leftovers

ORIGIN = "https://recipes.example"


@pytest.fixture
def cors_services(config_for: Callable[..., Config]) -> Any:
    svc = build_services(config_for(MEDIA_CORS_ORIGINS=ORIGIN), background=False)
    yield svc
    svc.repo.close()


@pytest.fixture
def capi(cors_services: Services) -> Client:
    return support.api_client(cors_services)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def presign(api: Client, tok: str, data: bytes, **extra: Any) -> TestResponse:
    body = {"filename": "soup.png", "content_type": "image/png", "size": len(data), **extra}
    return api.post("/media/uploads", json=body, headers=bearer(tok))


def put(api: Client, url: str, data: bytes, content_type: str = "image/png") -> TestResponse:
    return api.put(path_of(url), data=data, headers={"Content-Type": content_type})


def blobs(services: Services) -> list[str]:
    return stored_blobs(services.store)


def test_the_whole_presigned_flow(api: Client, services: Services) -> None:
    data = png()
    tok = token()
    resp = presign(api, tok, data, sha256=hashlib.sha256(data).hexdigest())
    assert resp.status_code == 201, resp.get_data(as_text=True)
    grant = resp.get_json()
    assert set(grant) == {"media_id", "method", "url", "fields", "headers", "expires_at"}
    assert grant["url"].startswith(f"{PUBLIC_BASE}/media/uploads/")
    assert grant["headers"] == {"Content-Type": "image/png"}
    record = api.get(f"/media/{grant['media_id']}", headers=bearer(tok)).get_json()
    assert record["status"] == "pending" and record["sha256"] is None
    assert api.get(f"/media/{grant['media_id']}/content", headers=bearer(tok)).status_code == 404

    done = put(api, grant["url"], data)
    assert done.status_code == 200, done.get_data(as_text=True)
    assert done.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    ready = api.get(f"/media/{grant['media_id']}", headers=bearer(tok)).get_json()
    assert ready["status"] == "ready" and ready["sha256"] == hashlib.sha256(data).hexdigest()
    content = api.get(path_of(ready["links"]["content"]))  # signed link: no bearer
    assert content.status_code == 200 and content.get_data() == data
    assert len(blobs(services)) == 1
    assert put(api, grant["url"], data).status_code == 409  # replayed


def test_tampered_expired_and_mismatched_puts(api: Client, services: Services) -> None:
    data = png()
    grant = presign(api, token(), data).get_json()
    url = grant["url"]
    assert put(api, url[:-3] + "AAA", data).status_code == 403
    assert put(api, url, data, "image/jpeg").status_code == 415
    assert (
        api.put(path_of(url), data=data[:-1] + b"\0\0", headers={"Content-Type": "image/png"}).status_code
        == 400
    )
    past = issue_upload_token(
        services.keys,
        UploadGrant(uuid.UUID(grant["media_id"]), "x", len(data), "image/png", None, int(time.time()) - 1),
    )
    assert (
        api.put(f"/media/uploads/{past}", data=data, headers={"Content-Type": "image/png"}).status_code == 410
    )
    assert blobs(services) == []
    wrong = put(api, url, elf()[: len(data)].ljust(len(data), b"\0"))
    assert wrong.status_code == 415
    failed = services.repo.get(uuid.UUID(grant["media_id"]))
    assert (
        failed is not None
        and failed.status == "failed"
        and "not the signed image/png" in (failed.failure_reason or "")
    )
    assert blobs(services) == []


def test_presign_policy_errors(api: Client) -> None:
    tok = token()
    assert presign(api, tok, b"x" * 10, content_type="image/svg+xml").status_code == 415
    assert (
        api.post(
            "/media/uploads",
            json={"filename": "a", "content_type": "image/png", "size": 10**12},
            headers=bearer(tok),
        ).status_code
        == 413
    )
    assert api.post("/media/uploads", json={"filename": "a"}, headers=bearer(tok)).status_code == 422
    assert (
        api.post(
            "/media/uploads", data="{nope", content_type="application/json", headers=bearer(tok)
        ).status_code
        == 422
    )
    assert (
        api.post("/media/uploads", data="a=b", content_type="text/plain", headers=bearer(tok)).status_code
        == 415
    )
    assert (
        api.post("/media/uploads", json={"filename": "a", "content_type": "image/png", "size": 1}).status_code
        == 401
    )
    assert presign(api, token(scopes=["media:read"]), b"x").status_code == 403
    big = {"filename": "a" * 20000, "content_type": "image/png", "size": 1}
    assert api.post("/media/uploads", json=big, headers=bearer(tok)).status_code == 413


class Gate(io.BytesIO):
    """A request body that sends its first bytes, then waits for a signal before the rest."""

    def __init__(self, data: bytes, opened: threading.Event, release: threading.Event) -> None:
        super().__init__(data)
        self._opened, self._release = opened, release

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            self._opened.set()
            self._release.wait(10)
        return super().read(100 if size is None or size < 0 else min(size, 100))


def test_two_concurrent_puts_with_one_url_one_wins(services: Services) -> None:
    data = png()
    alice = Principal("alice-" + uuid.uuid4().hex, frozenset({READ, WRITE}))
    upload = presigned.presign(
        services, alice, {"filename": "a.png", "content_type": "image/png", "size": len(data)}
    )
    tok = upload.url.rsplit("/", 1)[1]
    opened, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(
            presigned.complete_upload, services, tok, "image/png", len(data), Gate(data, opened, release)
        )
        assert opened.wait(10)  # the first PUT holds the claim and is streaming
        with pytest.raises(Conflict, match="in progress"):
            presigned.complete_upload(services, tok, "image/png", len(data), io.BytesIO(data))
        release.set()
        record = first.result(10)
    assert record.status == "ready"
    assert len(blobs(services)) == 1
    with pytest.raises(Conflict, match="already complete"):
        presigned.complete_upload(services, tok, "image/png", len(data), io.BytesIO(data))


def test_cleanup_removes_stale_pending_records_and_their_temp_files(services: Services) -> None:
    owner = "cleanup-" + uuid.uuid4().hex
    long_ago = datetime.now(UTC) - timedelta(seconds=services.config.pending_grace_seconds + 60)
    stale = services.repo.create_pending(NewPending(owner, "a.png", "image/png", 10, None, long_ago))
    fresh = services.repo.create_pending(NewPending(owner, "b.png", "image/png", 10, None, datetime.now(UTC)))
    plant_temp(services.store, upload_label(stale.id))
    assert temp_leftovers(services.store) != []
    maintain(services.config, services.store, services.repo)
    assert services.repo.get(stale.id) is None
    assert temp_leftovers(services.store) == []
    assert services.repo.get(fresh.id) is not None


def test_signed_download_links(api: Client, services: Services) -> None:
    data = png()
    tok = token()
    body, ctype = upload_body(data)
    doc = api.post("/media", data=body, content_type=ctype, headers=bearer(tok)).get_json()
    link = path_of(doc["links"]["content"])
    assert api.get(link).get_data() == data
    ranged = api.get(link, headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.get_data() == data[:4]
    media_id = uuid.UUID(doc["id"])
    expired_at = int(time.time()) - 1
    old_sig = sign_download(services.keys, media_id, expired_at)
    expired = f"/media/{media_id}/content?expires={expired_at}&sig={old_sig}"
    assert api.get(expired).status_code == 403
    assert api.get(link.replace("sig=", "sig=x")).status_code == 403
    later = int(time.time()) + 10_000
    assert api.get(link.split("?")[0] + f"?expires={later}&" + link.split("&", 1)[1]).status_code == 403
    body, ctype = upload_body(png())
    other = api.post("/media", data=body, content_type=ctype, headers=bearer(tok)).get_json()
    assert api.get(f"/media/{other['id']}/content?" + link.split("?", 1)[1]).status_code == 403


def test_cors_preflights_are_answered_without_credentials(capi: Client) -> None:
    for path, method, wanted in [
        ("/media/uploads", "POST", "Authorization"),
        ("/media", "POST", "Authorization"),
        ("/media/uploads/not-even-a-token", "PUT", "Content-Type"),
        (f"/media/{uuid.uuid4()}", "GET", "Authorization"),
        (f"/media/{uuid.uuid4()}/content", "GET", "Range"),
    ]:
        resp = capi.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": method})
        assert resp.status_code == 204, (path, resp.get_data(as_text=True))
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert method in resp.headers["Access-Control-Allow-Methods"]
        assert wanted in resp.headers["Access-Control-Allow-Headers"]
    assert (
        "Authorization"
        not in capi.options("/media/uploads/x", headers={"Origin": ORIGIN}).headers[
            "Access-Control-Allow-Headers"
        ]
    )
    refused = capi.options("/media/uploads", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers


def test_actual_responses_expose_headers_to_allowed_origins(capi: Client) -> None:
    data = png()
    tok = token()
    resp = capi.post(
        "/media/uploads",
        json={"filename": "a.png", "content_type": "image/png", "size": len(data)},
        headers={**bearer(tok), "Origin": ORIGIN},
    )
    assert resp.status_code == 201
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Location" in resp.headers["Access-Control-Expose-Headers"]
    done = capi.put(
        path_of(resp.get_json()["url"]), data=data, headers={"Content-Type": "image/png", "Origin": ORIGIN}
    )
    assert done.status_code == 200
    assert "ETag" in done.headers["Access-Control-Expose-Headers"]
    denied = capi.get("/media", headers={**bearer(tok), "Origin": ORIGIN})
    assert denied.headers["Access-Control-Allow-Origin"] == ORIGIN  # errors too, so the page can read them
    evil = capi.get("/media", headers={**bearer(tok), "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers
