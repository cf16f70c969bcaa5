"""Every upload streams through a real clamd (started by the tests, one EICAR signature), on the
volume and on S3: the verdict before the commit, nothing stored of an infected file, 503 when clamd
is down or frozen, unless MEDIA_SCAN_FAIL_OPEN=1."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from werkzeug.test import Client, TestResponse

from common.config import Config
from common.services import Services, build_services
from localdev.harness import RunningClamd, eicar, free_port
from tests import support
from tests.conftest import s3_env
from tests.factories import bearer, png, png_with_text, token, upload_body

SIGNATURE = "Eicar-Test-Body.UNOFFICIAL"


@pytest.fixture(params=["fs", "s3"])
def build(
    request: pytest.FixtureRequest, config_for: Callable[..., Config], clamd: RunningClamd
) -> Iterator[Callable[..., tuple[Services, Client]]]:
    """Services scanning with the real clamd (or another address), and the API over them."""
    built: list[Services] = []

    def make(**env: str) -> tuple[Services, Client]:
        extra = s3_env(request.getfixturevalue("s3")) if request.param == "s3" else {}
        settings = {
            "MEDIA_SCAN": "clamd",
            "MEDIA_CLAMD_ADDRESS": clamd.address,
            "MEDIA_SCAN_TIMEOUT_SECONDS": "2",
            **extra,
            **env,
        }
        services = build_services(config_for(**settings), background=False)
        built.append(services)
        return services, support.api_client(services)

    yield make
    for services in built:
        assert support.temp_leftovers(services.store) == []
        services.repo.close()


def post(api: Client, tok: str, data: bytes) -> TestResponse:
    body, ctype = upload_body(data)
    return api.post("/media", data=body, content_type=ctype, headers=bearer(tok))


def presign_and_put(api: Client, tok: str, data: bytes) -> tuple[str, TestResponse]:
    signed = api.post(
        "/media/uploads",
        json={"filename": "dish.png", "content_type": "image/png", "size": len(data)},
        headers=bearer(tok),
    )
    assert signed.status_code == 201, signed.get_data(as_text=True)
    doc = signed.get_json()
    put = api.put(urlsplit(doc["url"]).path, data=data, headers={"Content-Type": "image/png"})
    return doc["media_id"], put


def problem(resp: TestResponse, status: int, slug: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = json.loads(resp.get_data())
    assert doc["type"].endswith("/" + slug), doc
    return doc


def scans(verdict: str) -> float:
    return REGISTRY.get_sample_value("media_scans_total", {"verdict": verdict}) or 0.0


def test_an_infected_png_is_refused_by_direct_and_presigned_upload_and_nothing_is_stored(
    build: Callable[..., tuple[Services, Client]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="media.audit")
    services, api = build()
    tok = token()
    infected = png_with_text(eicar())
    before = scans("infected")

    doc = problem(post(api, tok, infected), 422, "content-rejected")
    assert doc["signature"] == SIGNATURE and SIGNATURE in doc["detail"]

    media_id, put = presign_and_put(api, tok, png_with_text(b"soup " + eicar()))
    problem(put, 422, "content-rejected")
    record = api.get(f"/media/{media_id}", headers=bearer(tok)).get_json()
    assert record["status"] == "failed" and SIGNATURE in record["failure_reason"]

    assert support.stored_blobs(services.store) == []
    assert api.get("/users/me/usage", headers=bearer(tok)).get_json()["files"] == 0
    assert scans("infected") == before + 2
    rejected = [r.__dict__["audit"] for r in caplog.records if r.name == "media.audit"]
    assert [e["status"] for e in rejected if e["event"] == "content_rejected"] == [422, 422]

    clean = post(api, tok, png_with_text(b"a bowl of soup"))
    assert clean.status_code == 201, clean.get_data(as_text=True)
    _, clean_put = presign_and_put(api, tok, png(33, 33))
    assert clean_put.status_code == 200, clean_put.get_data(as_text=True)


def test_clamd_unreachable_is_503_and_fail_open_stores_unscanned(
    build: Callable[..., tuple[Services, Client]],
) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"
    services, api = build(MEDIA_CLAMD_ADDRESS=nobody)
    tok = token()
    started = time.monotonic()
    doc = problem(post(api, tok, png(20, 20)), 503, "scanner-unavailable")
    assert time.monotonic() - started < 5 and "Retry-After" in post(api, tok, png(20, 20)).headers
    assert "nothing was stored" in doc["detail"]
    assert support.stored_blobs(services.store) == []
    ready = api.get("/health/ready").get_json()
    assert ready["status"] == "ready"  # downloads still work: reported, not failed
    assert ready["reports"]["scanner"]["status"] == "failed"

    opened, open_api = build(MEDIA_CLAMD_ADDRESS=nobody, MEDIA_SCAN_FAIL_OPEN="1")
    before = scans("unscanned")
    assert post(open_api, tok, png(21, 21)).status_code == 201
    assert scans("unscanned") == before + 1
    assert len(support.stored_blobs(opened.store)) == 1


def test_a_frozen_clamd_is_503_within_the_timeout_then_uploads_work_again(
    build: Callable[..., tuple[Services, Client]], clamd: RunningClamd
) -> None:
    services, api = build(MEDIA_SCAN_TIMEOUT_SECONDS="1")
    tok = token()
    clamd.freeze()
    try:
        started = time.monotonic()
        problem(post(api, tok, png(20, 20)), 503, "scanner-unavailable")
        took = time.monotonic() - started
    finally:
        clamd.thaw()
    assert took < 4, took
    assert support.stored_blobs(services.store) == []
    assert post(api, tok, png(20, 20)).status_code == 201
