"""Fault drills: what production will do to us, done on purpose, with nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from localdev.harness import MULTIPART_CONTENT_TYPE, GeneratedFile, multipart_stream, send
from localdev.rehearsal import FunctionProcess, Rehearsal
from tests.factories import bearer, png, token, upload_body
from tests.rehearsal.conftest import MiB, rehearsal_on
from tests.support import RunningPostgres, postgres

pytestmark = pytest.mark.slow


def multipart_length(file: GeneratedFile) -> int:
    return sum(len(c) for c in multipart_stream(GeneratedFile(file.size)))  # same framing, same length


def upload_big(rehearsal: Rehearsal, tok: str, file: GeneratedFile, pause: float = 0) -> tuple[int, bytes]:
    """A multipart upload of `file` through the ingress, optionally throttled (`pause` s per MiB)."""
    body = multipart_stream(file)
    status, answer, _ = send(
        rehearsal.base,
        "POST",
        "/media",
        {**bearer(tok), "Content-Type": MULTIPART_CONTENT_TYPE},
        throttled(body, pause) if pause else body,
        multipart_length(file),
    )
    return status, answer


def throttled(chunks: Iterator[bytes], pause: float) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk
        time.sleep(pause)


def holder_of(path: Path, processes: list[FunctionProcess]) -> FunctionProcess | None:
    """The function process that has `path` open."""
    for process in processes:
        for pid in process.pids():
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(fd) == str(path):
                        return process
                except OSError:
                    continue
    return None


def wait_for(condition: Callable[[], Any], seconds: float, message: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(message)


def test_kill_9_of_an_upload_process_mid_upload_loses_nothing_and_the_retry_succeeds(
    rehearsal: Rehearsal,
) -> None:
    tok = token()
    big = GeneratedFile(200 * MiB)
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            outcome["status"], _ = upload_big(rehearsal, tok, big, pause=0.01)
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    temp = wait_for(
        lambda: next((p for p in rehearsal.temp_files() if p.stat().st_size > 20 * MiB), None),
        30,
        "no upload temp file grew on the shared volume",
    )
    victim = holder_of(temp, rehearsal.processes["upload"])
    assert victim is not None, "no upload process holds the temp file"
    victim.kill9()
    thread.join(60)
    assert outcome.get("status") != 201, outcome  # the client saw the failure (an error or a 5xx)

    assert not any(p.name == big.sha256 for p in rehearsal.blobs())
    listed = requests.get(f"{rehearsal.base}/media", headers=bearer(tok), timeout=10).json()
    assert listed["items"] == []  # no record at all, so certainly no `ready` one

    # The killed process cleaned nothing up; the other replica's sweep or the restarted process's
    # start-up sweep removes the abandoned file once it is older than MEDIA_TEMP_MAX_AGE_SECONDS.
    rehearsal.restart(victim)
    wait_for(lambda: not temp.exists(), 20, "nobody swept the abandoned temp file")

    retry = GeneratedFile(200 * MiB)
    status, body = upload_big(rehearsal, tok, retry)
    assert status == 201, body[:300]
    assert json.loads(body)["sha256"] == retry.sha256


def test_an_upload_whose_client_pauses_past_the_sweep_age_keeps_its_temp_file_and_completes(
    rehearsal: Rehearsal,
) -> None:
    """Both upload replicas sweep every second files untouched for 3 s; this client pauses 5 s."""
    big = GeneratedFile(8 * MiB)

    def pausing(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for i, chunk in enumerate(chunks):
            if i == 4:
                temp = wait_for(
                    lambda: next(iter(rehearsal.temp_files()), None), 10, "no temp file on the volume"
                )
                time.sleep(5)
                assert temp.exists(), "the sweeper removed a live upload's temp file"
            yield chunk

    status, body, _ = send(
        rehearsal.base,
        "POST",
        "/media",
        {**bearer(token()), "Content-Type": MULTIPART_CONTENT_TYPE},
        pausing(multipart_stream(big)),
        multipart_length(big),
    )
    assert status == 201, body[:300]
    assert json.loads(body)["sha256"] == big.sha256
    assert rehearsal.temp_files() == []


def test_more_stalled_clients_than_threads_leave_every_probe_answering(rehearsal: Rehearsal) -> None:
    """20 uploads whose bodies stop (16 upload threads in all), 20 heads dribbled to the ingress
    and 10 straight to each upload process, connections that send nothing: every process's own
    probes, and the ingress's, still answer within a second."""
    tok = token()
    uploads = rehearsal.processes["upload"]
    head = (
        f"POST /media HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {tok}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    ).encode()
    ingress = ("127.0.0.1", int(rehearsal.base.rsplit(":", 1)[1]))
    with ExitStack() as stalled:

        def open_to(address: tuple[str, int], data: bytes) -> socket.socket:
            sock = stalled.enter_context(socket.create_connection(address, timeout=30))
            if data:
                sock.sendall(data)
            return sock

        bodies = [open_to(ingress, head) for _ in range(20)]
        for _ in range(20):
            open_to(ingress, b"GET /media HT")
        for process in uploads:
            for _ in range(10):
                open_to(("127.0.0.1", process.port), b"GET /health/li")
                open_to(("127.0.0.1", process.port), b"")
        wait_for(
            lambda: len(rehearsal.temp_files()) >= 16, 10, "the stalled uploads did not reach the replicas"
        )
        for base in [*(p.base for p in uploads), rehearsal.base]:
            for path in ("/health/live", "/health/ready"):
                started = time.monotonic()
                probe = requests.get(base + path, timeout=5)
                took = time.monotonic() - started
                assert probe.status_code == 200, (base, path, probe.text)
                assert took < 1, f"{base}{path} took {took:.2f} s with every upload thread taken"
        for sock in bodies:  # the replicas end them at MEDIA_BODY_IDLE_TIMEOUT_SECONDS
            sock.settimeout(30)
            answer = sock.recv(65536)
            assert answer.split(b" ", 2)[1] == b"408", answer[:200]
            assert b"application/problem+json" in answer
    wait_for(lambda: rehearsal.temp_files() == [], 10, "a stalled upload left its temp file")
    status, body = upload_big(rehearsal, tok, GeneratedFile(2 * MiB))
    assert status == 201, body[:300]


def test_restarting_the_download_function_leaves_uploads_in_flight_alone(rehearsal: Rehearsal) -> None:
    tok = token()
    data = png()
    body, ctype = upload_body(data)
    doc = requests.post(
        rehearsal.base + "/media", data=body, headers={**bearer(tok), "Content-Type": ctype}, timeout=30
    ).json()
    big = GeneratedFile(60 * MiB)
    outcome: dict[str, Any] = {}

    def upload() -> None:
        outcome["status"], outcome["body"] = upload_big(rehearsal, tok, big, pause=0.05)

    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.5)
    downloads = rehearsal.processes["download"]
    for process in downloads:
        process.stop()
    down = requests.get(f"{rehearsal.base}/media/{doc['id']}", headers=bearer(tok), timeout=10)
    assert down.status_code == 503
    assert down.headers["Content-Type"] == "application/problem+json"
    assert down.json()["status"] == 503
    for process in downloads:
        rehearsal.restart(process)
    back = requests.get(f"{rehearsal.base}/media/{doc['id']}/content", headers=bearer(tok), timeout=10)
    assert back.status_code == 200 and back.content == data
    thread.join(120)
    assert outcome.get("status") == 201, outcome
    assert json.loads(outcome["body"])["sha256"] == big.sha256


def test_fifty_concurrent_uploads_of_the_same_bytes_through_two_replicas(rehearsal: Rehearsal) -> None:
    tok = token()
    data = png(300, 300)
    digest = hashlib.sha256(data).hexdigest()
    body, ctype = upload_body(data)

    def upload(_: int) -> dict[str, Any]:
        resp = requests.post(
            rehearsal.base + "/media", data=body, headers={**bearer(tok), "Content-Type": ctype}, timeout=60
        )
        assert resp.status_code == 201, resp.text
        result: dict[str, Any] = resp.json()
        return result

    with ThreadPoolExecutor(50) as pool:
        docs = list(pool.map(upload, range(50)))
    assert {d["sha256"] for d in docs} == {digest}
    assert len({d["id"] for d in docs}) == 50
    assert [p for p in rehearsal.blobs() if p.name == digest] != []
    assert len([p for p in rehearsal.blobs() if p.name == digest]) == 1
    listed = requests.get(f"{rehearsal.base}/media?limit=100", headers=bearer(tok), timeout=10).json()
    assert len(listed["items"]) == 50
    assert all(i["status"] == "ready" and i["sha256"] == digest for i in listed["items"])


def test_a_delete_racing_an_upload_of_the_same_bytes_never_strands_a_record(rehearsal: Rehearsal) -> None:
    tok = token()
    data = png()
    body, ctype = upload_body(data)
    headers = {**bearer(tok), "Content-Type": ctype}
    for _ in range(15):
        victim = requests.post(rehearsal.base + "/media", data=body, headers=headers, timeout=30).json()
        with ThreadPoolExecutor(2) as pool:
            gone = pool.submit(requests.delete, victim["links"]["self"], headers=bearer(tok), timeout=30)
            new = pool.submit(
                requests.post, rehearsal.base + "/media", data=body, headers=headers, timeout=30
            )
            assert gone.result().status_code == 204
            survivor = new.result().json()
        content = requests.get(
            f"{rehearsal.base}/media/{survivor['id']}/content", headers=bearer(tok), timeout=10
        )
        assert content.status_code == 200, "a ready record lost its bytes"
        assert content.content == data
        assert requests.delete(survivor["links"]["self"], headers=bearer(tok), timeout=10).status_code == 204
    assert not any(p.name == hashlib.sha256(data).hexdigest() for p in rehearsal.blobs())


def test_postgres_stopped_under_load_fails_fast_and_recovers(tmp_path: Path) -> None:
    with postgres(fixed_port=True) as db, rehearsal_on(tmp_path / "r", db.url) as rehearsal:
        tok = token()
        body, ctype = upload_body(png())
        headers = {**bearer(tok), "Content-Type": ctype}
        doc = requests.post(rehearsal.base + "/media", data=body, headers=headers, timeout=30).json()
        stop = threading.Event()
        seen: list[tuple[float, int, str]] = []

        def load() -> None:
            session = requests.Session()
            while not stop.is_set():
                for method, url, kwargs in (
                    ("GET", f"{rehearsal.base}/media/{doc['id']}", {"headers": bearer(tok)}),
                    ("POST", rehearsal.base + "/media", {"headers": headers, "data": body}),
                ):
                    started = time.monotonic()
                    resp = session.request(method, url, timeout=30, **kwargs)
                    seen.append(
                        (time.monotonic() - started, resp.status_code, resp.headers.get("Content-Type", ""))
                    )

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1)
        db.stop()
        outage_start = len(seen)
        time.sleep(4)
        ready = requests.get(rehearsal.base + "/health/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"]["status"] == "failed"
        during = seen[outage_start:]
        db.start()
        recovered = wait_for(
            lambda: (
                requests.get(
                    f"{rehearsal.base}/media/{doc['id']}", headers=bearer(tok), timeout=10
                ).status_code
                == 200
            ),
            60,
            "metadata did not recover once PostgreSQL was back",
        )
        stop.set()
        for w in workers:
            w.join(60)
        assert recovered
        assert during, "no request was made during the outage"
        statuses = {status for _, status, _ in during}
        assert 500 not in statuses
        assert 503 in statuses
        assert all(ctype == "application/problem+json" for _, status, ctype in during if status >= 400)
        assert max(seconds for seconds, _, _ in during) < 10, "a request hung during the outage"
        # Each process's circuit breaker lets a request try again every MEDIA_DB_TIMEOUT_SECONDS.
        wait_for(
            lambda: (
                requests.post(rehearsal.base + "/media", data=body, headers=headers, timeout=30).status_code
                == 201
                and requests.get(rehearsal.base + "/health/ready", timeout=10).status_code == 200
            ),
            10,
            "uploads and readiness did not recover once PostgreSQL was back",
        )
        assert rehearsal.temp_files() == []


def test_postgres_frozen_under_sixteen_clients_gives_only_fast_503s_then_recovers(tmp_path: Path) -> None:
    """Frozen, not stopped: `docker pause` (or SIGSTOP when embedded) leaves every connection open
    and silent. MEDIA_DB_TIMEOUT_SECONDS is 1 here, so the bound is 3 s."""
    bound = 2 * 1 + 1
    with postgres() as db, rehearsal_on(tmp_path / "r", db.url) as rehearsal:
        tok = token()
        body, ctype = upload_body(png())
        headers = {**bearer(tok), "Content-Type": ctype}
        doc = requests.post(rehearsal.base + "/media", data=body, headers=headers, timeout=30).json()
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", f"{rehearsal.base}/media/{doc['id']}", {"headers": bearer(tok)}),
            ("GET", f"{rehearsal.base}/media", {"headers": bearer(tok)}),
            ("POST", rehearsal.base + "/media", {"headers": headers, "data": body}),
            (
                "POST",
                rehearsal.base + "/media/uploads",
                {
                    "headers": bearer(tok),
                    "json": {"filename": "a.png", "content_type": "image/png", "size": 9},
                },
            ),
        ]
        stop = threading.Event()
        seen: list[tuple[float, float, int, str]] = []  # started, ended, status, content type

        def client(n: int) -> None:
            session = requests.Session()
            while not stop.is_set():
                method, url, kwargs = calls[n % len(calls)]
                started = time.monotonic()
                resp = session.request(method, url, timeout=30, **kwargs)
                seen.append(
                    (started, time.monotonic(), resp.status_code, resp.headers.get("Content-Type", ""))
                )

        clients = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for c in clients:
            c.start()
        try:
            time.sleep(1)
            db.freeze()
            frozen_at = time.monotonic()
            time.sleep(6)
            ready = requests.get(rehearsal.base + "/health/ready", timeout=10)
            assert ready.status_code == 503
            thawed_at = time.monotonic()
        finally:
            db.thaw()
        wait_for(
            lambda: all(
                requests.request(m, u, timeout=10, **k).status_code in (200, 201) for m, u, k in calls
            ),
            10,
            "the service did not recover within 10 s of the thaw",
        )
        stop.set()
        for c in clients:
            c.join(60)
        during = [s for s in seen if s[0] >= frozen_at + 0.05 and s[1] < thawed_at]
        assert len(during) >= 16, "the clients made too few requests during the freeze"
        assert {status for _, _, status, _ in during} == {503}, sorted({s[2] for s in during})
        assert all(ctype == "application/problem+json" for *_, ctype in during)
        slowest = max(ended - started for started, ended, _, _ in during)
        assert slowest < bound, f"the slowest 503 took {slowest:.2f} s"
        print(f"\nfreeze drill: {len(during)} answers during the freeze, all 503, slowest {slowest:.2f} s")
        assert 500 not in {status for _, _, status, _ in seen}
        assert rehearsal.temp_files() == []


def test_a_full_volume_is_507_with_nothing_left_behind(
    pg: RunningPostgres, tmp_path: Path, small_volume: Callable[[Path, int], None]
) -> None:
    data_dir = tmp_path / "full"
    small_volume(data_dir / "cas", 16)
    # The guard off: this drill fills the disk itself (ENOSPC mid-write).
    with rehearsal_on(data_dir, pg.url, MEDIA_MIN_FREE_BYTES="0") as rehearsal:
        tok = token()
        status, body = upload_big(rehearsal, tok, GeneratedFile(24 * MiB))
        assert status == 507, body[:300]
        problem = json.loads(body)
        assert problem["status"] == 507 and problem["type"].endswith("/insufficient-storage")
        assert rehearsal.temp_files() == []
        assert requests.get(f"{rehearsal.base}/media", headers=bearer(tok), timeout=10).json()["items"] == []
        small = png()
        body_small, ctype = upload_body(small)
        ok = requests.post(
            rehearsal.base + "/media",
            data=body_small,
            headers={**bearer(tok), "Content-Type": ctype},
            timeout=30,
        )
        assert ok.status_code == 201  # the space came back with the temp file


def test_below_the_free_space_floor_uploads_get_507_before_the_disk_is_full(
    pg: RunningPostgres, tmp_path: Path, small_volume: Callable[[Path, int], None]
) -> None:
    """A 32 MiB volume, 12 MiB kept free: once a 24 MiB upload is in, new uploads (direct and
    presigned) are refused with 507 while downloads and readiness go on; a delete brings them back."""
    data_dir = tmp_path / "floor"
    small_volume(data_dir / "cas", 32)
    with rehearsal_on(data_dir, pg.url, MEDIA_MIN_FREE_BYTES=str(12 * MiB)) as rehearsal:
        tok = token()
        big = GeneratedFile(24 * MiB)
        status, body = upload_big(rehearsal, tok, big)
        assert status == 201, body[:300]
        stored = json.loads(body)
        small, ctype = upload_body(png())
        refused = requests.post(
            rehearsal.base + "/media", data=small, headers={**bearer(tok), "Content-Type": ctype}, timeout=30
        )
        assert refused.status_code == 507, refused.text
        problem = refused.json()
        assert problem["type"].endswith("/insufficient-storage") and problem["free_bytes"] < 12 * MiB
        presign = requests.post(
            rehearsal.base + "/media/uploads",
            json={"filename": "a.png", "content_type": "image/png", "size": 100},
            headers=bearer(tok),
            timeout=30,
        )
        assert presign.status_code == 507, presign.text
        ready = requests.get(rehearsal.base + "/health/ready", timeout=10)
        assert ready.status_code == 200  # reported, not failed: the pod stays in the Service
        assert ready.json()["reports"]["free_space"]["accepting_uploads"] is False
        content = requests.get(
            f"{rehearsal.base}/media/{stored['id']}/content", headers=bearer(tok), timeout=30
        )
        assert content.status_code == 200 and hashlib.sha256(content.content).hexdigest() == big.sha256
        gone = requests.delete(f"{rehearsal.base}/media/{stored['id']}", headers=bearer(tok), timeout=30)
        assert gone.status_code == 204
        again = requests.post(
            rehearsal.base + "/media", data=small, headers={**bearer(tok), "Content-Type": ctype}, timeout=30
        )
        assert again.status_code == 201, again.text
        assert rehearsal.temp_files() == []
