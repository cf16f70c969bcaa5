"""`make run`'s process against clients nobody controls: stalled and dribbling connections, bodies
that stop, malformed requests, and every HTTP error the service can answer, over raw sockets."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from localdev.harness import LocalStack
from tests.factories import bearer, png, token, upload_body
from tests.support import RunningPostgres, service_env

THREADS = 4
IDLE = 2.0  # MEDIA_BODY_IDLE_TIMEOUT_SECONDS
HEAD = 2.0  # MEDIA_HEADER_TIMEOUT_SECONDS
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def stack(pg: RunningPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = LocalStack(
        data_dir=tmp_path_factory.mktemp("hard"),
        env=service_env(
            pg.url,
            MEDIA_MAX_UPLOAD_BYTES=str(LIMIT),
            MEDIA_THREADS=str(THREADS),
            MEDIA_BODY_IDLE_TIMEOUT_SECONDS=str(IDLE),
            MEDIA_HEADER_TIMEOUT_SECONDS=str(HEAD),
        ),
    ).start()
    yield running
    assert running.stop() == 0, running.log()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/problem+json", self
        assert b"<html" not in self.body.lower()
        doc: dict[str, Any] = json.loads(self.body)
        assert doc["status"] == self.status and doc["title"] and doc["type"] and doc["request_id"]
        return doc


def connect(stack: LocalStack) -> socket.socket:
    return socket.create_connection(("127.0.0.1", stack.port), timeout=10)


def read_answer(sock: socket.socket, timeout: float = 10) -> Answer:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(int(lines[0].split()[1]), headers, body)


def raw(stack: LocalStack, data: bytes, timeout: float = 10) -> Answer:
    with connect(stack) as sock:
        sock.sendall(data)
        return read_answer(sock, timeout)


def upload_head(tok: str, length: int, path: str = "/media", ctype: str | None = None) -> bytes:
    body_type = ctype or "multipart/form-data; boundary=b"
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {tok}\r\n"
        f"Content-Type: {body_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_probes_answer_while_more_stalled_clients_than_threads_hold_the_process(stack: LocalStack) -> None:
    tok = token()
    n = THREADS + 4
    with ExitStack() as stalled:
        idle = [stalled.enter_context(connect(stack)) for _ in range(n)]  # connect, send nothing
        dribbling = [stalled.enter_context(connect(stack)) for _ in range(n)]  # unauthenticated
        for sock in dribbling:
            sock.sendall(b"GET /media HT")
        uploads = [stalled.enter_context(connect(stack)) for _ in range(n)]  # a body that stops
        for sock in uploads:
            sock.sendall(upload_head(tok, 100_000) + b"--b\r\nContent-Disposition: form-data; name=")
        time.sleep(0.5)  # let every one of them reach the server
        for path in ("/health/live", "/health/ready"):
            started = time.monotonic()
            probe = requests.get(stack.base + path, timeout=5)
            elapsed = time.monotonic() - started
            assert probe.status_code == 200, probe.text
            assert elapsed < 1, f"{path} took {elapsed:.2f} s with every request thread taken"
        # The stalled bodies end at the idle timeout with 408; the dribbled heads at the header timeout.
        for sock in uploads:
            answer = read_answer(sock, IDLE + 10)
            assert answer.status == 408 and answer.problem()["type"].endswith("/request-timeout")
            assert answer.headers["connection"] == "close"
        for sock in dribbling:
            answer = read_answer(sock, HEAD + 10)
            assert answer.status == 408 and answer.problem()
        for sock in idle:  # nothing was asked: closed without an answer
            sock.settimeout(HEAD + 10)
            assert sock.recv(100) == b""
    assert stack.temp_files() == []
    assert requests.get(stack.base + "/media", headers=bearer(tok), timeout=5).status_code == 200


def test_a_stalled_presigned_put_is_408_and_its_url_stays_usable(stack: LocalStack) -> None:
    tok = token()
    data = png()
    signed = requests.post(
        stack.base + "/media/uploads",
        json={"filename": "a.png", "content_type": "image/png", "size": len(data)},
        headers=bearer(tok),
        timeout=5,
    ).json()
    path = urlsplit(signed["url"]).path
    with connect(stack) as sock:
        sock.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data[:100]
        )
        started = time.monotonic()
        answer = read_answer(sock, IDLE + 10)
    assert answer.status == 408 and answer.problem()
    assert IDLE - 0.5 < time.monotonic() - started < IDLE + 3
    assert stack.temp_files() == []
    retry = requests.put(signed["url"], data=data, headers={"Content-Type": "image/png"}, timeout=10)
    assert retry.status_code == 200, retry.text


Setup = Callable[[LocalStack], Answer]


def _prepared(stack: LocalStack) -> tuple[str, dict[str, Any], dict[str, Any]]:
    tok = token()
    body, ctype = upload_body(png())
    created = requests.post(
        stack.base + "/media", data=body, headers={**bearer(tok), "Content-Type": ctype}, timeout=10
    ).json()
    signed = requests.post(
        stack.base + "/media/uploads",
        json={"filename": "a.png", "content_type": "image/png", "size": 10},
        headers=bearer(tok),
        timeout=10,
    ).json()
    return tok, created, signed


def _get(stack: LocalStack, path: str, headers: dict[str, str] | None = None) -> Answer:
    lines = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return raw(stack, f"GET {path} HTTP/1.1\r\nHost: t\r\n{lines}Connection: close\r\n\r\n".encode())


def _put_twice(stack: LocalStack, url: str) -> Answer:
    path = urlsplit(url).path
    first = raw(
        stack,
        f"PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 10\r\n\r\n".encode()
        + png()[:10],
    )
    assert first.status == 415  # ten bytes of a PNG header are not a PNG: the record fails
    return raw(
        stack,
        f"PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 10\r\n\r\n".encode()
        + b"x" * 10,
    )


def _too_large(stack: LocalStack, tok: str) -> Answer:
    body, ctype = upload_body(png(700, 700))  # random pixels: about 1.4 MiB
    assert len(body) > LIMIT
    return raw(stack, upload_head(tok, len(body), ctype=ctype) + body)


CASES: dict[str, tuple[int, Callable[[LocalStack, str, dict[str, Any], dict[str, Any]], Answer]]] = {
    "bad parameter": (400, lambda s, t, m, u: _get(s, "/media?limit=0", bearer(t))),
    "malformed request line": (400, lambda s, t, m, u: raw(s, b"BLAH\r\n\r\n")),
    "duplicate Content-Length": (
        400,
        lambda s, t, m, u: raw(s, b"POST /media HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
    ),
    "unknown HTTP version": (400, lambda s, t, m, u: raw(s, b"GET /media HTTP/3.0\r\nHost: t\r\n\r\n")),
    "no token": (401, lambda s, t, m, u: _get(s, "/media")),
    "missing scope": (403, lambda s, t, m, u: _get(s, "/media", bearer(token(scopes=("media:write",))))),
    "unknown route": (404, lambda s, t, m, u: _get(s, "/nothing/here")),
    "wrong method": (405, lambda s, t, m, u: raw(s, b"PUT /media HTTP/1.1\r\nContent-Length: 0\r\n\r\n")),
    "stalled body": (408, lambda s, t, m, u: raw(s, upload_head(t, 1000) + b"--b\r\n", IDLE + 10)),
    "stalled head": (408, lambda s, t, m, u: raw(s, b"GET /media HTTP/1.1\r\nHost: t\r\n", HEAD + 10)),
    "presigned URL used twice": (409, lambda s, t, m, u: _put_twice(s, u["url"])),
    "PUT without Content-Length": (
        411,
        lambda s, t, m, u: raw(
            s,
            f"PUT {urlsplit(u['url']).path} HTTP/1.1\r\nContent-Type: image/png\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        ),
    ),
    "If-Match fails": (
        412,
        lambda s, t, m, u: _get(s, f"/media/{m['id']}/content", {**bearer(t), "If-Match": '"x"'}),
    ),
    "body over the limit": (413, lambda s, t, m, u: _too_large(s, t)),
    "URI too long": (414, lambda s, t, m, u: raw(s, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")),
    "not multipart": (415, lambda s, t, m, u: raw(s, upload_head(t, 2, ctype="text/plain") + b"hi")),
    "range beyond the end": (
        416,
        lambda s, t, m, u: _get(s, f"/media/{m['id']}/content", {**bearer(t), "Range": "bytes=99999999-"}),
    ),
    "Expect it cannot meet": (
        417,
        lambda s, t, m, u: raw(s, b"GET /media HTTP/1.1\r\nExpect: 200-ok\r\n\r\n"),
    ),
    "not JSON": (
        422,
        lambda s, t, m, u: raw(s, upload_head(t, 3, "/media/uploads", "application/json") + b"{x}"),
    ),
    "headers too large": (
        431,
        lambda s, t, m, u: raw(
            s, b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"
        ),
    ),
    "a header too large": (
        431,
        lambda s, t, m, u: raw(s, b"GET / HTTP/1.1\r\nX-A: " + b"b" * 9000 + b"\r\n\r\n"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_http_error_keeps_its_status_as_problem_json(stack: LocalStack, case: str) -> None:
    status, make = CASES[case]
    tok, media, signed = _prepared(stack)
    answer = make(stack, tok, media, signed)
    assert answer.status == status, (case, answer)
    problem = answer.problem()
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert problem["status"] == status
