"""The service over real HTTP: functions-framework, gunicorn and the local router in a real process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from localdev.harness import (
    MULTIPART_CONTENT_TYPE,
    GeneratedFile,
    LocalStack,
    multipart_stream,
    peak_rss_bytes,
)
from tests.e2e.conftest import SMALL_LIMIT
from tests.factories import TEST_SECRET, bearer, elf, png, token, upload_body

MiB = 1024 * 1024
README = Path(__file__).resolve().parents[2] / "README.md"


def test_upload_list_download_and_delete(stack: LocalStack) -> None:
    tok = token()
    data = png(128, 128)
    up = requests.post(
        stack.base + "/media",
        headers=bearer(tok),
        files={"file": ("dish.png", data, "image/png")},
        timeout=30,
    )
    assert up.status_code == 201, up.text
    doc = up.json()
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert up.headers["Location"] == f"{stack.base}/media/{doc['id']}"
    content = f"{stack.base}/media/{doc['id']}/content"

    listed = requests.get(stack.base + "/media", headers=bearer(tok), timeout=10).json()
    assert [i["id"] for i in listed["items"]] == [doc["id"]]

    whole = requests.get(content, headers=bearer(tok), timeout=10)
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == doc["sha256"]
    assert whole.headers["Accept-Ranges"] == "bytes"

    part = requests.get(content, headers={**bearer(tok), "Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"

    head = requests.head(content, headers=bearer(tok), timeout=10)
    assert (
        head.status_code == 200 and head.headers["Content-Length"] == str(len(data)) and head.content == b""
    )

    cached = requests.get(
        content, headers={**bearer(tok), "If-None-Match": whole.headers["ETag"]}, timeout=10
    )
    assert cached.status_code == 304

    signed = requests.get(doc["url"], timeout=10)  # the signed link needs no token
    assert signed.status_code == 200 and signed.content == data

    assert requests.delete(doc["links"]["self"], headers=bearer(tok), timeout=10).status_code == 204
    gone = requests.get(doc["links"]["self"], headers=bearer(tok), timeout=10)
    assert requests.get(doc["url"], timeout=10).status_code == 404  # the signed link dies with the record
    assert gone.status_code == 404 and gone.headers["Content-Type"] == "application/problem+json"


def test_the_demo_token_endpoint_exists_only_with_the_development_secrets(stack: LocalStack) -> None:
    assert requests.get(stack.base + "/demo/", timeout=10).status_code == 200  # the page itself is static
    resp = requests.get(stack.base + "/demo/token", timeout=10)
    assert resp.status_code == 404 and resp.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico", "/nothing/here"])
def test_unknown_paths_are_problem_json(stack: LocalStack, path: str) -> None:
    resp = requests.get(stack.base + path, timeout=10)
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.json()["request_id"] == resp.headers["X-Request-ID"]


def send_until_answered(
    port: int, head: bytes, body: Iterator[bytes], seconds: float = 60
) -> tuple[bytes, int]:
    """Send a request body until the server answers; return (response, body bytes the server took)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        sock.sendall(head)
        for chunk in body:
            if select.select([sock], [], [], 0)[0] or time.monotonic() > deadline:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = b""
        try:
            while b"\r\n\r\n" not in response or len(response) < response.index(b"\r\n\r\n") + 4 + _length(
                response
            ):
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except (ConnectionResetError, TimeoutError):
            pass
        return response, sent
    finally:
        sock.close()


def _length(response: bytes) -> int:
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", response)
    return int(m.group(1)) if m else 0


def gib_body(prefix: bytes = b"") -> Iterator[bytes]:
    yield prefix
    zeros = bytes(MiB)
    for _ in range(1024):
        yield zeros


def upload_head(port: int, length: int, headers: str = "") -> bytes:
    return (
        f"POST /media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {MULTIPART_CONTENT_TYPE}\r\nContent-Length: {length}\r\n{headers}\r\n"
    ).encode()


@pytest.mark.parametrize("case", ["no token", "executable", "over the limit"])
def test_an_early_rejection_of_a_1_gib_upload_reads_almost_none_of_it(stack: LocalStack, case: str) -> None:
    """functions-framework would read the whole body after a non-streamed error; ours is streamed."""
    peaks_before = {pid: peak_rss_bytes(pid) for pid in stack.worker_pids()}  # whichever gets it
    preamble = (
        b"--media-harness-boundary-c0ffee\r\n"
        b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    )
    auth = ""
    first = preamble
    if case != "no token":
        auth = f"Authorization: Bearer {token()}\r\n"
        first = preamble + (elf() if case == "executable" else next(GeneratedFile(MiB).chunks()))
    response, sent = send_until_answered(
        stack.port, upload_head(stack.port, 1024 * MiB + len(first), auth), gib_body(first)
    )
    status = int(response.split(b" ", 2)[1]) if response else 0
    assert status == {"no token": 401, "executable": 415, "over the limit": 413}[case], response[:500]
    assert b"application/problem+json" in response
    assert sent < 128 * MiB, f"the server took {sent // MiB} MiB of a body it had already rejected"
    for pid, before in peaks_before.items():
        assert peak_rss_bytes(pid) - before < 16 * MiB
    assert stack.temp_files() == []
    assert requests.get(stack.base + "/health/live", timeout=10).status_code == 200  # still serving


def test_bytes_after_the_closing_boundary_are_not_read(stack: LocalStack) -> None:
    data = png()
    body, ctype = upload_body(data)
    head = (
        f"POST /media HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nAuthorization: Bearer {token()}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body) + 1024 * MiB}\r\n\r\n"
    ).encode()
    response, sent = send_until_answered(stack.port, head, gib_body(body))
    assert response.startswith(b"HTTP/1.1 201"), response[:300]
    assert hashlib.sha256(data).hexdigest().encode() in response
    assert sent < 128 * MiB, f"the server took {sent // MiB} MiB of epilogue"


def test_a_chunked_upload_over_the_limit_is_413_with_no_temp_file(stack: LocalStack) -> None:
    """Without Content-Length the limit is still enforced while streaming."""
    big = GeneratedFile(SMALL_LIMIT + 4 * MiB)
    resp = requests.post(
        stack.base + "/media",
        headers={**bearer(token()), "Content-Type": MULTIPART_CONTENT_TYPE},
        data=multipart_stream(big),
        timeout=60,
    )
    assert resp.status_code == 413, resp.text
    assert resp.json()["limit"] == SMALL_LIMIT
    assert stack.temp_files() == []


def test_the_readme_curl_examples_work_as_written(stack: LocalStack, tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Try it with curl", 1)[1]
    script = section.split("```sh", 1)[1].split("```", 1)[0]
    script = script.replace("127.0.0.1:8080", f"127.0.0.1:{stack.port}")
    env = {
        "PATH": os.environ["PATH"],
        "MEDIA_JWT_SECRET": TEST_SECRET,
        "MEDIA_DATA_DIR": str(stack.data_dir),
        "HOME": str(tmp_path),
    }
    makefile = README.parent / "Makefile"
    script = script.replace("make -s token", f"make -s -f {makefile} -C {README.parent} token")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "304" in lines and "204" in lines and "409" in lines, done.stdout
    assert "200 image/png" in lines, done.stdout  # the signed link, without a token
    assert (tmp_path / "copy.png").read_bytes() == (tmp_path / "pixel.png").read_bytes()
    assert '"status": "ready"' in done.stdout and '"status": "pending"' in done.stdout


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers where PID 1 does not reap)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_make_run_after_a_kill_9_takes_the_embedded_postgres_over_and_stops_it(data_dir: Path) -> None:
    first = LocalStack(data_dir=data_dir / "v").start(timeout=120)
    postmaster = int((first.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    assert first.proc is not None
    workers = first.server_pids()[1:]
    first.stop(signal.SIGKILL)  # what a crash or `kill -9` of `make run` does: no cleanup at all
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert running(postmaster), "the drill needs the server to outlive the killed make run"

    try:
        again = LocalStack(data_dir=data_dir / "v").start(timeout=120)
        try:
            assert requests.get(again.base + "/health/ready", timeout=10).status_code == 200
        finally:
            code = again.stop(signal.SIGINT)  # Ctrl-C
        assert code == 0, again.log()
        deadline = time.monotonic() + 15
        while running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(postmaster), "Ctrl-C left the embedded PostgreSQL running"
    finally:
        if running(postmaster):  # whatever failed, leave no server behind
            os.kill(postmaster, signal.SIGTERM)


def test_make_run_defaults_embedded_postgres_and_a_clean_stop(data_dir: Path) -> None:
    """No MEDIA_DATABASE_URL and no MEDIA_JWT_SECRET: what a fresh `make run` does."""
    stack = LocalStack(data_dir=data_dir / "v").start(timeout=120)
    try:
        secret = (stack.data_dir / "dev" / "jwt-secret").read_text().strip()
        tok = token("dev", secret=secret)
        up = requests.post(
            stack.base + "/media", headers=bearer(tok), files={"file": ("a.png", png())}, timeout=30
        )
        assert up.status_code == 201, up.text
        assert (stack.data_dir / "pg" / "PG_VERSION").exists()
        page = requests.get(stack.base + "/demo/", timeout=10)
        assert page.status_code == 200 and "demo.js" in page.text
        demo_token = requests.get(stack.base + "/demo/token", timeout=10).json()["token"]
        assert requests.get(stack.base + "/media", headers=bearer(demo_token), timeout=10).status_code == 200
        postmaster = int((stack.data_dir / "pg" / "postmaster.pid").read_text().split()[0])
    finally:
        code = stack.stop()
    assert code == 0, stack.log()
    assert not running(postmaster), "the embedded PostgreSQL outlived make run"

    again = LocalStack(data_dir=data_dir / "v").start(timeout=120)  # data persists across runs
    try:
        listed = requests.get(again.base + "/media", headers=bearer(tok), timeout=10).json()
        assert [i["id"] for i in listed["items"]] == [up.json()["id"]]
    finally:
        again.stop()
