"""`make bench`: the service in its rehearsal topology (each function its own process, two upload
replicas, nginx as the ingress) measured side by side with nginx itself serving the same files
(sendfile) and accepting WebDAV PUT, on this machine, in one run.

Figures (printed, then the targets of issue #19 as one table with a pass/fail mark per row, all
written to bench/results/rehearsal.json):
- large downloads (100 MiB, 1 GiB): service vs nginx static (target >= 0.95x);
- streaming uploads (100 MiB, 1 GiB; multipart and presigned PUT): service vs nginx PUT (targets
  >= 0.85x and >= 0.9x), and vs nginx PUT + fsync, the same guarantee as the service's;
- random 64 KiB ranges and metadata GETs (JWT + database) at concurrency 1, 16, 64 with wrk:
  requests/s, p50, p99 (targets at 16: >= 4,500 req/s, p99 < 10 ms);
- a 1 KiB content GET at 16 clients: through the ingress (same target), nginx serving the file,
  `bench.ceiling` (the server alone answering a constant 1 KiB: the most one process does here),
  and `make run` (`python -m localdev`, its default workers; target >= 2,500 req/s);
- the two stores (MEDIA_STORAGE=fs, then s3 on moto's S3 server in a second rehearsal): 100 MiB
  uploads (multipart, presigned) and downloads, MiB/s and CPU-seconds per GiB. moto is a Python
  server on the same two cores, holding the objects in memory: its figures show the service's
  overhead with S3 (parts, the copy into place, ranged reads), not what a real S3 service does;
- peak RSS of every function process during the 1 GiB transfers (target < 100 MiB);
- cold start per function (process start to first successful readiness answer, target < 0.4 s);
- what the Kubernetes scaling settings are derived from (infra/k8s): CPU-seconds per GiB uploaded
  (multipart, presigned) and downloaded, counted from /proc for the function's processes; and one
  download process driven directly at its containerConcurrency: requests/s and CPU-ms per
  request for the metadata GET and the 64 KiB range.

Every function runs with its features on at their defaults (the JSON request log, audit events,
metrics, rate limits with room for one benchmarking client). Every loop is bounded in count and
time; all traffic goes to 127.0.0.1. Read the figures with ../shared/notes/benchmarking-here.md in
mind: ratios from one interleaved run, not absolutes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import database, save
from bench.targets import print_targets, targets_table
from common import routing
from common.tokens import issue_hs256
from localdev.harness import MiB, children, free_port, peak_rss_bytes, s3_server, send, spawn_until_ready
from localdev.rehearsal import Rehearsal

GiB = 1024 * MiB
SIZES = (100 * MiB, GiB)
# Back to back, so that every contender writes in the same steady state of the page cache (short
# runs of new-file writes read falsely high: benchmarking-here.md); >= 2 GiB per contender and size.
# Nothing is deleted during the run: a CAS writes new files, and writes into pages freed by a
# delete run several times faster (for nginx most of all), which is not the case being measured.
ROUNDS = {100 * MiB: 20, GiB: 2}
CONCURRENCY = (1, 16, 64)
WRK_SECONDS = 5
RESULTS = Path(__file__).resolve().parent / "results" / "rehearsal.json"
BOUNDARY = "bench-boundary-5d1c"
# The transfers are PDFs: an image's processing is the process function's work (bench.imaging
# measures it), and it would run on the same two cores during the next measurement.
PDF_HEAD = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"


class Payload:
    """`size` bytes that read as a PDF, generated block by block; each instance differs (a new file)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.head = (PDF_HEAD + os.urandom(MiB))[:MiB]
        self.block = os.urandom(MiB)
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        self.sha256 = digest.hexdigest()

    def chunks(self) -> Iterator[bytes]:
        sent = 0
        while sent < self.size:
            piece = (self.head if sent == 0 else self.block)[: self.size - sent]
            sent += len(piece)
            yield piece


def _conn(base: str) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)


def fetch(url: str, headers: dict[str, str]) -> tuple[int, float, str]:
    parts = urlsplit(url)
    conn = _conn(f"{parts.scheme}://{parts.netloc}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    started = time.perf_counter()
    conn.request("GET", target, headers=headers)
    resp = conn.getresponse()
    digest = hashlib.sha256()
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    while n := resp.readinto(buf):
        digest.update(view[:n])
        total += n
    elapsed = time.perf_counter() - started
    conn.close()
    assert resp.status == 200, resp.status
    return total, elapsed, digest.hexdigest()


def multipart(payload: Payload) -> tuple[Iterator[bytes], int, str]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.pdf"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from payload.chunks()
        yield tail

    return body(), len(head) + payload.size + len(tail), f"multipart/form-data; boundary={BOUNDARY}"


def upload_multipart(base: str, auth: dict[str, str], payload: Payload) -> tuple[float, dict[str, Any]]:
    body, length, ctype = multipart(payload)
    status, data, elapsed = send(base, "POST", "/media", {**auth, "Content-Type": ctype}, body, length)
    assert status == 201, data[:300]
    doc: dict[str, Any] = json.loads(data)
    assert doc["sha256"] == payload.sha256
    return elapsed, doc


def upload_presigned(base: str, auth: dict[str, str], size: int) -> float:
    grant = json.dumps({"filename": "b.pdf", "content_type": "application/pdf", "size": size}).encode()
    headers = {**auth, "Content-Type": "application/json"}
    status, data, _ = send(base, "POST", "/media/uploads", headers, iter([grant]), len(grant))
    assert status == 201, data
    url = urlsplit(json.loads(data)["url"])
    status, data, elapsed = send(
        base, "PUT", url.path, {"Content-Type": "application/pdf"}, Payload(size).chunks(), size
    )
    assert status == 200, data[:300]
    return elapsed


def nginx_put(peer: str, path: Path, size: int) -> tuple[float, float]:
    """(seconds for the PUT, seconds for the PUT plus an fsync of the file it wrote).

    nginx answers a WebDAV PUT before the bytes are durable; the service fsyncs before it
    answers. Both figures are reported, so the comparison can be made with equal guarantees.
    """
    status, _, elapsed = send(peer, "PUT", f"/dav/{path.name}", {}, Payload(size).chunks(), size)
    assert status in (201, 204), status
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return elapsed, elapsed + time.perf_counter() - started


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(procs: list[Any]) -> float:
    """User + system CPU time of these functions' processes (gunicorn masters and workers)."""
    total = 0
    for proc in procs:
        for pid in proc.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def download_checked(doc: dict[str, Any], payload: Payload, downloaders: list[Any]) -> tuple[float, float]:
    """GET an uploaded payload back through its content link: (seconds, CPU-seconds of the download
    processes), its bytes checked."""
    before = cpu_seconds(downloaders)
    total, elapsed, digest = fetch(doc["links"]["content"], {})
    used = cpu_seconds(downloaders) - before
    assert total == payload.size
    assert digest == payload.sha256
    return elapsed, used


def large_transfers(rehearsal: Rehearsal, token: str) -> list[dict[str, Any]]:
    auth = {"Authorization": f"Bearer {token}"}
    assert rehearsal.nginx is not None
    peer = rehearsal.nginx.peer_base
    rows = []
    for size in SIZES:
        os.sync()
        keys = ("multipart", "presigned", "nginx_put", "nginx_put_fsync", "download", "nginx_get")
        totals = dict.fromkeys(keys, 0.0)
        cpu = dict.fromkeys(("multipart", "presigned", "download"), 0.0)
        uploaders, downloaders = rehearsal.processes["upload"], rehearsal.processes["download"]
        for i in range(ROUNDS[size]):
            payload = Payload(size)  # fresh bytes every time: the CAS writes a new file
            # Rotate the order each round, so that no contender always follows the same one.
            for step in range(3):
                job = (i + step) % 3
                before = cpu_seconds(uploaders)
                if job == 0:
                    elapsed, doc = upload_multipart(rehearsal.base, auth, payload)
                    totals["multipart"] += elapsed
                    cpu["multipart"] += cpu_seconds(uploaders) - before
                elif job == 1:
                    totals["presigned"] += upload_presigned(rehearsal.base, auth, size)
                    cpu["presigned"] += cpu_seconds(uploaders) - before
                else:
                    raw, durable = nginx_put(
                        peer, rehearsal.nginx.prefix / "dav" / f"put-{size}-{i}.bin", size
                    )
                    totals["nginx_put"] += raw
                    totals["nginx_put_fsync"] += durable

            elapsed, used = download_checked(doc, payload, downloaders)
            totals["download"] += elapsed
            cpu["download"] += used
            sha = payload.sha256
            total, elapsed, digest = fetch(f"{peer}/sha256/{sha[:2]}/{sha[2:4]}/{sha}", {})
            assert digest == payload.sha256
            totals["nginx_get"] += elapsed
        mib = size * ROUNDS[size] / MiB
        rate = {k: round(mib / v, 1) for k, v in totals.items()}
        rows.append(
            {
                "size_mib": size // MiB,
                "rounds": ROUNDS[size],
                "mib_s": rate,
                "download_vs_nginx": round(rate["download"] / rate["nginx_get"], 2),
                "multipart_vs_nginx_put": round(rate["multipart"] / rate["nginx_put"], 2),
                "presigned_vs_nginx_put": round(rate["presigned"] / rate["nginx_put"], 2),
                "multipart_vs_nginx_put_fsync": round(rate["multipart"] / rate["nginx_put_fsync"], 2),
                "presigned_vs_nginx_put_fsync": round(rate["presigned"] / rate["nginx_put_fsync"], 2),
                "cpu_s_per_gib": {k: round(v / (mib / 1024), 2) for k, v in cpu.items()},
            }
        )
    return rows


BACKEND_SIZE = 100 * MiB
BACKEND_ROUNDS = 5


def store_transfers(rehearsal: Rehearsal, token: str) -> dict[str, Any]:
    """100 MiB uploads (multipart, presigned) and downloads on the rehearsal's store, interleaved."""
    auth = {"Authorization": f"Bearer {token}"}
    seconds = dict.fromkeys(("multipart", "presigned", "download"), 0.0)
    cpu = dict.fromkeys(seconds, 0.0)
    uploaders, downloaders = rehearsal.processes["upload"], rehearsal.processes["download"]
    for _ in range(BACKEND_ROUNDS):
        payload = Payload(BACKEND_SIZE)
        before = cpu_seconds(uploaders)
        elapsed, doc = upload_multipart(rehearsal.base, auth, payload)
        seconds["multipart"] += elapsed
        cpu["multipart"] += cpu_seconds(uploaders) - before
        before = cpu_seconds(uploaders)
        seconds["presigned"] += upload_presigned(rehearsal.base, auth, BACKEND_SIZE)
        cpu["presigned"] += cpu_seconds(uploaders) - before
        elapsed, used = download_checked(doc, payload, downloaders)
        seconds["download"] += elapsed
        cpu["download"] += used
    mib = BACKEND_SIZE * BACKEND_ROUNDS / MiB
    return {
        "size_mib": BACKEND_SIZE // MiB,
        "rounds": BACKEND_ROUNDS,
        "mib_s": {k: round(mib / v, 1) for k, v in seconds.items()},
        "cpu_s_per_gib": {k: round(v / (mib / 1024), 2) for k, v in cpu.items()},
    }


def on_s3(env: dict[str, str], tmp: Path, token: str) -> dict[str, Any]:
    """The same transfers with MEDIA_STORAGE=s3, against moto's S3 server on loopback."""
    with s3_server() as s3:
        bucket = s3.new_bucket()
        rehearsal = Rehearsal(
            data_dir=tmp / "data-s3",
            env={
                **env,
                "MEDIA_STORAGE": "s3",
                "MEDIA_S3_BUCKET": bucket,
                "MEDIA_S3_ENDPOINT_URL": s3.endpoint,
                "MEDIA_S3_REGION": "us-east-1",
                "MEDIA_S3_PREFIX": "bench",
            },
        )
        try:
            rehearsal.start()
            return store_transfers(rehearsal, token)
        finally:
            rehearsal.stop()


WRK_SCRIPT = """
local size = {size}
local span = 65536
request = function()
  local first = math.random(0, size - span - 1)
  wrk.headers["Range"] = "bytes=" .. first .. "-" .. (first + span - 1)
  return wrk.format("GET", "{path}")
end
"""


def wrk(
    url: str, connections: int, headers: dict[str, str], script: str | None = None, seconds: int = WRK_SECONDS
) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t",
        str(min(connections, 2)),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--latency",
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        if script:
            f.write(script)
    if script:
        cmd += ["-s", f.name]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30).stdout
    os.unlink(f.name)

    def latency(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "connections": connections,
        "rps": round(float(rps.group(1)), 0) if rps else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


PER_PROCESS_CONNECTIONS = 8  # the download Service's containerConcurrency (MEDIA_THREADS)


def one_download_process(
    rehearsal: Rehearsal, auth: dict[str, str], media_id: str, content: str
) -> dict[str, Any]:
    """One download process on its own port, no ingress, at its containerConcurrency: what one
    Knative pod of `download` does, and the CPU each request costs it (wrk shares the 2 cores)."""
    proc = rehearsal.processes["download"][0]
    rows: dict[str, Any] = {}
    for label, path, script in (
        ("metadata", f"/media/{media_id}", None),
        ("range_64k", content, WRK_SCRIPT.format(size=GiB, path=content)),
    ):
        before = cpu_seconds([proc])
        row = wrk(proc.base + path, PER_PROCESS_CONNECTIONS, auth, script)
        used = cpu_seconds([proc]) - before
        requests = row["rps"] * WRK_SECONDS
        row["cpu_ms_per_request"] = round(1000 * used / requests, 3) if requests else float("nan")
        row["rps_per_cpu"] = round(requests / used) if used else float("nan")
        rows[label] = row
    return rows


class _Jwks(BaseHTTPRequestHandler):
    """The identity provider's JWKS endpoint, for RS256 tokens (one key, served from memory)."""

    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return None


def jwks_provider() -> tuple[ThreadingHTTPServer, Any]:
    """A JWKS server on a loopback port and its private key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    _Jwks.body = json.dumps({"keys": [{**jwk, "kid": "bench", "use": "sig", "alg": "RS256"}]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, private


SMALL = 1024
SMALL_BOUNDARY = "bench-small-5d1c"


def form(filename: str, content_type: str, data: bytes) -> tuple[bytes, str]:
    """A whole multipart body holding `data` as the `file` part, and its Content-Type."""
    head = (
        f'--{SMALL_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{SMALL_BOUNDARY}--\r\n".encode(),
        f"multipart/form-data; boundary={SMALL_BOUNDARY}",
    )


def upload_form(
    base: str, auth: dict[str, str], filename: str, content_type: str, data: bytes
) -> dict[str, Any]:
    """`POST /media` of `data` in one piece; the 201's document."""
    body, form_type = form(filename, content_type, data)
    status, answer, _ = send(
        base, "POST", "/media", {**auth, "Content-Type": form_type}, iter([body]), len(body)
    )
    assert status == 201, answer[:300]
    doc: dict[str, Any] = json.loads(answer)
    return doc


def upload_small(base: str, auth: dict[str, str]) -> dict[str, Any]:
    """A 1 KiB PDF (not an image: nothing to process), for the small-request figures."""
    return upload_form(base, auth, "s.pdf", "application/pdf", b"%PDF-1.4\n" + os.urandom(SMALL - 9))


def processed_photo(base: str, auth: dict[str, str], timeout: float = 120) -> str:
    """A 12 MP JPEG uploaded and waited for until the process function has made its variants."""
    from bench.imaging import encoded_photo

    media_id = str(upload_form(base, auth, "soup.jpg", "image/jpeg", encoded_photo(4000, 3000, "JPEG"))["id"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, answer, _ = send(base, "GET", f"/media/{media_id}", auth, iter([]), 0)
        doc = json.loads(answer)
        if doc.get("processing") in ("done", "failed"):
            assert doc["processing"] == "done", answer[:500]
            assert doc["variants"], answer[:500]
            return media_id
        time.sleep(0.5)
    raise RuntimeError(f"the photo {media_id} was not processed within {timeout} s")


def ceiling(tmp: Path) -> dict[str, Any]:
    """`bench.ceiling`: one process of the service's server answering a constant 1 KiB, with the
    download function's threads, at 16 clients, no ingress: the most a process does here."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    env["MEDIA_THREADS"] = str(routing.function_settings("download").rehearsal_threads)
    proc, _ = spawn_until_ready(
        [sys.executable, "-m", "bench.ceiling", str(port)],
        env,
        tmp / "ceiling.log",
        f"http://127.0.0.1:{port}/",
        30,
        new_session=True,
    )
    try:
        return wrk(f"http://127.0.0.1:{port}/", 16, {})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def make_run_small(env: dict[str, str], tmp: Path, token: str) -> dict[str, Any]:
    """`make run` (`python -m localdev`: one process, every function, its default workers, its own
    embedded PostgreSQL): a 1 KiB content GET at 16 clients, straight, no ingress."""
    port = free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    run_env.update({k: v for k, v in env.items() if k != "MEDIA_DATABASE_URL"})
    run_env.update({"MEDIA_DATA_DIR": str(tmp / "make-run"), "MEDIA_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    proc, _ = spawn_until_ready(
        [sys.executable, "-m", "localdev"],
        run_env,
        tmp / "make-run.log",
        base + "/health/ready",
        180,
        new_session=True,
    )
    try:
        auth = {"Authorization": f"Bearer {token}"}
        small = upload_small(base, auth)
        row = wrk(f"{base}/media/{small['id']}/content", 16, auth)
        row["workers"] = len(children(proc.pid)) or 1
        return row
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def bench_env(database_url: str, secret: str, presign_secret: str) -> dict[str, str]:
    """The functions' environment for a benchmark: every feature on at its defaults (the JSON
    request log, audit events, metrics, rate limiting), except the limits a single benchmarking
    client would trip: the rate limits stay on, counted on every request, with room for the run."""
    return {
        "MEDIA_DATABASE_URL": database_url,
        "MEDIA_JWT_SECRET": secret,
        "MEDIA_PRESIGN_SECRET": presign_secret,
        "MEDIA_MAX_UPLOAD_BYTES": str(2 * GiB),
        "MEDIA_DOWNLOAD_URL_TTL_SECONDS": "3600",
        "MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE": "100000",
        "MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP": "1000000",
        "MEDIA_RATE_LIMIT_UPLOAD_BYTES_PER_HOUR": str(1024 * GiB),
    }


def main() -> int:
    if not shutil.which("wrk") or not shutil.which("nginx"):
        print("make bench needs nginx and wrk (make bench installs them as root)", file=sys.stderr)
        return 2
    secret = "bench-" + os.urandom(16).hex()
    presign_secret = "bench-presign-" + os.urandom(16).hex()
    jwks, signing_key = jwks_provider()
    token = issue_hs256(secret, "bench", ["media:read", "media:write"], ttl_seconds=7200)
    with tempfile.TemporaryDirectory(prefix="mbench", dir="/tmp") as tmp:
        # make run first, alone on the machine, as a front-end developer starts it: its own
        # embedded PostgreSQL, nothing else running.
        make_run = make_run_small(bench_env("", secret, presign_secret), Path(tmp), token)
        url, stop_database = database(Path(tmp))
        env = bench_env(url, secret, presign_secret)
        env["MEDIA_JWKS_URL"] = f"http://127.0.0.1:{jwks.server_port}/jwks"  # RS256 tokens too
        rehearsal = Rehearsal(data_dir=Path(tmp) / "data", env=env)
        try:
            rehearsal.start()
            cold = {
                f"{name}:{p.port}": round(p.cold_start_seconds or 0, 3)
                for name, procs in rehearsal.processes.items()
                for p in procs
            }
            auth = {"Authorization": f"Bearer {token}"}
            # Latency first, on one 1 GiB file, before the gigabytes of the transfer runs leave the
            # page cache full and the kernel busy writing back.
            _, doc = upload_multipart(rehearsal.base, auth, Payload(GiB))
            content = f"/media/{doc['id']}/content"
            # The metadata GETs read what a recipe page asks for: a processed photo, whose document
            # carries its variants, srcset and placeholder.
            media_id = processed_photo(rehearsal.base, auth)
            assert rehearsal.nginx is not None
            sha_path = f"/sha256/{doc['sha256'][:2]}/{doc['sha256'][2:4]}/{doc['sha256']}"
            small = upload_small(rehearsal.base, auth)
            small_path = f"/media/{small['id']}/content"
            small_sha = small["sha256"]
            ranges = []
            metadata = []
            os.sync()
            for c in CONCURRENCY:
                service = wrk(rehearsal.base + content, c, auth, WRK_SCRIPT.format(size=GiB, path=content))
                peer = wrk(
                    rehearsal.nginx.peer_base + sha_path, c, {}, WRK_SCRIPT.format(size=GiB, path=sha_path)
                )
                ranges.append({"service": service, "nginx": peer})
                metadata.append(wrk(f"{rehearsal.base}/media/{media_id}", c, auth))
            small_get = {
                "service": wrk(rehearsal.base + small_path, 16, auth),
                "nginx": wrk(
                    f"{rehearsal.nginx.peer_base}/sha256/{small_sha[:2]}/{small_sha[2:4]}/{small_sha}", 16, {}
                ),
                "server_alone": ceiling(Path(tmp)),
            }
            # The same GET with an RS256 token checked against the JWKS, interleaved with HS256.
            rs256 = jwt.encode(
                {"sub": "bench", "scope": "media:read media:write", "exp": int(time.time()) + 7200},
                signing_key,
                algorithm="RS256",
                headers={"kid": "bench"},
            )
            token_kinds = []
            for kind, bearer in (("HS256", token), ("RS256", rs256), ("HS256", token), ("RS256", rs256)):
                row = wrk(f"{rehearsal.base}/media/{media_id}", 16, {"Authorization": f"Bearer {bearer}"})
                token_kinds.append({"kind": kind, **row})
            per_process = one_download_process(rehearsal, auth, media_id, content)
            transfers = large_transfers(rehearsal, token)
            stores = {"fs": store_transfers(rehearsal, token)}
            rss = {
                f"{name}:{p.port}": round(max(peak_rss_bytes(pid) for pid in p.pids()) / MiB, 1)
                for name, procs in rehearsal.processes.items()
                for p in procs
            }
        finally:
            rehearsal.stop()
        try:
            stores["s3"] = on_s3(env, Path(tmp), token)
        finally:
            stop_database()
            jwks.shutdown()
            jwks.server_close()

    result = {
        "transfers": transfers,
        "stores": stores,
        "ranges_64k": ranges,
        "metadata": metadata,
        "small_content_get": small_get,
        "make_run_small_get": make_run,
        "metadata_by_token": token_kinds,
        "rs256_vs_hs256_rps": _ratio(token_kinds, "rps"),
        "one_download_process": per_process,
        "peak_rss_mib": rss,
        "cold_start_s": cold,
    }
    table = targets_table(result)
    result["targets_table"] = table
    report(result)
    print_targets(table)
    save(RESULTS, result)
    return 0


def _ratio(rows: list[dict[str, Any]], key: str) -> float:
    """Mean of the RS256 rows over the mean of the HS256 rows."""
    rs = [row[key] for row in rows if row["kind"] == "RS256"]
    hs = [row[key] for row in rows if row["kind"] == "HS256"]
    return round((sum(rs) / len(rs)) / (sum(hs) / len(hs)), 3) if rs and hs and sum(hs) else float("nan")


def report(r: dict[str, Any]) -> None:
    print("\nLarge downloads (MiB/s): the service through the nginx ingress, nginx serving the file itself")
    for t in r["transfers"]:
        m = t["mib_s"]
        print(
            f"  {t['size_mib']:>5} MiB  service {m['download']:>8}  nginx {m['nginx_get']:>8}"
            f"  ratio {t['download_vs_nginx']}"
        )
    print(
        "\nStreaming uploads (MiB/s): multipart and presigned PUT through the ingress vs nginx WebDAV PUT."
        "\nThe service fsyncs before it answers, nginx does not: ratios against nginx PUT and PUT + fsync."
    )
    for t in r["transfers"]:
        m = t["mib_s"]
        print(
            f"  {t['size_mib']:>5} MiB  multipart {m['multipart']:>7}  presigned {m['presigned']:>7}"
            f"  nginx PUT {m['nginx_put']:>7}"
            f" (ratios {t['multipart_vs_nginx_put']}/{t['presigned_vs_nginx_put']})"
            f"  PUT+fsync {m['nginx_put_fsync']:>7}"
            f" (ratios {t['multipart_vs_nginx_put_fsync']}/{t['presigned_vs_nginx_put_fsync']})"
        )
    print(
        "\nThe two stores, 100 MiB (MiB/s; CPU-s/GiB of the function's processes). s3 is moto's server"
        "\non the same cores, in memory: it shows the service's overhead with S3, not S3's speed."
    )
    for kind, t in r["stores"].items():
        m, c = t["mib_s"], t["cpu_s_per_gib"]
        print(
            f"  {kind:<3} multipart {m['multipart']:>7} ({c['multipart']})  presigned {m['presigned']:>7}"
            f" ({c['presigned']})  download {m['download']:>7} ({c['download']})"
        )
    print("\nRandom 64 KiB ranges of the 1 GiB file (wrk, 5 s each): req/s, p50 ms, p99 ms")
    for row in r["ranges_64k"]:
        s, n = row["service"], row["nginx"]
        print(
            f"  c={s['connections']:<3} service {s['rps']:>8} {s['p50_ms']:>7} {s['p99_ms']:>7}"
            f"   nginx {n['rps']:>8} {n['p50_ms']:>7} {n['p99_ms']:>7}   non-2xx {s['non_2xx']}"
        )
    print("\nMetadata GET /media/{id} (JWT + PostgreSQL): req/s, p50 ms, p99 ms")
    for m in r["metadata"]:
        print(
            f"  c={m['connections']:<3} {m['rps']:>8} {m['p50_ms']:>7} {m['p99_ms']:>7}"
            f"   non-2xx {m['non_2xx']}"
        )
    s = r["small_content_get"]
    print("\n1 KiB content GET at c=16: req/s, p50 ms, p99 ms")
    for label, m in (
        ("service (ingress)", s["service"]),
        ("nginx (the file)", s["nginx"]),
        ("server alone", s["server_alone"]),
        ("make run", r["make_run_small_get"]),
    ):
        print(f"  {label:<18} {m['rps']:>8} {m['p50_ms']:>7} {m['p99_ms']:>7}   non-2xx {m['non_2xx']}")
    print("\nMetadata GET at c=16 by token kind (RS256 checked against the JWKS): req/s, p50 ms, p99 ms")
    for m in r["metadata_by_token"]:
        print(f"  {m['kind']}  {m['rps']:>8} {m['p50_ms']:>7} {m['p99_ms']:>7}   non-2xx {m['non_2xx']}")
    print(f"  RS256 / HS256 throughput: {r['rs256_vs_hs256_rps']}")
    print("\nCPU-seconds per GiB (the function's processes, from /proc)")
    for t in r["transfers"]:
        c = t["cpu_s_per_gib"]
        print(
            f"  {t['size_mib']:>5} MiB  multipart {c['multipart']:>6}  presigned {c['presigned']:>6}"
            f"  download {c['download']:>6}"
        )
    print(
        f"\nOne download process at c={PER_PROCESS_CONNECTIONS}, no ingress:"
        " req/s, p99 ms, CPU-ms/request, req/s per CPU"
    )
    for label, m in r["one_download_process"].items():
        print(
            f"  {label:<10} {m['rps']:>8} {m['p99_ms']:>7} {m['cpu_ms_per_request']:>7} {m['rps_per_cpu']:>7}"
            f"   non-2xx {m['non_2xx']}"
        )
    print(f"\nPeak RSS per function process (MiB): {r['peak_rss_mib']}")
    print(f"Cold start per function process (s): {r['cold_start_s']}")


if __name__ == "__main__":
    sys.exit(main())
