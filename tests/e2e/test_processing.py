"""Image processing under `make run`, over HTTP: the outbox's event delivered to the process
function's own `/events` (K_SINK), and, when that event is lost, the drain the pinger sends every
few seconds (what a PingSource does in the cluster)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import requests

from localdev.harness import LocalStack, free_port
from tests.factories import bearer, photo, token
from tests.support import RunningPostgres, service_env


def upload_and_wait(stack: LocalStack, deadline_seconds: float) -> tuple[dict[str, Any], float]:
    auth = bearer(token("cook-" + stack.data_dir.name))
    up = requests.post(
        stack.base + "/media",
        headers=auth,
        files={"file": ("pie.jpg", photo(1000, 750), "image/jpeg")},
        timeout=30,
    )
    assert up.status_code == 201, up.text
    started = time.monotonic()
    while True:
        doc: dict[str, Any] = requests.get(up.json()["links"]["self"], headers=auth, timeout=10).json()
        if doc["processing"] != "pending" or time.monotonic() - started > deadline_seconds:
            return doc, time.monotonic() - started
        time.sleep(0.2)


def test_make_run_processes_an_upload_through_its_event(pg: RunningPostgres, tmp_path: Path) -> None:
    # No drain for an hour: only the upload's own event can get the image processed.
    stack = LocalStack(data_dir=tmp_path, env=service_env(pg.url, MEDIA_LOCAL_DRAIN_SECONDS="3600")).start()
    try:
        doc, _ = upload_and_wait(stack, 60)
        assert doc["processing"] == "done", (doc, stack.log()[-3000:])
        with psycopg.connect(pg.url) as conn:  # the event was accepted (a 202) by /events
            row = conn.execute(
                "SELECT sent_at FROM outbox WHERE subject = %s AND type = 'media.uploaded'", (doc["id"],)
            ).fetchone()
        assert row is not None and row[0] is not None
        webp = requests.get(doc["srcset"]["webp"].split(" ")[0], timeout=10)
        assert webp.status_code == 200 and webp.headers["Content-Type"] == "image/webp"
    finally:
        assert stack.stop() == 0, stack.log()


def test_a_lost_event_is_made_good_by_the_drain(pg: RunningPostgres, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/events"  # the broker is down: every event is lost
    stack = LocalStack(data_dir=tmp_path, env=service_env(pg.url, K_SINK=nowhere)).start()
    try:
        doc, _ = upload_and_wait(stack, 60)
        assert doc["processing"] == "done", (doc, stack.log()[-3000:])
        assert doc["width"] == 1000 and doc["variants"]
    finally:
        assert stack.stop() == 0, stack.log()
