"""Content-addressable storage: the contract every blob store keeps, and what they share.

A blob's address is the SHA-256 of its bytes (`check_digest`); paths and keys are built from the
digest alone, never from anything a client sent. The stores: the mounted volume (`localstore.py`),
an S3-compatible bucket (`s3store.py`) and memory, for unit tests (`memorystore.py`); which one
runs is `services.build_store`'s choice (MEDIA_STORAGE).

Write path: `BlobWriter.write` counts, hashes and keeps the first `SNIFF_BYTES` (`Hashing`, shared
by every writer) and raises `BlobTooLarge` the moment the limit is passed; `BlobStore.commit`
gives the finished, durable bytes their address. Who may commit or delete a digest, and when, is
decided by the caller under the repository's per-digest lock (see `media.py`).

Integrity: `verify` re-hashes a stored blob in `CHUNK` reads (`rehash`: bounded memory, paced by
the caller's callback); `quarantine` moves a blob whose bytes no longer match its address out of
it, named with `quarantine_stamp` (see `scrub.py`).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from common.problems import BlobTooLarge

SNIFF_BYTES = 64 * 1024
CHUNK = 1024 * 1024  # what `verify` reads at a time
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_LABEL = re.compile(r"^[a-z0-9-]{1,64}$")


def check_label(label: str) -> str:
    """A temp file's label (what names a pending upload's temp files), checked before it is a path."""
    if not _LABEL.match(label):
        raise ValueError(f"not a temp file label: {label!r}")
    return label


def is_digest(name: str) -> bool:
    return _DIGEST.match(name) is not None


def check_digest(sha256: str) -> str:
    if not is_digest(sha256):
        raise ValueError(f"not a lower-case hex SHA-256 digest: {sha256!r}")
    return sha256


@dataclass(frozen=True)
class StagedBlob:
    sha256: str
    size: int


@dataclass(frozen=True)
class Verification:
    """What re-hashing a stored blob found: its size and the SHA-256 of its bytes."""

    size: int
    actual: str

    def matches(self, sha256: str) -> bool:
        return self.actual == sha256


def rehash(file: BinaryIO, pace: Callable[[int], None] | None = None) -> Verification:
    """Hash `file` to its end in `CHUNK` reads into one buffer; `pace(n)` after each read."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    while n := file.readinto(view):  # type: ignore[attr-defined]
        digest.update(view[:n])
        size += n
        if pace is not None:
            pace(n)
    return Verification(size, digest.hexdigest())


def quarantine_stamp() -> str:
    """The UTC time a quarantined copy is named after (sortable, unique to the microsecond)."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class BlobWriter(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def prefix(self) -> bytes: ...

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> StagedBlob: ...


class BlobStore(Protocol):
    def writer(self, max_bytes: int, label: str = "upload") -> AbstractContextManager[BlobWriter]:
        """A writer into a temp file named after `label` (so its owner can find it later)."""

    def remove_temp(self, label: str) -> int:
        """Remove the temp files of `label` (a pending upload given up by the cleanup)."""

    def commit(self, writer: BlobWriter) -> bool:
        """Give the bytes their address; True when the address already held them (dedup)."""

    def open(self, sha256: str, start: int = 0, length: int | None = None) -> BinaryIO:
        """The bytes from `start` on (`length` of them, or to the end); BlobMissing if none."""

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int | None:
        """The stored blob's size (a stat, a HeadObject), or None when there is none."""

    def delete(self, sha256: str) -> None: ...

    def blobs_older_than(self, seconds: float) -> Iterator[str]:
        """The digests of the blobs stored (or last replaced) more than `seconds` ago."""

    def sweep_temp(self, max_age_seconds: float) -> int: ...

    def check_writable(self) -> None: ...

    def verify(self, sha256: str, pace: Callable[[int], None] | None = None) -> Verification | None:
        """Re-read and re-hash the stored blob (`pace(n)` after each chunk); None if it is missing."""

    def quarantine(self, sha256: str) -> None:
        """Move the blob out of its address into quarantine (kept for inspection); no-op if missing."""

    def free_bytes(self) -> int | None:
        """Free bytes on the volume the blobs are on; None when there is no volume (S3, memory)."""

    def download_url(
        self, sha256: str, content_type: str, disposition: str, cache_control: str
    ) -> str | None:
        """A URL the client may fetch the bytes from directly, or None (the function streams them)."""


class Hashing:
    """The part of every store's writer that sees every byte once: size limit, SHA-256, sniff prefix."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._prefix = bytearray()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def prefix(self) -> bytes:
        return bytes(self._prefix)

    def _take(self, chunk: bytes) -> None:
        self._count(chunk)
        self._hash.update(chunk)

    def _count(self, chunk: bytes) -> None:
        """The size limit and the sniff prefix: decided as the chunk arrives, before any work."""
        self._size += len(chunk)
        if self._size > self._max:
            raise BlobTooLarge(self._max)
        if len(self._prefix) < SNIFF_BYTES:
            self._prefix += chunk[: SNIFF_BYTES - len(self._prefix)]

    def _staged(self) -> StagedBlob:
        return StagedBlob(sha256=self._hash.hexdigest(), size=self._size)
