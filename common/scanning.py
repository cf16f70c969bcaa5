"""The malware-scanner seam: a `Scanner` opens one `ScanSession` per upload, which is fed every chunk
while the upload is written and then asked for a `Verdict`.

`ClamdScanner` speaks clamd's `zINSTREAM` protocol; `NoScanner` (MEDIA_SCAN=off) passes everything;
`MemoryScanner` is the in-memory twin for unit tests. Every failure to get an answer from the engine
(refused, unreachable, too slow, an ERROR or garbage reply) raises `common.problems.ScanFailed`.

Hand-written on purpose: the PyPI clamd clients (`clamd` last released 2014, `pyclamd` 2017) are
unmaintained and offer neither per-operation deadlines nor a streaming, chunk-by-chunk feed API.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from common.problems import ScanFailed

# clamd's StreamMaxLength bounds the whole stream (default 25 MiB); a frame far below it is safe, and
# clamd reads each frame into memory, so no frame is larger than this.
MAX_FRAME = 1024 * 1024
END_OF_STREAM = b"\0\0\0\0"
_MAX_REPLY = 4096  # longer than any reply clamd sends to INSTREAM or PING


@dataclass(frozen=True)
class Verdict:
    infected: bool
    signature: str | None


CLEAN = Verdict(infected=False, signature=None)


class ScanLimitExceeded(ScanFailed):
    """clamd refused the stream as larger than its StreamMaxLength (a ScanFailed: nothing scanned)."""


class ScanSession(Protocol):
    def feed(self, chunk: bytes) -> None:
        """Stream `chunk` to the engine now (nothing is buffered beyond one frame)."""

    def verdict(self) -> Verdict:
        """The engine's answer, once, after the last chunk."""

    def close(self) -> None:
        """Release the connection; always called, idempotent."""


class Scanner(Protocol):
    def session(self) -> ScanSession: ...

    def ping(self) -> None:
        """Readiness: returns when the engine answers, raises ScanFailed otherwise."""


# --- The wire protocol, pure --------------------------------------------------------------------


def frame(chunk: bytes, max_frame: int = MAX_FRAME) -> Iterator[bytes]:
    """INSTREAM frames for `chunk`: 4-byte big-endian length, then the bytes; split at `max_frame`.
    An empty chunk gives no frame (a zero-length frame would end the stream)."""
    view = memoryview(chunk)
    for start in range(0, len(view), max_frame):
        piece = view[start : start + max_frame]
        yield struct.pack(">I", len(piece)) + piece


def parse_reply(raw: bytes) -> Verdict:
    """clamd's answer to INSTREAM: `stream: OK`, `stream: <Name> FOUND`; anything else (`... ERROR`,
    an empty or garbled reply) raises ScanFailed."""
    text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
    if text.endswith(" ERROR"):
        message = text.removeprefix("stream:").strip()
        if "size limit exceeded" in message:
            raise ScanLimitExceeded(f"clamd: {message}")
        raise ScanFailed(f"clamd: {message}")
    if text == "stream: OK":
        return CLEAN
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        name = text.removeprefix("stream: ").removesuffix(" FOUND").strip()
        if name:
            return Verdict(infected=True, signature=name)
    raise ScanFailed(f"clamd answered something unexpected: {text[:200]!r}" if text else "clamd: no reply")


# --- clamd ---------------------------------------------------------------------------------------


class ClamdScanner:
    """clamd at `tcp://host:port` or `unix:///path`; every connect, send and reply wait is bounded
    by `timeout_seconds`. Stateless: one instance may be shared by every thread; a session may not."""

    def __init__(self, address: str, timeout_seconds: float) -> None:
        parsed = urlsplit(address)
        self._family: socket.AddressFamily
        self._target: str | tuple[str, int]
        if parsed.scheme == "unix" and parsed.path:
            self._family, self._target = socket.AF_UNIX, parsed.path
        elif parsed.scheme == "tcp" and parsed.hostname and parsed.port:
            self._family, self._target = socket.AF_INET, (parsed.hostname, parsed.port)
        else:
            raise ValueError(f"a clamd address is tcp://host:port or unix:///path, got {address!r}")
        self.address = address
        self.timeout_seconds = timeout_seconds

    def connect(self) -> socket.socket:
        """A connected socket with `timeout_seconds` on every operation (ScanFailed when refused)."""
        try:
            if isinstance(self._target, tuple):
                return socket.create_connection(self._target, timeout=self.timeout_seconds)
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout_seconds)
                sock.connect(self._target)
            except BaseException:
                sock.close()
                raise
            return sock
        except OSError as exc:
            raise ScanFailed(f"cannot reach clamd at {self.address}: {_describe(exc)}") from exc

    def session(self) -> ClamdSession:
        return ClamdSession(self)

    def ping(self) -> None:
        with self.connect() as sock:
            try:
                sock.sendall(b"zPING\0")
                reply = _read_reply(sock, time.monotonic() + self.timeout_seconds)
            except OSError as exc:
                raise ScanFailed(f"clamd at {self.address} did not answer PING: {_describe(exc)}") from exc
        if reply.rstrip(b"\0").strip() != b"PONG":
            raise ScanFailed(f"clamd answered PING with {reply[:100]!r}")


class ClamdSession:
    """One INSTREAM exchange: connects on the first chunk, sends each chunk as it comes."""

    def __init__(self, scanner: ClamdScanner) -> None:
        self._scanner = scanner
        self._sock: socket.socket | None = None
        self._done = False
        self._failed: ScanFailed | None = None  # once failed, every later call fails fast, the same way

    def _socket(self) -> socket.socket:
        if self._failed is not None:
            raise self._failed
        if self._done:
            raise RuntimeError("this scan session is over")
        if self._sock is None:
            sock = self._scanner.connect()
            self._sock = sock
            self._send(b"zINSTREAM\0")
        return self._sock

    def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)  # the socket timeout bounds the whole sendall
        except OSError as exc:
            early = self._early_reply()  # clamd hangs up with a reason (a size limit, say)
            self.close()
            if early:
                parse_reply(early)  # raises on ERROR
            raise ScanFailed(f"sending to clamd at {self._scanner.address} failed: {_describe(exc)}") from exc

    def _early_reply(self) -> bytes:
        assert self._sock is not None
        try:
            return _read_reply(self._sock, time.monotonic() + min(self._scanner.timeout_seconds, 1.0))
        except OSError:
            return b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        try:
            self._socket()
            for piece in frame(chunk):
                self._send(piece)
        except ScanFailed as exc:
            self._failed = exc
            self.close()
            raise

    def verdict(self) -> Verdict:
        try:
            sock = self._socket()
            self._send(END_OF_STREAM)
            try:
                reply = _read_reply(sock, time.monotonic() + self._scanner.timeout_seconds)
            except OSError as exc:
                raise ScanFailed(
                    f"clamd at {self._scanner.address} gave no verdict: {_describe(exc)}"
                ) from exc
            return parse_reply(reply)
        except ScanFailed as exc:
            self._failed = exc
            raise
        finally:
            self.close()

    def close(self) -> None:
        self._done = True
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()


def _read_reply(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to clamd's NUL terminator (or its hang-up), by `deadline` (TimeoutError after it)."""
    reply = b""
    while not reply.endswith(b"\0") and len(reply) < _MAX_REPLY:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(remaining)
        data = sock.recv(_MAX_REPLY - len(reply))
        if not data:
            break
        reply += data
    return reply


def _describe(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or type(exc).__name__


# --- Without clamd -------------------------------------------------------------------------------


class NoSession:
    def feed(self, chunk: bytes) -> None:
        pass

    def verdict(self) -> Verdict:
        return CLEAN

    def close(self) -> None:
        pass


class NoScanner:
    """MEDIA_SCAN=off: every upload is clean."""

    def session(self) -> NoSession:
        return NoSession()

    def ping(self) -> None:
        pass


class MemorySession:
    def __init__(self, scanner: MemoryScanner) -> None:
        self._scanner = scanner
        self._tail = b""  # the last len(marker) - 1 bytes: a marker across chunks is still found
        self.found = False
        self.fed_bytes = 0
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        if self.closed:
            raise RuntimeError("this scan session is over")
        if self._scanner.fail:
            raise ScanFailed("the memory scanner was told to fail")
        marker = self._scanner.marker
        window = self._tail + chunk
        self.found = self.found or marker in window
        self._tail = window[-(len(marker) - 1) :] if len(marker) > 1 else b""
        self.fed_bytes += len(chunk)

    def verdict(self) -> Verdict:
        if self.closed:
            raise RuntimeError("this scan session is over")
        if self._scanner.fail:
            raise ScanFailed("the memory scanner was told to fail")
        return Verdict(infected=True, signature=self._scanner.signature) if self.found else CLEAN

    def close(self) -> None:
        self.closed = True


class MemoryScanner:
    """Infected when `marker` appears anywhere in the stream; `fail=True` raises ScanFailed from
    ping, feed and verdict (clamd down). `sessions` lists every session, for assertions."""

    signature = "Memory-Test-Signature"

    def __init__(self, marker: bytes = b"EICAR", *, fail: bool = False) -> None:
        if not marker:
            raise ValueError("the marker must not be empty")
        self.marker = marker
        self.fail = fail
        self.sessions: list[MemorySession] = []

    def session(self) -> MemorySession:
        session = MemorySession(self)
        self.sessions.append(session)
        return session

    def ping(self) -> None:
        if self.fail:
            raise ScanFailed("the memory scanner was told to fail")
