"""The one HTTP client the service uses to call out (the identity provider: discovery, JWKS,
introspection; CloudEvents to K_SINK): urllib3, with a connection pool per process, explicit
timeouts and no retries.

urllib3 because it is what requests and boto3 stand on (so it is here anyway), it pools and
reuses connections across threads, and its `Timeout` bounds the connect and every read
separately; requests would add a layer and httpx an event loop, for nothing we need. Retrying is
left to the callers, which know whether a stale answer (cached keys) is good enough.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

import urllib3

from common import tracing

MAX_BODY_BYTES = 1024 * 1024  # a JWKS or an introspection answer is a few KiB


class UpstreamUnavailable(Exception):
    """The other side did not answer in time, answered an error, or answered something not JSON."""


class JsonClient(Protocol):
    def get_json(self, url: str) -> Any: ...

    def post_form(
        self, url: str, fields: dict[str, str], basic_auth: tuple[str, str] | None = None
    ) -> Any: ...


class HttpClient:
    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds)
        self._pool: urllib3.PoolManager | None = None
        self._lock = threading.Lock()

    def _manager(self) -> urllib3.PoolManager:
        # Built on first use, in the process that uses it (never inherited across a fork).
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = urllib3.PoolManager(
                        num_pools=4, maxsize=8, retries=False, timeout=self._timeout
                    )
        return self._pool

    def get_json(self, url: str) -> Any:
        return self._request("GET", url, headers={"Accept": "application/json"})

    def post_form(self, url: str, fields: dict[str, str], basic_auth: tuple[str, str] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if basic_auth is not None:
            headers.update(urllib3.make_headers(basic_auth=f"{basic_auth[0]}:{basic_auth[1]}"))
        return self._request("POST", url, headers=headers, fields=fields, encode_multipart=False)

    def post_bytes(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` and answer the status (the answer's body is read and dropped, up to a
        limit); UpstreamUnavailable when nothing answered in time."""
        trace = tracing.current()
        if trace is not None:
            headers = {**headers, "traceparent": trace.child().header()}
        try:
            response = self._manager().request("POST", url, body=body, headers=headers, preload_content=False)
            try:
                response.read(MAX_BODY_BYTES)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamUnavailable(f"POST {url}: {exc.__class__.__name__}") from None
        return int(response.status)

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        trace = tracing.current()
        if trace is not None:  # the call is made for a request: it continues that request's trace
            kwargs.setdefault("headers", {})["traceparent"] = trace.child().header()
        try:
            response = self._manager().request(method, url, preload_content=False, **kwargs)
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamUnavailable(f"{method} {url}: {exc.__class__.__name__}") from None
        try:
            body = response.read(MAX_BODY_BYTES + 1)
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamUnavailable(f"{method} {url}: {exc.__class__.__name__}") from None
        finally:
            response.release_conn()
        if response.status != 200:
            raise UpstreamUnavailable(f"{method} {url}: HTTP {response.status}")
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamUnavailable(f"{method} {url}: the answer is over {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise UpstreamUnavailable(f"{method} {url}: the answer is not JSON") from None
