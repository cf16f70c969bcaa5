"""Drive `make run`'s stack as a real process: used by the end-to-end tests and by `make bench`.

`LocalStack` starts `python -m localdev` on a free loopback port, waits for readiness, reads the
memory of its gunicorn processes from /proc, and stops it with SIGTERM. `multipart_stream`
generates a large multipart body chunk by chunk, so neither side ever holds it whole. `s3_server`
starts moto's S3 server on loopback (the tests' and the bench's bucket).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest resident set size the process has had."""
    return _status_kib(pid, "VmHWM") * 1024


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


def http_status(url: str, timeout: float = 2) -> int:
    """The status of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def spawn_until_ready(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    ready_url: str,
    timeout: float,
    new_session: bool = False,
) -> tuple[subprocess.Popen[bytes], float]:
    """Start `cmd` (output to `log_path`) and wait until `ready_url` answers 200.

    Returns the process and the seconds from start to ready. When it exits or is not ready within
    `timeout`, it is killed and RuntimeError names its log.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, which keeps it open
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
    )
    log.close()
    while http_status(ready_url) != 200:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log_path}")
        if time.monotonic() - started > timeout:
            if new_session:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(5)
            raise RuntimeError(f"{cmd[0]} was not ready within {timeout} s; see {log_path}")
        time.sleep(0.02)
    return proc, time.monotonic() - started


@dataclass
class LocalStack:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "stack.log"

    def start(self, timeout: float = 60) -> LocalStack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
        env.update(
            {
                "MEDIA_PORT": str(self.port),
                "MEDIA_HOST": "127.0.0.1",
                "MEDIA_DATA_DIR": str(self.data_dir),
                "MEDIA_PUBLIC_BASE_URL": self.base,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.proc, _ = spawn_until_ready(
                [sys.executable, "-m", "localdev"], env, self.log_path, self.base + "/health/ready", timeout
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def server_pids(self) -> list[int]:
        """The gunicorn master (our launcher) and its workers (not the embedded database)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for child in children(self.proc.pid):
            try:
                exe = os.readlink(f"/proc/{child}/exe")
            except OSError:
                continue
            if "python" in Path(exe).name:
                pids.append(child)
        return pids

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: one per core under `make run` unless MEDIA_WORKERS says otherwise."""
        workers = self.server_pids()[1:]
        assert workers, "no gunicorn worker found"
        return workers

    def temp_files(self) -> list[Path]:
        tmp = self.data_dir / "cas" / "tmp"
        return sorted(tmp.iterdir()) if tmp.exists() else []


BOUNDARY = "media-harness-boundary-c0ffee"
PNG_HEAD = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x02\x00\x00\x00\xd3\x10?1"
)


class GeneratedFile:
    """`size` bytes that libmagic reads as PNG (a PNG header, then pseudo-random blocks)."""

    def __init__(self, size: int, block: int = MiB) -> None:
        self.size = size
        self._block = (PNG_HEAD + os.urandom(block))[:block]
        self._tail_block = os.urandom(block)
        self.sha256 = ""

    def chunks(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        sent = 0
        first = True
        while sent < self.size:
            block = self._block if first else self._tail_block
            first = False
            piece = block[: self.size - sent]
            digest.update(piece)
            sent += len(piece)
            yield piece
        self.sha256 = digest.hexdigest()


def multipart_stream(file: GeneratedFile, filename: str = "big.png") -> Iterator[bytes]:
    yield (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    yield from file.chunks()
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


MULTIPART_CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def send(
    base: str, method: str, path: str, headers: dict[str, str], body: Iterator[bytes], length: int
) -> tuple[int, bytes, float]:
    """Stream `body` (exactly `length` bytes) with http.client; return (status, body, seconds)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
    try:
        started = time.perf_counter()
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        for chunk in body:
            conn.send(chunk)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, time.perf_counter() - started
    finally:
        conn.close()


# --- S3: moto's standalone server ---------------------------------------------------------------


@dataclass
class RunningS3:
    """moto's S3 protocol server on loopback (`moto_server`), started by the tests and the bench;
    or an outside one (MinIO) named by MEDIA_TEST_S3_ENDPOINT."""

    endpoint: str
    proc: Any  # None for an outside server (MEDIA_TEST_S3_ENDPOINT)
    _client: Any = field(default=None, repr=False, compare=False)

    def client(self) -> Any:
        """One client for the server's life (a new one costs ~0.1-0.3 s: boto3 reads the S3 model
        again); made on first use, from the thread that starts the server's users."""
        if self._client is None:
            import boto3

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint, region_name="us-east-1"
            )
        return self._client

    def new_bucket(self) -> str:
        import uuid

        name = f"media-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    @property
    def freezable(self) -> bool:
        return self.proc is not None

    def freeze(self) -> None:
        """The server stops answering without closing a connection (SIGSTOP)."""
        if self.proc is None:
            raise RuntimeError("an outside S3 server cannot be frozen")
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextmanager
def s3_server() -> Iterator[RunningS3]:
    os.environ.update({k: os.environ.get(k, v) for k, v in S3_CREDENTIALS.items()})
    outside = os.environ.get("MEDIA_TEST_S3_ENDPOINT")
    if outside:  # MinIO, say: the same suite against another S3 implementation
        yield RunningS3(outside.rstrip("/"), None)
        return
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):  # noqa: S310 - loopback
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"moto_server did not start: {Path(log.name).read_text()[-2000:]}"
                ) from None
            time.sleep(0.1)
    try:
        yield RunningS3(endpoint, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
        log.close()
        os.unlink(log.name)


# --- photos for the image pipeline's tests and bench -------------------------------------------

UPRIGHT_CORNER = (220, 20, 20)  # the upright photo's top-left quarter: what a rotation must keep


def photo_pixels(width: int, height: int) -> Any:
    """A photo-like picture (a gradient with noise, so encoders have work), its top-left quarter
    red: a Pillow image."""
    from PIL import Image

    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    picture = Image.blend(base, noise, 0.3)
    picture.paste(UPRIGHT_CORNER, (0, 0, width // 2, height // 2))
    return picture


# --- clamd: a real malware scanner with a database of one test signature -------------------------

CLAMD_SIGNATURE = "Eicar-Test-Body"


def eicar() -> bytes:
    """The EICAR anti-virus test string, kept in two pieces so this repository's own files do not
    set off a scanner."""
    return b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def clamd_binary() -> str | None:
    import shutil

    found = shutil.which("clamd")
    if found:
        return found
    return "/usr/sbin/clamd" if os.access("/usr/sbin/clamd", os.X_OK) else None


def clamd_ping(address: str, timeout: float = 1) -> bool:
    """Whether clamd at tcp://host:port or unix:///path answers zPING with PONG."""
    parts = urlsplit(address)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parts.path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 3310), timeout)
        with sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16).rstrip(b"\0").strip() == b"PONG"
    except OSError:
        return False


@dataclass
class RunningClamd:
    address: str  # tcp://127.0.0.1:PORT
    unix_address: str  # unix:///path of its LocalSocket
    process: subprocess.Popen[bytes]
    log_path: Path
    started_seconds: float  # from spawn to the first PONG

    def freeze(self) -> None:
        """clamd stops answering without closing a connection (SIGSTOP): a slow clamd."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@contextmanager
def clamd_server(
    workdir: Path, timeout: float = 60, settings: dict[str, str] | None = None
) -> Iterator[RunningClamd]:
    """clamd with a config and a database of its own under `workdir` (no freshclam: the database is
    one `.ndb` body signature for the EICAR string, reported as `Eicar-Test-Body.UNOFFICIAL`),
    listening on a free loopback port and a unix socket; `settings` add or override clamd.conf lines
    (StreamMaxLength, say). Ready when it answers PING; RuntimeError with its log otherwise."""
    binary = clamd_binary()
    if binary is None:
        raise RuntimeError("clamd is not installed (apt-get install clamav-daemon)")
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "db"
    db.mkdir(exist_ok=True)
    (db / "test.ndb").write_text(f"{CLAMD_SIGNATURE}:0:*:{eicar().hex()}\n")
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    sock_path = workdir / "clamd.sock"
    if len(str(sock_path)) > 100:  # sun_path holds 108 bytes
        sock_path = Path(tempfile.mkdtemp(prefix="clamd-")) / "clamd.sock"
    port = free_port()
    log_path = workdir / "clamd.log"
    conf = {
        "Foreground": "yes",
        "TCPSocket": str(port),
        "TCPAddr": "127.0.0.1",
        "LocalSocket": str(sock_path),
        "DatabaseDirectory": str(db),
        "TemporaryDirectory": str(tmp),
        "PidFile": str(workdir / "clamd.pid"),
        "LogFile": str(log_path),
        "LogTime": "yes",
        "SelfCheck": "3600",
        "Bytecode": "no",
        "StreamMaxLength": "100M",
    }
    if os.geteuid() == 0:
        conf["User"] = "root"
    conf.update(settings or {})
    conf_path = workdir / "clamd.conf"
    conf_path.write_text("".join(f"{key} {value}\n" for key, value in conf.items()))
    started = time.monotonic()
    with open(workdir / "clamd.out", "ab") as out:
        proc = subprocess.Popen([binary, "-c", str(conf_path)], stdout=out, stderr=subprocess.STDOUT)
    address = f"tcp://127.0.0.1:{port}"
    running = RunningClamd(address, f"unix://{sock_path}", proc, log_path, 0.0)
    try:
        while not clamd_ping(address):
            if proc.poll() is not None or time.monotonic() - started > timeout:
                output = (workdir / "clamd.out").read_text(errors="replace")[-2000:]
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise RuntimeError(f"clamd did not start ({state}): {output}\n{running.log()}")
            time.sleep(0.05)
        running.started_seconds = time.monotonic() - started
        yield running
    finally:
        running.stop()
