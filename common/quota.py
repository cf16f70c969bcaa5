"""Per-subject quotas: pure decisions, tested without a database.

Usage is logical (what a subject uploaded: a deduplicated blob counts for each owner who has it)
and comes from counters the database keeps in the transaction of every insert and delete
(migration 0006). An upload in flight holds part of its owner's quota: a presign holds the
declared size, a direct upload grows its hold while it streams (`Hold` in `admission.py`). Every
grant is decided under the owner's usage row lock, against what is stored plus what the other
holds have taken, so concurrent uploads by one subject can never pass the quota together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GROW_BYTES = 8 * 1024 * 1024  # a streaming upload asks for this much more at a time


@dataclass(frozen=True)
class Usage:
    bytes: int
    files: int


@dataclass(frozen=True)
class Limits:
    """None: unlimited."""

    bytes: int | None
    files: int | None

    @property
    def unlimited(self) -> bool:
        return self.bytes is None and self.files is None


def grant(stored: Usage, held: Usage, limits: Limits, files: int, need: int, want: int) -> int | None:
    """How many bytes a hold may take (between `need` and `want`, both totals for this hold), with
    `files` files, given what is `stored` and what the subject's other holds have `held`; None when
    even `need` (or the file) would pass the quota."""
    if limits.files is not None and stored.files + held.files + files > limits.files:
        return None
    if limits.bytes is None:
        return want
    room = limits.bytes - stored.bytes - held.bytes
    if need > room:
        return None
    return max(need, min(want, room))


def next_request(size: int, held: int) -> tuple[int, int] | None:
    """A streaming upload at `size` bytes holding `held`: (need, want) to ask for, or None when the
    hold still covers it. It asks ahead by `GROW_BYTES`, so most chunks cost no round trip."""
    if size <= held:
        return None
    return size, size + GROW_BYTES


def exceeded_body(stored: Usage, limits: Limits) -> dict[str, Any]:
    """The extra members of a 413 `quota-exceeded`: what is used and what the limit is."""
    return {
        "usage": {"bytes": stored.bytes, "files": stored.files},
        "limit": {"bytes": limits.bytes, "files": limits.files},
    }


def usage_json(subject: str, stored: Usage, limits: Limits) -> dict[str, Any]:
    """`GET /users/{subject}/usage`."""
    return {
        "subject": subject,
        "bytes": stored.bytes,
        "files": stored.files,
        "quota": {"bytes": limits.bytes, "files": limits.files},
        "remaining": {
            "bytes": None if limits.bytes is None else max(0, limits.bytes - stored.bytes),
            "files": None if limits.files is None else max(0, limits.files - stored.files),
        },
    }
