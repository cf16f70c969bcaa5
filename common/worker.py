"""The gunicorn worker every function is served with (`common.server`): gthread, hardened against
clients nobody controls.

- A request's head (request line and headers) is read by the worker's event loop, without a
  thread. A connection goes to a request thread only once its head is complete, so clients that
  connect and send nothing, or dribble a request line or headers, hold no thread; one that has not
  sent its head within `MEDIA_HEADER_TIMEOUT_SECONDS` is answered 408 and closed.
- Requests for the probe routes (`x-probe` in the routing table) go to threads of their own:
  Knative's queue-proxy and the kubelet probe the container directly, outside
  `containerConcurrency`, so /health/live and /health/ready answer when every request thread is
  busy with a slow upload.
- While a request is served its socket has a timeout of `MEDIA_BODY_IDLE_TIMEOUT_SECONDS`: a body
  that stops arriving for that long ends the request (408, see `uploads.read_body`), and so does a
  client that stops reading a response.
- A connection that closes after its answer lingers (half-closed, drained) in the event loop
  rather than blocking it, as gunicorn's own graceful close does for up to 2 s per connection.
- gunicorn's own answers to malformed requests (400, 414 for a request line over 8190 bytes, 431
  for headers over the limits, 501, 417) are problem+json, like every other error.
- A body of known length (`Content-Length`) is read by `DirectBody`: a large read is filled
  straight from the socket into one new buffer, instead of passing through gunicorn's two
  read-ahead buffers (0.3-0.4 CPU-seconds less per GiB of upload, twice the receiving rate).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import selectors
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from ssl import SSLError
from typing import Any, ClassVar

from gunicorn.http import errors as http_errors
from gunicorn.http.body import Body, LengthReader
from gunicorn.workers.gthread import TConn, ThreadWorker

from common import routing
from common.config import Config
from common.problems import problem_for_status

log = logging.getLogger("media.server")

PROBE_THREADS = 2
LIMIT_REQUEST_LINE = 8190  # gunicorn's largest; functions-framework sets none at all
MAX_HEAD_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # as gunicorn's own graceful close
LINGER_DRAIN_BYTES = 64 * 1024
METRICS_PATH = "/metrics"  # on every function's own port; never in the routing table or the ingress
DIRECT_READ_BYTES = 64 * 1024  # reads from this size on bypass gunicorn's buffers (DirectBody)

# gunicorn's parse errors that are not a plain 400 (the rest of http_errors.ParseException is).
_STATUS_OF_PARSE_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (http_errors.LimitRequestLine, 414),
    (http_errors.LimitRequestHeaders, 431),
    (http_errors.UnsupportedTransferCoding, 501),
    (http_errors.ExpectationFailed, 417),
    (http_errors.ForbiddenProxyRequest, 403),
    (http_errors.InvalidResponseHeader, 500),  # the application's fault, not the client's
    (http_errors.InvalidResponseHeaderName, 500),
    (http_errors.ConfigurationProblem, 500),
)


@dataclass(frozen=True)
class Settings:
    """What the worker needs to know, from the configuration."""

    header_timeout_seconds: float
    body_idle_timeout_seconds: float
    probe_paths: frozenset[str]

    @classmethod
    def of(cls, config: Config) -> Settings:
        return cls(
            header_timeout_seconds=config.header_timeout_seconds,
            body_idle_timeout_seconds=config.body_idle_timeout_seconds,
            # Probes and scrapes are cheap and must answer when every request thread is busy.
            probe_paths=frozenset({*(r.path for r in routing.routes() if r.probe), METRICS_PATH}),
        )


def problem_bytes(status: int, detail: str, extra_headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response carrying a problem, for answers written below the WSGI app."""
    problem = problem_for_status(status, detail)
    request_id = uuid.uuid4().hex
    body = json.dumps(problem.body(request_id)).encode()
    headers = {
        "Content-Type": "application/problem+json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        "X-Request-ID": request_id,
        **problem.headers(),
        **(extra_headers or {}),
    }
    head = f"HTTP/1.1 {status} {problem.title}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode("latin-1") + body


def head_complete(head: bytes) -> bool:
    return b"\r\n\r\n" in head or b"\n\n" in head


def request_path(head: bytes) -> str:
    """The path of a request's first line (`GET /health/live?x HTTP/1.1` -> `/health/live`)."""
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split(" ")
    return parts[1].split("?", 1)[0] if len(parts) >= 2 else ""


def oversized_head_status(head: bytes) -> int:
    """414 when the request line alone is too long, else 431 (too many or too large headers)."""
    first_line_end = head.find(b"\n")
    return 414 if first_line_end == -1 or first_line_end > LIMIT_REQUEST_LINE else 431


def _recv(sock: socket.socket, size: int) -> bytes | None:
    """What a non-blocking socket has: None when nothing yet, b"" when the peer closed or failed."""
    try:
        return sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


class DirectBody(Body):  # type: ignore[misc]
    """gunicorn's `wsgi.input` for a body of known length, with large reads taken straight off the
    socket.

    gunicorn's own `Body.read(n)` receives into its unreader's buffer, copies that into its own,
    then slices both: each byte of an upload is copied four or five times before the application
    sees it. Here a read of `DIRECT_READ_BYTES` or more is, once nothing is buffered, one
    `recv_into` loop into a buffer of that size, never past the body's end, so the next request on
    the connection stays on the socket. What is buffered (the bytes that came with the head) is
    handed out first, as a shorter read, without waiting for more. gunicorn's bookkeeping
    (`LengthReader.length`, `failed`) stays true, so its drain of an unread rest and its
    keep-alive decision work as before, and the socket's timeout (the body idle timeout) bounds
    each wait.
    """

    def read(self, size: int | None = None) -> bytes:
        reader = self.reader  # gunicorn's LengthReader (handle_request installs no other)
        if size is None or size < DIRECT_READ_BYTES:
            return bytes(super().read(size))
        if self.buf.tell():  # left over from an earlier read through gunicorn's path
            return bytes(super().read(min(size, self.buf.tell())))
        unreader = reader.unreader
        ahead = min(_buffered(unreader), reader.length, size)
        if ahead:  # read ahead with the head: handed out as it is, without waiting for more
            held = unreader.take_buffered()
            unreader.unread(held[ahead:])
            reader.length -= ahead
            return bytes(held[:ahead])
        want = min(size, reader.length)
        buf = bytearray(want)
        got = 0
        with memoryview(buf) as view:
            try:
                while got < want:
                    n = unreader.sock.recv_into(view[got:])
                    if not n:  # the client went away before the end: never reuse this connection
                        self.failed = True
                        break
                    got += n
            except BaseException:
                self.failed = True
                raise
            finally:
                reader.length -= got
        del buf[got:]
        return bytes(buf)


def _buffered(unreader: Any) -> int:
    """How many bytes gunicorn's unreader holds, read ahead of what its parser consumed."""
    with unreader.buf.getbuffer() as view:
        return int(view.nbytes)


class _Conn(TConn):  # type: ignore[misc]
    """gunicorn's connection, whose graceful close is handed to the event loop.

    gunicorn closes a connection gracefully (RFC 9112 §9.6: FIN, then drain what the client still
    sends, up to 2 s) on the event loop's own thread, blocking it: a client that never closes its
    end stalled every other connection of the process for 2 s each. Here the lingering close is
    one more thing the event loop waits for without blocking.
    """

    def __init__(self, *args: Any, linger: Callable[[TConn], None]) -> None:
        super().__init__(*args)
        self._linger = linger

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self._linger(self)
        else:
            super().close()


class MediaWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with request heads read in the event loop, probes apart, deadlines and problem+json.

    What it changes of `ThreadWorker` is listed in the module's docstring; it keeps the rest
    (keep-alive, graceful shutdown, the thread pool for requests).
    """

    settings: ClassVar[Settings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heading: deque[TConn] = deque()  # waiting for their head, oldest first
        self.lingering: deque[TConn] = deque()  # closing: draining what the client still sends
        self.probe_pool: futures.ThreadPoolExecutor | None = None

    def init_process(self) -> None:
        self.probe_pool = futures.ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="media-probe")
        super().init_process()

    # --- heads, read in the event loop ---------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._await_head(_Conn(self.cfg, sock, addr, listener.getsockname(), linger=self._linger))

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        """A kept-alive connection's next request: its head is read here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def _await_head(self, conn: TConn) -> None:
        conn.head = bytearray()
        conn.timeout = time.monotonic() + self.settings.header_timeout_seconds
        self.heading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_data, conn))

    def _on_head_data(self, conn: TConn, client: socket.socket) -> None:
        data = _recv(conn.sock, MAX_HEAD_BYTES)
        if data is None:
            return
        if not data:  # the client went away
            self._drop_heading(conn)
            return
        conn.head += data
        if not head_complete(conn.head) and len(conn.head) < MAX_HEAD_BYTES:
            return
        self.poller.unregister(conn.sock)
        self.heading.remove(conn)
        if not head_complete(conn.head):
            status = oversized_head_status(conn.head)
            self._answer_and_close(conn, problem_bytes(status, "The request head is too large"))
            return
        self.enqueue_req(conn)

    def _drop_heading(self, conn: TConn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.heading.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def _answer_and_close(self, conn: TConn, response: bytes) -> None:
        with contextlib.suppress(OSError):  # best effort: it is small and fits the socket's buffer
            conn.sock.send(response)
        self.nr_conns -= 1
        self._linger(conn)  # the client may still be sending: a plain close could reset the answer

    def _linger(self, conn: TConn) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            TConn.close(conn)
            return
        conn.timeout = time.monotonic() + LINGER_SECONDS
        conn.drained = 0
        self.lingering.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger_data, conn))

    def _on_linger_data(self, conn: TConn, client: socket.socket) -> None:
        data = _recv(conn.sock, LINGER_DRAIN_BYTES)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_DRAIN_BYTES:
            self.lingering.remove(conn)
            self._end_linger(conn)

    def _end_linger(self, conn: TConn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        TConn.close(conn)

    def murder_keepalived(self, force: bool = False) -> None:
        """Called on every turn of the event loop: expire idle kept-alive connections, heads that
        did not arrive in time and lingering closes."""
        super().murder_keepalived(force)
        now = time.monotonic()
        while self.lingering and (force or self.lingering[0].timeout <= now):
            self._end_linger(self.lingering.popleft())
        while self.heading and (force or self.heading[0].timeout <= now):
            conn = self.heading.popleft()
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
            if force or not conn.head:
                self.nr_conns -= 1
                conn.close()  # nothing was asked: nothing to answer
            else:
                self._answer_and_close(conn, problem_bytes(408, "The request head did not arrive in time"))

    # --- requests, in threads ------------------------------------------------------------------------

    def enqueue_req(self, conn: TConn) -> None:
        head = getattr(conn, "head", None)
        probe = head is not None and request_path(bytes(head)) in self.settings.probe_paths
        pool = self.probe_pool if probe and self.probe_pool is not None else self.tpool
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def handle(self, conn: TConn) -> Any:
        head = getattr(conn, "head", None)
        if head is not None:  # hand what the event loop read to gunicorn's parser
            conn.head = None
            conn.data_ready = True
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(head))
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        conn.sock.settimeout(self.settings.body_idle_timeout_seconds)
        body = req.body
        if type(body) is Body and type(body.reader) is LengthReader and body.reader.length:
            req.body = DirectBody(body.reader)  # what `wsgi.input` is, and what gunicorn drains
        return super().handle_request(req, conn)

    # --- gunicorn's own error answers ------------------------------------------------------------------

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        status = 500
        if isinstance(exc, http_errors.ParseException | SSLError):
            status = next((s for cls, s in _STATUS_OF_PARSE_ERROR if isinstance(exc, cls)), 400)
        if status >= 500:
            log.error("error handling a request", exc_info=exc)
            detail = "The server failed to handle the request"
        else:
            log.warning("invalid request from %s: %s", (addr or ("?",))[0], exc)
            detail = str(exc)[:300]
        try:
            client.setblocking(False)
            client.send(problem_bytes(status, detail))
        except OSError:
            log.debug("could not send the error answer")
