"""Liveness (touches nothing) and readiness (database answers, storage volume writable; free space
and the malware scanner reported, not required)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from werkzeug.wrappers import Request, Response

from common import metrics
from common.services import Services
from common.sniff import libmagic_version
from common.web import Routes, json_response


def liveness() -> dict[str, Any]:
    return {"status": "ok", "checks": {}}


def _timed(name: str, check: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {"status": "ok"}
    try:
        check()
    except Exception as exc:  # any failure is a failed check, reported, never raised
        result = {"status": "failed", "detail": f"{exc.__class__.__name__}: {exc}".strip()[:300]}
    seconds = time.perf_counter() - started
    metrics.readiness_check(name, seconds)
    result["latency_ms"] = round(seconds * 1000, 2)
    return result


def readiness(services: Services) -> tuple[bool, dict[str, Any]]:
    checks = {
        "database": _timed("database", services.repo.ping),
        "storage": _timed("storage", services.store.check_writable),
    }
    ready = all(c["status"] == "ok" for c in checks.values())
    # Type detection depends on the libmagic build (results differ between 5.4x releases).
    return ready, {
        "status": "ready" if ready else "unavailable",
        "checks": checks,
        "reports": reports(services),
        "libmagic": libmagic_version(),
    }


def reports(services: Services) -> dict[str, Any]:
    """What readiness reports without failing on it: downloads work without free space or a
    scanner, so a pod that cannot take uploads stays in the Service (uploads answer 507/503)."""
    free = services.store.free_bytes()
    minimum = services.config.min_free_bytes
    out: dict[str, Any] = {
        "free_space": {
            "free_bytes": free,
            "min_free_bytes": minimum,
            "accepting_uploads": free is None or minimum <= 0 or free >= minimum,
        }
    }
    if services.config.scan != "off":
        out["scanner"] = _timed("scanner", services.scanner.ping)
    return out


def register_probes(routes: Routes) -> None:
    """Every function answers the probe routes itself: Kubernetes probes each pod on its own port."""

    @routes.operation("live", services=False)
    def live(request: Request) -> Response:
        return json_response(liveness())

    @routes.operation("ready")
    def ready(request: Request, services: Services) -> Response:
        ok, body = readiness(services)
        return json_response(body, 200 if ok else 503)
