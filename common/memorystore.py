"""The blob store in memory (`cas.BlobStore`), for unit tests of the use cases: the same answers
as the volume, dedup and replacement included, without a filesystem."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from common.cas import BlobWriter, Hashing, StagedBlob, Verification, check_digest, rehash
from common.problems import BlobMissing


class MemoryBlobWriter(Hashing):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.buffer = bytearray()

    def write(self, chunk: bytes) -> None:
        self._take(chunk)
        self.buffer += chunk

    def finish(self) -> StagedBlob:
        return self._staged()


class InMemoryBlobStore:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.stored_at: dict[str, float] = {}
        self.quarantined: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @contextmanager
    def writer(self, max_bytes: int, label: str = "upload") -> Iterator[BlobWriter]:
        yield MemoryBlobWriter(max_bytes)

    def commit(self, writer: BlobWriter) -> bool:
        """As the volume: the new bytes replace what the address held; True if it held as many."""
        assert isinstance(writer, MemoryBlobWriter)
        staged = writer.finish()
        with self._lock:
            held = self.blobs.get(staged.sha256)
            self.blobs[staged.sha256] = bytes(writer.buffer)
            self.stored_at[staged.sha256] = time.time()
            return held is not None and len(held) == staged.size

    def open(self, sha256: str, start: int = 0, length: int | None = None) -> BinaryIO:
        try:
            data = self.blobs[check_digest(sha256)]
        except KeyError:
            raise BlobMissing(sha256) from None
        return io.BytesIO(data[start : None if length is None else start + length])

    def exists(self, sha256: str) -> bool:
        return check_digest(sha256) in self.blobs

    def size(self, sha256: str) -> int | None:
        held = self.blobs.get(check_digest(sha256))
        return None if held is None else len(held)

    def delete(self, sha256: str) -> None:
        with self._lock:
            self.blobs.pop(check_digest(sha256), None)
            self.stored_at.pop(sha256, None)

    def verify(self, sha256: str, pace: Callable[[int], None] | None = None) -> Verification | None:
        data = self.blobs.get(check_digest(sha256))
        return None if data is None else rehash(io.BytesIO(data), pace)

    def quarantine(self, sha256: str) -> None:
        with self._lock:
            data = self.blobs.pop(check_digest(sha256), None)
            self.stored_at.pop(sha256, None)
            if data is not None:
                self.quarantined[sha256] = data

    def free_bytes(self) -> int | None:
        return None

    def blobs_older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        with self._lock:
            old = [d for d, at in self.stored_at.items() if at <= cutoff]
        yield from old

    def sweep_temp(self, max_age_seconds: float) -> int:
        return 0

    def remove_temp(self, label: str) -> int:
        return 0

    def check_writable(self) -> None:
        return None

    def download_url(
        self, sha256: str, content_type: str, disposition: str, cache_control: str
    ) -> str | None:
        return None
