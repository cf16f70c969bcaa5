"""W3C Trace Context (`traceparent`), pure: read it from a request, make the one to pass on.

`traceparent: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`. A request's trace id goes
into every log line of it (and is the request id when the client sent none); calls the service
makes on its behalf carry the same trace id with a span id of their own.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True)
class Trace:
    trace_id: str
    span_id: str
    flags: str = "01"

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> Trace:
        """The context to send with a call made for this request: same trace, a new span."""
        return Trace(self.trace_id, secrets.token_hex(8), self.flags)


def parse(value: str | None) -> Trace | None:
    """The trace a valid `traceparent` carries, None for anything else (which is then ignored)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return Trace(trace_id, span_id, flags)


def new() -> Trace:
    random = secrets.token_hex(24)  # one read of the OS's randomness for both ids
    return Trace(random[:32], random[32:])


_current: ContextVar[Trace | None] = ContextVar("media_trace", default=None)


@contextmanager
def bound(trace: Trace) -> Iterator[None]:
    """`trace` is the current one for the block (the request being served)."""
    token = _current.set(trace)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Trace | None:
    return _current.get()
