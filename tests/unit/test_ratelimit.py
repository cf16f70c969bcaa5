from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from common import memory_repository
from common.config import Config
from common.memory_repository import InMemoryMediaRepository
from common.problems import TooManyRequests
from common.ratelimit import BYTES_STEP, Limit, RateLimiter, client_ip, decide


def limiter(**env: str) -> tuple[RateLimiter, InMemoryMediaRepository]:
    repo = InMemoryMediaRepository()
    return RateLimiter(repo, Config.from_env(env)), repo


def test_a_quota_can_be_used_in_a_burst_and_then_drains_back() -> None:
    rl, _ = limiter(MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="5")
    decisions = [rl.take(rl.uploads, "alice") for _ in range(5)]
    assert [d.remaining for d in decisions if d] == [4, 3, 2, 1, 0]
    with pytest.raises(TooManyRequests) as info:
        rl.take(rl.uploads, "alice")
    headers = info.value.headers()
    assert info.value.status == 429
    assert 1 <= int(headers["Retry-After"]) <= 12  # one unit drains every 60 / 5 = 12 s
    assert headers["RateLimit-Policy"] == '"uploads";q=5;w=60'
    assert headers["RateLimit"].startswith('"uploads";r=0;t=')
    assert rl.take(rl.uploads, "bob") is not None  # another subject, another key


def test_a_zero_limit_is_off_and_an_unreachable_database_fails_open() -> None:
    rl, repo = limiter(
        MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0", MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP="1"
    )
    assert all(rl.take(rl.uploads, "alice") is None for _ in range(100))
    repo.available = False
    assert rl.take(rl.requests, "10.0.0.1") is None  # allowed, counted
    assert rl.take(rl.requests, "10.0.0.1") is None
    assert rl.failed_open == 2


def test_decisions_from_the_stored_timestamp() -> None:
    per_minute = Limit("uploads", 60, 60)
    allowed = decide(per_minute, 1, True, ahead_seconds=10)
    assert (allowed.remaining, allowed.reset_seconds, allowed.retry_after_seconds) == (50, 10, 0)
    denied = decide(per_minute, 1, False, ahead_seconds=59.5)
    assert denied.retry_after_seconds == 1 and denied.remaining == 0
    big = decide(Limit("upload-bytes", 100, 3600), 50, False, ahead_seconds=3000)
    assert big.retry_after_seconds == 3000 + 50 * 36 - 3600  # until 50 units have drained


@pytest.mark.parametrize(
    ("peer", "forwarded", "hops", "expected"),
    [
        ("10.0.0.9", None, 0, "10.0.0.9"),
        ("10.0.0.9", "6.6.6.6", 0, "10.0.0.9"),  # no trusted proxy: the header is the client's word
        ("10.0.0.9", "203.0.113.7", 1, "203.0.113.7"),  # nginx appended the real address
        ("10.0.0.9", "6.6.6.6, 203.0.113.7", 1, "203.0.113.7"),  # a spoofed entry further left
        ("10.0.0.9", "203.0.113.7, 10.1.1.1", 2, "203.0.113.7"),  # two proxies
        ("10.0.0.9", "203.0.113.7", 3, "203.0.113.7"),  # fewer entries than hops: the leftmost
        (None, None, 0, "unknown"),
    ],
)
def test_the_client_ip_counts_only_what_trusted_proxies_appended(
    peer: str | None, forwarded: str | None, hops: int, expected: str
) -> None:
    assert client_ip(peer, forwarded, hops) == expected


def test_bytes_are_charged_while_streaming_and_the_rest_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock stands still: the 100 bytes below are 14 ms of this quota's drain, which a slow
    # run could spend between the two uploads (CI, once: the refused step then fitted).
    monkeypatch.setattr(
        memory_repository, "time", SimpleNamespace(time=lambda: 1_800_000_000.0, monotonic=time.monotonic)
    )
    rl, repo = limiter(MEDIA_RATE_LIMIT_UPLOAD_BYTES_PER_HOUR=str(3 * BYTES_STEP))
    body = io.BytesIO(b"x" * (2 * BYTES_STEP + 100))
    with rl.metered(body, "alice") as metered:
        while metered.read(1024 * 1024):
            pass
    ahead = repo.rates["upload-bytes:alice"]
    # 2 steps and 100 bytes are used: a whole step no longer fits.
    with pytest.raises(TooManyRequests), rl.metered(io.BytesIO(b"y" * (2 * BYTES_STEP)), "alice") as more:
        while more.read(1024 * 1024):
            pass
    assert repo.rates["upload-bytes:alice"] == ahead  # the refused step was not charged
