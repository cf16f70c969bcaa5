"""Rate limits shared by every process of every function, kept in PostgreSQL.

The algorithm is GCRA (the generic cell rate algorithm, as in ATM networks, and in Redis's
redis-cell and Stripe's limiters): a limit of `quota` per `window_seconds` spaces units
`window / quota` apart; each key stores one timestamp, its theoretical arrival time (TAT). A
request costing `cost` units is allowed when

    max(TAT, now) + cost * window / quota - now <= window

and then moves the TAT to that sum; otherwise nothing changes and the caller may retry once the
excess has drained. So a full quota can be used in a burst, and is then regained continuously.
The repository makes each decision with one atomic statement (`rate_take`), and the maintenance
deletes keys whose TAT has passed (they are at full quota, as if absent): the table holds only
keys active within their window.

The limits (0 switches one off):
- uploads (and presigned URLs) per subject per minute;
- requests per client IP per minute, on uploads, presigning, presigned PUTs and deletes;
- upload bytes per subject per hour, charged while the body streams (every `BYTES_STEP`).

When PostgreSQL cannot be asked, the limiter fails open: the request proceeds, and the failure is
logged and counted. It never adds a wait of its own beyond the database's deadlines.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from common.config import Config
from common.problems import DatabaseUnavailable, TooManyRequests
from common.uploads import Readable

log = logging.getLogger("media.ratelimit")

BYTES_STEP = 8 * 1024 * 1024  # bytes charged per decision while a body streams


@dataclass(frozen=True)
class Limit:
    name: str  # the policy name in the RateLimit headers
    quota: int  # units per window; 0: no limit
    window_seconds: int

    @property
    def emission_seconds(self) -> float:
        return self.window_seconds / self.quota


@dataclass(frozen=True)
class Decision:
    limit: Limit
    allowed: bool
    remaining: int  # units still available now
    reset_seconds: int  # until the whole quota is available again
    retry_after_seconds: int  # when not allowed: until `cost` units are

    def headers(self) -> dict[str, str]:
        """IETF httpapi RateLimit header fields (draft-ietf-httpapi-ratelimit-headers)."""
        name = self.limit.name
        headers = {
            "RateLimit-Policy": f'"{name}";q={self.limit.quota};w={self.limit.window_seconds}',
            "RateLimit": f'"{name}";r={self.remaining};t={self.reset_seconds}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


def decide(limit: Limit, cost: float, allowed: bool, ahead_seconds: float) -> Decision:
    """The decision, from the statement's answer: whether it allowed, and how far the key's TAT is
    now ahead of the clock (the new TAT when allowed, the unchanged one when not)."""
    ahead = max(0.0, ahead_seconds)
    remaining = max(0, math.floor((limit.window_seconds - ahead) / limit.emission_seconds))
    retry = 0 if allowed else max(1, math.ceil(ahead + cost * limit.emission_seconds - limit.window_seconds))
    return Decision(limit, allowed, remaining, math.ceil(ahead), retry)


def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted_hops: int) -> str:
    """The client's address: the peer's, or, behind `trusted_hops` proxies that each append to
    X-Forwarded-For, the entry that many from the right (what a client writes itself is further
    left, and is never believed)."""
    peer = remote_addr or "unknown"
    if trusted_hops <= 0 or not forwarded_for:
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    if not hops:
        return peer
    return hops[-min(trusted_hops, len(hops))][:64]


class RateStore(Protocol):
    def rate_take(
        self, key: str, cost_seconds: float, window_seconds: float, force: bool = False
    ) -> tuple[bool, float]:
        """Atomically: whether `cost_seconds` fit the key's window (when `force`, it is charged
        anyway), and how far the key's TAT is ahead of now afterwards."""


class RateLimiter:
    def __init__(self, store: RateStore, config: Config) -> None:
        self._store = store
        self.uploads = Limit("uploads", config.rate_limit_uploads_per_minute, 60)
        self.requests = Limit("requests", config.rate_limit_requests_per_minute_per_ip, 60)
        self.upload_bytes = Limit("upload-bytes", config.rate_limit_upload_bytes_per_hour, 3600)
        self.failed_open = 0  # decisions skipped because the database could not be asked
        self._lock = threading.Lock()

    def take(self, limit: Limit, who: str, cost: float = 1, *, force: bool = False) -> Decision | None:
        """Charge `cost` units of `limit` to `who`; TooManyRequests (429) when over it (unless
        `force`: then it is charged and allowed). None when the limit is off or the database could
        not be asked (fail open)."""
        if limit.quota <= 0:
            return None
        try:
            allowed, ahead = self._store.rate_take(
                f"{limit.name}:{who}", cost * limit.emission_seconds, limit.window_seconds, force
            )
        except DatabaseUnavailable as exc:
            with self._lock:
                self.failed_open += 1
                count = self.failed_open
            log.warning("rate limit %s not checked (failing open, %d so far): %s", limit.name, count, exc)
            return None
        decision = decide(limit, cost, allowed, ahead)
        if not allowed:
            raise TooManyRequests(
                f"Over the {limit.name} limit of {limit.quota} per {limit.window_seconds} s; "
                f"retry in {decision.retry_after_seconds} s",
                headers=decision.headers(),
            )
        return decision

    def metered(self, stream: Readable, who: str) -> Metered:
        """`stream`, charging its bytes to `who`'s byte budget as they are read; use it as a
        context manager, whose end charges the rest."""
        return Metered(stream, lambda n, final: self.take(self.upload_bytes, who, n, force=final))


class Metered:
    """A read-only stream that charges what passes through it every BYTES_STEP (429 when over
    the budget, so the upload stops there) and, when the block ends, the rest (never refused:
    those bytes have arrived)."""

    def __init__(self, stream: Readable, charge: Callable[[int, bool], object]) -> None:
        self._stream = stream
        self._charge = charge
        self._pending = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._pending += len(data)
        if self._pending >= BYTES_STEP:
            pending, self._pending = self._pending, 0
            self._charge(pending, False)
        return data

    def __enter__(self) -> Metered:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0
            self._charge(pending, True)
