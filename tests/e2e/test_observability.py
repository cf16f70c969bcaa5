"""Metrics and logs of `make run`'s process, over HTTP: `/metrics` with two gunicorn workers
(prometheus-client's multiprocess mode), route templates as labels, no identifier in any label,
and the W3C trace id and the revision in every log line of a request."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from localdev.harness import LocalStack, children
from tests.factories import bearer, png, token
from tests.support import RunningPostgres, service_env

REVISION = "media-upload-00042"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def multiproc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("metrics")
    (path / "counter_4242.db").write_bytes(b"left by an earlier run")
    return path


@pytest.fixture(scope="module")
def observed(
    pg: RunningPostgres, multiproc_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    env = service_env(pg.url, MEDIA_WORKERS="2", MEDIA_THREADS="4", K_REVISION=REVISION)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    running = LocalStack(data_dir=tmp_path_factory.mktemp("observed"), env=env).start()
    assert not (multiproc_dir / "counter_4242.db").exists()  # emptied at start
    yield running
    assert running.stop() == 0, running.log()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: LocalStack) -> Samples:
    resp = requests.get(stack.base + "/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_count_every_request_across_workers(observed: LocalStack, multiproc_dir: Path) -> None:
    before = scrape(observed)
    n = 60
    with ThreadPoolExecutor(8) as pool:  # separate connections, spread over both workers
        statuses = list(pool.map(lambda _: _live_on_new_connection(observed), range(n)))
    assert statuses == [200] * n
    after = scrape(observed)
    counted = value(after, "media_http_requests_total", route="/health/live", method="GET", status="200")
    assert counted - value(before, "media_http_requests_total", route="/health/live", status="200") == n
    # Both workers answered some of them, and their values were added, not one worker's shown.
    workers = children(observed.proc.pid) if observed.proc else []
    assert len(workers) == 2, workers
    files = {p.name for p in multiproc_dir.iterdir()}
    assert sum(1 for w in workers if f"counter_{w}.db" in files) == 2, files


def _live_on_new_connection(stack: LocalStack) -> int:
    with requests.Session() as s:
        return s.get(stack.base + "/health/live", headers={"Connection": "close"}, timeout=10).status_code


def test_business_http_and_system_metrics_follow_what_happened(observed: LocalStack) -> None:
    tok, sub = token("metrics-user-7f3a"), "metrics-user-7f3a"
    data = png(40, 40)
    before = scrape(observed)

    def upload() -> dict[str, str]:
        resp = requests.post(
            observed.base + "/media",
            headers=bearer(tok),
            files={"file": ("dish.png", data, "image/png")},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    first, second = upload(), upload()  # the same bytes twice: one dedup hit
    content = f"{observed.base}/media/{first['id']}/content"
    full = requests.get(content, headers=bearer(tok), timeout=10)
    assert hashlib.sha256(full.content).hexdigest() == first["sha256"]
    assert requests.get(content, headers={**bearer(tok), "Range": "bytes=0-9"}, timeout=10).status_code == 206
    etag = full.headers["ETag"]
    assert (
        requests.get(content, headers={**bearer(tok), "If-None-Match": etag}, timeout=10).status_code == 304
    )
    assert requests.get(content, headers=bearer("not-a-token"), timeout=10).status_code == 401
    assert requests.get(content, timeout=10).status_code == 401
    assert (
        requests.delete(f"{observed.base}/media/{second['id']}", headers=bearer(tok), timeout=10).status_code
        == 204
    )
    assert requests.get(observed.base + "/health/ready", timeout=10).status_code == 200
    after = scrape(observed)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("media_uploads_total", kind="multipart", outcome="success") == 2
    assert moved("media_upload_bytes_total") == 2 * len(data)
    assert moved("media_dedup_hits_total") == 1
    assert moved("media_downloads_total", kind="full") == 1
    assert moved("media_downloads_total", kind="range") == 1
    assert moved("media_downloads_total", kind="not_modified") == 1
    assert moved("media_deletes_total") == 1
    assert moved("media_auth_failures_total", reason="invalid_token") == 1
    assert moved("media_auth_failures_total", reason="missing_token") == 1
    template = "/media/{id}/content"
    assert moved("media_http_requests_total", function="download", route=template, status="206") == 1
    assert moved("media_http_requests_total", function="upload", route="/media", method="POST") == 2
    assert moved("media_http_request_duration_seconds_count", route=template, method="GET") == 5
    assert moved("media_http_request_bytes_total", function="upload", route="/media") > 2 * len(data)
    assert moved("media_http_response_bytes_total", route=template) >= len(data) + 10
    assert moved("media_readiness_check_seconds_count", check="database") >= 1
    assert value(after, "media_db_pool_connections", state="open") >= 1
    assert value(after, "media_storage_free_bytes") > 0

    identifiers = {first["id"], second["id"], first["sha256"], sub, tok, "not-a-token"}
    for name, labels in after:
        for _, label_value in labels:
            assert not any(i in label_value for i in identifiers), (name, labels)
        assert not any(v.startswith("/media/") and "{" not in v for _, v in labels if _ == "route"), labels


def test_metrics_answer_get_and_head_only(observed: LocalStack) -> None:
    assert requests.head(observed.base + "/metrics", timeout=10).status_code == 200
    assert requests.post(observed.base + "/metrics", timeout=10).status_code == 404


def test_a_traceparent_names_the_request_in_every_log_line(observed: LocalStack) -> None:
    parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    resp = requests.get(
        observed.base + "/media", headers={**bearer(token()), "traceparent": parent}, timeout=10
    )
    assert resp.status_code == 200
    assert resp.headers["X-Request-ID"] == TRACE_ID  # no X-Request-ID sent: the trace id is used

    given = requests.get(
        observed.base + "/media",
        headers={**bearer("broken"), "traceparent": parent, "X-Request-ID": "client-chosen-1"},
        timeout=10,
    )
    assert given.status_code == 401 and given.headers["X-Request-ID"] == "client-chosen-1"

    lines = [json.loads(line) for line in observed.log().splitlines() if line.startswith("{")]
    ours = [doc for doc in lines if doc.get("trace_id") == TRACE_ID]
    assert {doc.get("request_id") for doc in ours} == {TRACE_ID, "client-chosen-1"}, ours
    assert len(ours) >= 2
    assert all(doc.get("revision") == REVISION for doc in lines), [d for d in lines if "revision" not in d][
        :3
    ]
