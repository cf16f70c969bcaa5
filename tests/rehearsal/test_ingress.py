"""The nginx ingress generated from the routing table: every route reaches its function, the rest
is answered as problem+json."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from common import routing
from localdev import nginx
from localdev.rehearsal import Nginx, Rehearsal
from tests.factories import bearer, png, token, upload_body


def test_the_generated_config_is_valid_nginx(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "dav", "dav-tmp"):
        (tmp_path / sub).mkdir()
    upstreams = {name: [10001 + i] for i, name in enumerate(routing.functions())}
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx.ingress_config(tmp_path, 10000, upstreams, nginx.peer_server(tmp_path, 10999, tmp_path))
    )
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    for route in routing.public_routes():
        assert f"fn_{route.function};" in conf.read_text()


def test_nginx_starts_on_new_ports_when_one_it_was_given_was_taken_meanwhile(tmp_path: Path) -> None:
    # The ports are picked when the rehearsal is planned and bound seconds later, once every
    # function runs: a port taken meanwhile (an outgoing connection's, say) must not fail the start.
    class Live(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # every function's stand-in: /health/live answers 200
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    functions = ThreadingHTTPServer(("127.0.0.1", 0), Live)
    threading.Thread(target=functions.serve_forever, daemon=True).start()
    upstreams = {name: [functions.server_port] for name in routing.functions()}
    ingress = None
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            ingress = Nginx(prefix=tmp_path / "nginx", peer_port=busy).start(upstreams, tmp_path)
            assert "Address already in use" in (tmp_path / "nginx" / "error.log").read_text()
            assert ingress.peer_port != busy
            assert requests.get(ingress.base + "/health/live", timeout=5).status_code == 200
    finally:
        if ingress is not None:
            ingress.stop()
        functions.shutdown()
        functions.server_close()


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        ("/media/{id}/content", "/media/6b8f1c8a-4b7e-4f0e-9c1d-2a3b4c5d6e7f/content", True),
        ("/media/{id}/content", "/media/abc/content", False),  # `format: uuid`
        ("/media/uploads/{token}", "/media/uploads/v1.abc.def", True),
        ("/media/uploads/{token}", "/media/uploads/a/b", False),
        ("/media", "/media/", False),
        ("/health/live", "/health/live", True),
    ],
)
def test_path_templates_become_anchored_regexes(template: str, path: str, matches: bool) -> None:
    assert bool(re.match(routing.path_regex(template), path)) is matches


def test_routes_reach_their_functions_and_the_rest_is_problem_json(rehearsal: Rehearsal) -> None:
    # Every function of the routing table runs, as many processes as its x-functions entry says.
    assert {name: len(procs) for name, procs in rehearsal.processes.items()} == {
        name: routing.function_settings(name).rehearsal_processes for name in routing.functions()
    }
    assert len(rehearsal.processes["upload"]) == 2
    tok = token()
    body, ctype = upload_body(png())
    created = requests.post(
        rehearsal.base + "/media", data=body, headers={**bearer(tok), "Content-Type": ctype}, timeout=30
    )
    assert created.status_code == 201
    doc = created.json()
    assert requests.get(doc["links"]["self"], headers=bearer(tok), timeout=10).status_code == 200
    assert (
        requests.head(
            f"{rehearsal.base}/media/{doc['id']}/content", headers=bearer(tok), timeout=10
        ).status_code
        == 200
    )
    assert requests.get(rehearsal.base + "/health/ready", timeout=10).json()["status"] == "ready"
    preflight = requests.options(rehearsal.base + "/media/uploads", timeout=10)
    assert preflight.status_code == 204 and "POST" in preflight.headers["Allow"]

    missing = requests.get(rehearsal.base + "/nothing/here", timeout=10)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.json()["request_id"]
    wrong = requests.put(rehearsal.base + "/media", timeout=10)
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert wrong.json()["status"] == 405


def test_each_function_answers_metrics_on_its_own_port_and_the_ingress_never_does(
    rehearsal: Rehearsal,
) -> None:
    assert requests.get(rehearsal.base + "/health/live", timeout=10).status_code == 200
    for name, procs in rehearsal.processes.items():
        for proc in procs:
            scraped = requests.get(proc.base + "/metrics", timeout=10)
            assert scraped.status_code == 200, (name, scraped.text[:200])
            assert scraped.headers["Content-Type"].startswith("text/plain; version=")
            assert "# TYPE media_http_requests_total counter" in scraped.text
    health = requests.get(rehearsal.processes["health"][0].base + "/metrics", timeout=10).text
    assert (
        'media_http_requests_total{function="health",method="GET",route="/health/live",status="200"}'
        in health
    )
    for method in ("GET", "HEAD", "POST"):
        hidden = requests.request(method, rehearsal.base + "/metrics", timeout=10)
        assert hidden.status_code == 404, (method, hidden.status_code)
        assert hidden.headers["Content-Type"] == "application/problem+json"
        assert "media_" not in hidden.text


def test_make_up_serves_through_nginx_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """`make up` as a person runs it: embedded PostgreSQL, development secrets, Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    env.update({"MEDIA_DATA_DIR": str(tmp_path / "v"), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "localdev.rehearsal"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        ingress = next(line.split()[-1] for line in lines if line.startswith("ingress"))
        pids = [int(line.split("pid")[1].split()[0]) for line in lines if " pid " in line]
        expected = sum(routing.function_settings(f).rehearsal_processes for f in routing.functions())
        assert len(pids) == expected >= 7, lines  # every function; two each for upload and download
        assert requests.get(ingress + "/health/ready", timeout=10).status_code == 200
        secret = (tmp_path / "v" / "dev" / "jwt-secret").read_text().strip()
        assert (
            requests.get(ingress + "/media", headers=bearer(token(secret=secret)), timeout=10).status_code
            == 200
        )
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "\nState:\tZ" in status.read_text(), (
            f"function process {pid} outlived make up"
        )


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"BLAH\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET /media HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        (b"POST /media HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /media HTTP/3.0\r\nHost: t\r\n\r\n", 505),
        (b"GET /_ingress_problems/400 HTTP/1.1\r\nHost: t\r\n\r\n", 404),  # internal: not routable
    ],
)
def test_what_the_ingress_answers_itself_is_problem_json(
    rehearsal: Rehearsal, request_bytes: bytes, status: int
) -> None:
    host, port = rehearsal.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), head
    assert b"Content-Type: application/problem+json" in head
    doc = json.loads(body)
    assert doc["status"] == status and doc["type"].startswith("https://media.recipes.example/problems/")
    assert doc["request_id"] and doc["request_id"] != "$request_id"


def test_make_up_processes_images_through_the_process_functions_own_events(rehearsal: Rehearsal) -> None:
    from tests.factories import photo

    tok = token()
    up = requests.post(
        rehearsal.base + "/media",
        headers=bearer(tok),
        files={"file": ("tart.jpg", photo(900, 600), "image/jpeg")},
        timeout=30,
    )
    assert up.status_code == 201, up.text
    deadline = time.monotonic() + 60
    while (doc := requests.get(up.json()["links"]["self"], headers=bearer(tok), timeout=10).json())[
        "processing"
    ] == "pending":
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)
    assert doc["processing"] == "done" and doc["width"] == 900
    avif = requests.get(doc["links"]["content"] + "&w=640", headers={"Accept": "image/avif"}, timeout=10)
    assert avif.headers["Content-Type"] == "image/avif" and avif.headers["Vary"] == "Accept"
    assert requests.post(rehearsal.base + "/events", data=b"{}", timeout=10).status_code == 404  # internal
