"""An erasure of 4,000 records over HTTP, `kill -9`ed half way, finished by the next process with an
exact receipt; another user's deduplicated bytes survive it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psycopg
import requests

from common.tokens import ADMIN
from localdev.harness import LocalStack
from localdev.seed import Blob, insert_records, random_blobs
from tests.factories import bearer, token
from tests.support import service_env

SUBJECT, KEEPER = "erase-me", "keeper"


def job_row(url: str, job_id: str) -> tuple[str, int, int, int]:
    with psycopg.connect(url, client_encoding="utf8") as conn:
        row = conn.execute(
            "SELECT state, records_removed, blobs_removed, bytes_freed FROM erasures WHERE id = %s", (job_id,)
        ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), int(row[2]), int(row[3])


def kill_9(stack: LocalStack) -> None:
    pids = stack.server_pids()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert stack.proc is not None
    stack.proc.wait(10)


def test_an_erasure_killed_half_way_completes_after_restart_with_an_exact_receipt(
    own_database: str, tmp_path: Path
) -> None:
    seeding = time.monotonic()
    data_dir = tmp_path / "v"
    cas = data_dir / "cas"
    alone = random_blobs(cas, 2000)  # hers only
    twice = random_blobs(cas, 500)  # hers, each uploaded twice
    shared = random_blobs(cas, 100)  # hers ten times each, and the keeper's
    hers: list[Blob] = alone + twice + twice + shared * 10
    assert insert_records(own_database, SUBJECT, hers) == 4_000
    insert_records(own_database, KEEPER, shared)
    env = service_env(
        own_database,
        MEDIA_TEMP_SWEEP_INTERVAL_SECONDS="1",  # the maintenance picks the job up within a second
        MEDIA_SCRUB_MIB_PER_SECOND="0",
        MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP="0",
    )
    admin = token("dpo", scopes=(ADMIN,))

    first = LocalStack(data_dir=data_dir, env=env).start()
    try:
        started = time.monotonic()
        print(f"\nseeded and started in {started - seeding:.1f} s")
        resp = requests.delete(f"{first.base}/users/{SUBJECT}/media", headers=bearer(admin), timeout=30)
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert job["state"] == "running", job  # 4,000 records take longer than the request's share
        deadline = time.monotonic() + 60
        while job_row(own_database, job["id"])[1] < 1500 and time.monotonic() < deadline:
            time.sleep(0.02)
        kill_9(first)  # mid-batch, mid-transaction perhaps
        killed = time.monotonic()
    finally:
        first.stop(signal.SIGKILL)
    state, removed, _, _ = job_row(own_database, job["id"])
    assert state == "running" and 0 < removed < 4_000, (state, removed)

    second = LocalStack(data_dir=data_dir, env=env).start()
    try:
        deadline = time.monotonic() + 120
        while job_row(own_database, job["id"])[0] != "done" and time.monotonic() < deadline:
            time.sleep(0.1)
        took = time.monotonic() - started
        resumed_for = time.monotonic() - killed
        status = requests.get(f"{second.base}/erasures/{job['id']}", headers=bearer(admin), timeout=10)
        receipt = status.json()["receipt"]
        assert status.json()["state"] == "done", status.json()
        assert receipt["records_removed"] == 4_000
        assert receipt["blobs_removed"] == len(alone) + len(twice)
        assert receipt["bytes_freed"] == sum(b.size for b in alone + twice)
        with psycopg.connect(own_database, client_encoding="utf8") as conn:
            left = conn.execute("SELECT owner, count(*) FROM media GROUP BY owner").fetchall()
            usage = conn.execute("SELECT owner, files FROM usage WHERE files <> 0").fetchall()
        assert left == [(KEEPER, 100)] and usage == [(KEEPER, 100)]
        on_disk = {p.name for p in (cas / "sha256").glob("*/*/*")}
        assert on_disk == {b.sha256 for b in shared}  # the keeper's bytes, nothing else
        keeper = requests.get(
            f"{second.base}/media", headers=bearer(token(KEEPER)), params={"limit": 1}, timeout=10
        ).json()["items"][0]
        got = requests.get(
            f"{second.base}/media/{keeper['id']}/content", headers=bearer(token(KEEPER)), timeout=10
        )
        assert got.status_code == 200 and len(got.content) == keeper["size"]
        print(
            f"erasure of 4,000 records, killed once: {took:.1f} s in all, {resumed_for:.1f} s after the kill"
        )
    finally:
        assert second.stop() == 0, second.log()
