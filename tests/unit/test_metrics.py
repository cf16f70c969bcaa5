from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from common import metrics


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(autouse=True)
def switched_on() -> Iterator[None]:
    yield
    metrics.configure(http=True, business=True, system=True)


def test_an_answered_request_moves_its_business_counters() -> None:
    before = {
        "uploads": value("media_uploads_total", kind="presigned", outcome="success"),
        "bytes": value("media_upload_bytes_total"),
        "completed": value("media_presigned_total", event="completed"),
        "range": value("media_downloads_total", kind="range"),
        "link": value("media_downloads_total", kind="signed_link"),
        "rejected": value("media_uploads_total", kind="multipart", outcome="rejected"),
    }
    metrics.request_answered("completeUpload", 200, {"size": 1234})
    metrics.request_answered("getMediaContent", 206, {})
    metrics.request_answered("getMediaContent", 200, {"signed_link": True})
    metrics.request_answered("uploadMedia", 415, {})
    assert value("media_uploads_total", kind="presigned", outcome="success") == before["uploads"] + 1
    assert value("media_upload_bytes_total") == before["bytes"] + 1234
    assert value("media_presigned_total", event="completed") == before["completed"] + 1
    assert value("media_downloads_total", kind="range") == before["range"] + 1
    assert value("media_downloads_total", kind="signed_link") == before["link"] + 1
    assert value("media_uploads_total", kind="multipart", outcome="rejected") == before["rejected"] + 1


def test_http_requests_are_labelled_by_route_template() -> None:
    labels = {"function": "download", "route": "/media/{id}/content", "method": "GET"}
    before = value("media_http_requests_total", **labels, status="206")
    metrics.observe_http("download", "/media/{id}/content", "GET", 206, 0.004, 0, 65536)
    assert value("media_http_requests_total", **labels, status="206") == before + 1
    assert value("media_http_request_duration_seconds_count", **labels) >= 1


def test_each_group_can_be_switched_off() -> None:
    metrics.configure(http=False, business=False, system=False)
    labels = {"function": "upload", "route": "/media", "method": "POST", "status": "201"}
    before = (value("media_http_requests_total", **labels), value("media_deletes_total"))
    metrics.observe_http("upload", "/media", "POST", 201, 0.1, 100, 50)
    metrics.request_answered("deleteMedia", 204, {})
    metrics.system(metrics.DB_ERRORS)
    assert (value("media_http_requests_total", **labels), value("media_deletes_total")) == before
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain") and b"media_http_requests_total" in body


def test_a_method_the_client_made_up_gets_no_label_of_its_own() -> None:
    before = value(
        "media_http_requests_total", function="upload", route="(no route)", method="other", status="405"
    )
    metrics.observe_http("upload", "(no route)", "X-SCAN-7F3A", 405, 0.001, 0, 0)
    after = value(
        "media_http_requests_total", function="upload", route="(no route)", method="other", status="405"
    )
    assert after == before + 1
    assert b"X-SCAN-7F3A" not in metrics.exposition()[0]
