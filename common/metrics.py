"""Prometheus metrics (prometheus-client), in three groups that can each be switched off:

- HTTP (`MEDIA_METRICS_HTTP`): requests by function, route template, method and status, their
  duration, request and response bytes. The route label is the routing table's template
  (`/media/{id}/content`), never the raw path.
- Business (`MEDIA_METRICS_BUSINESS`): uploads by kind and outcome, upload bytes, dedup hits,
  presigned URLs issued/completed/expired, downloads by kind, deletes.
- System (`MEDIA_METRICS_SYSTEM`): authentication failures by reason, database pool connections
  and errors, readiness check latencies, free bytes on the storage volume, temp files swept,
  blobs the integrity scrub found corrupt.

No label ever holds a user id, a media id or a token. `common.server` answers `GET /metrics` on each
function's own port (never routed by the ingress). With several gunicorn workers, prometheus-client
runs in multiprocess mode: `common.server` sets `PROMETHEUS_MULTIPROC_DIR` (emptied at start)
before this module is first imported, and the exposition aggregates every worker's values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # see metrics_dir.py


class Switches:
    http = True
    business = True
    system = True


def configure(*, http: bool, business: bool, system: bool) -> None:
    Switches.http, Switches.business, Switches.system = http, business, system


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

HTTP_REQUESTS = Counter(
    "media_http_requests_total", "HTTP requests answered", ["function", "route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "media_http_request_duration_seconds",
    "Time to answer a request (the body of a streamed download excluded)",
    ["function", "route", "method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_REQUEST_BYTES = Counter(
    "media_http_request_bytes_total", "Request body bytes (Content-Length)", ["function", "route", "method"]
)
HTTP_RESPONSE_BYTES = Counter(
    "media_http_response_bytes_total", "Response body bytes (Content-Length)", ["function", "route", "method"]
)

UPLOADS = Counter("media_uploads_total", "Uploads by kind and outcome", ["kind", "outcome"])
UPLOAD_BYTES = Counter("media_upload_bytes_total", "Bytes of uploads stored")
DEDUP_HITS = Counter("media_dedup_hits_total", "Uploads whose bytes were already stored")
PRESIGNED = Counter("media_presigned_total", "Presigned uploads by event", ["event"])
DOWNLOADS = Counter("media_downloads_total", "Content downloads by kind", ["kind"])
DELETES = Counter("media_deletes_total", "Media records deleted")
SCANS = Counter(
    "media_scans_total",
    "Uploads by malware scan verdict (clean, infected, unscanned: fail-open)",
    ["verdict"],
)
QUOTA_REFUSALS = Counter("media_quota_refusals_total", "Uploads refused by a quota", ["limit"])
FREE_SPACE_REFUSALS = Counter(
    "media_free_space_refusals_total", "Uploads refused while free space is below MEDIA_MIN_FREE_BYTES"
)
ERASED_RECORDS = Counter("media_erased_records_total", "Records removed by per-user erasures")

AUTH_FAILURES = Counter("media_auth_failures_total", "Requests refused for their token", ["reason"])
DB_POOL = Gauge(
    "media_db_pool_connections",
    "PostgreSQL pool connections by state",
    ["state"],
    multiprocess_mode="livesum",
)
DB_ERRORS = Counter("media_db_errors_total", "Database calls that failed (the request got a 503)")
READINESS = Histogram(
    "media_readiness_check_seconds", "Latency of each readiness check", ["check"], buckets=_LATENCY_BUCKETS
)
STORAGE_FREE = Gauge(
    "media_storage_free_bytes", "Free bytes on the storage volume", multiprocess_mode="mostrecent"
)
TEMP_SWEPT = Counter("media_temp_files_swept_total", "Abandoned temp files removed")
SCRUB_MISMATCHES = Counter(
    "media_scrub_mismatches_total", "Blobs the integrity scrub found not matching their SHA-256 (quarantined)"
)
S3_REQUESTS = Counter("media_s3_requests_total", "Calls to the object store by operation", ["operation"])
S3_ERRORS = Counter(
    "media_s3_errors_total",
    "Object store calls that got no answer or an error (a lookup's 404 is none), by operation",
    ["operation"],
)


def observe_http(
    function: str,
    route: str,
    method: str,
    status: int,
    seconds: float,
    request_bytes: int,
    response_bytes: int,
) -> None:
    if not Switches.http:
        return
    method = method if method in _METHODS else "other"  # a client picks the method: bound it
    _child(HTTP_REQUESTS, function, route, method, str(status)).inc()
    _child(HTTP_DURATION, function, route, method).observe(seconds)
    if request_bytes:
        _child(HTTP_REQUEST_BYTES, function, route, method).inc(request_bytes)
    if response_bytes:
        _child(HTTP_RESPONSE_BYTES, function, route, method).inc(response_bytes)


_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: every label here takes a bounded set of values (route
    templates, methods, statuses), and `labels` validates and locks on each call."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def business(counter: Counter, amount: float = 1, *labels: str) -> None:
    if Switches.business:
        (counter.labels(*labels) if labels else counter).inc(amount)


def system(counter: Counter, amount: float = 1, *labels: str) -> None:
    if Switches.system:
        (counter.labels(*labels) if labels else counter).inc(amount)


def s3_call(operation: str, failed: bool) -> None:
    """One call to the object store (botocore's operation name: GetObject, PutObject...)."""
    if Switches.system:
        S3_REQUESTS.labels(operation).inc()
        if failed:
            S3_ERRORS.labels(operation).inc()


_pool_last: list[tuple[int, int, int]] = [(-1, -1, -1)]


def pool_state(open_: int, idle: int, waiting: int) -> None:
    """After every checkout; only a change is written (most checkouts change nothing)."""
    if Switches.system and _pool_last[0] != (open_, idle, waiting):
        _pool_last[0] = (open_, idle, waiting)
        _child(DB_POOL, "open").set(open_)
        _child(DB_POOL, "idle").set(idle)
        _child(DB_POOL, "waiting").set(waiting)


def readiness_check(check: str, seconds: float) -> None:
    if Switches.system:
        READINESS.labels(check).observe(seconds)


def storage_free(path: Path) -> None:
    if not Switches.system:
        return
    try:
        st = os.statvfs(path)
    except OSError:
        return
    STORAGE_FREE.set(st.f_bavail * st.f_frsize)


def request_answered(operation: str | None, status: int, details: dict[str, object]) -> None:
    """The business counters one answered request moves (from its operation and status)."""
    if not Switches.business or operation is None:
        return
    outcome = "success" if status < 400 else "rejected" if status < 500 else "failed"
    if operation in ("uploadMedia", "completeUpload"):
        UPLOADS.labels("multipart" if operation == "uploadMedia" else "presigned", outcome).inc()
        size = details.get("size")
        if outcome == "success" and isinstance(size, int):
            UPLOAD_BYTES.inc(size)
        if operation == "completeUpload" and outcome == "success":
            PRESIGNED.labels("completed").inc()
    elif operation == "presignUpload" and outcome == "success":
        PRESIGNED.labels("issued").inc()
    elif operation == "getMediaContent" and status in (200, 206, 304):
        kind = "signed_link" if details.get("signed_link") else _DOWNLOAD_KINDS[status]
        _child(DOWNLOADS, kind).inc()
    elif operation == "deleteMedia" and outcome == "success":
        DELETES.inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DOWNLOAD_KINDS = {200: "full", 206: "range", 304: "not_modified"}


def multiprocess_mode() -> bool:
    return values.ValueClass is not values.MutexValue


def worker_exited(pid: int) -> None:
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format: every worker's when in multiprocess mode."""
    if multiprocess_mode():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
