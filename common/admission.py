"""What an upload must pass before and while its bytes are stored: free space on the volume, its
owner's quota, the malware scanner.

All three ride the one pass over the bytes: `Guarded` wraps the CAS writer, so each chunk grows the
quota hold (before it is written: 413 as soon as the quota would be passed), is written (and
hashed), and goes on to the scanner's stream. The verdict is asked for after the last chunk and
before the commit, so an infected file never gets an address. With the quota, the upload's hold
is settled in the transaction that writes its record (`settle`) and released if it fails.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from common import metrics, quota
from common.cas import BlobWriter, StagedBlob
from common.problems import ContentRejected, InsufficientStorage, QuotaExceeded, ScanFailed
from common.quota import Limits
from common.repository import DigestScope
from common.scanning import NoScanner, ScanLimitExceeded, ScanSession
from common.services import Services

log = logging.getLogger("media.admission")


def limits_of(services: Services) -> Limits:
    return Limits(services.config.quota_bytes_per_user, services.config.quota_files_per_user)


def require_free_space(services: Services) -> None:
    """507 while the CAS volume has less than MEDIA_MIN_FREE_BYTES free (downloads still work)."""
    minimum = services.config.min_free_bytes
    if minimum <= 0:
        return
    free = services.store.free_bytes()
    if free is not None and free < minimum:
        metrics.system(metrics.FREE_SPACE_REFUSALS)
        raise InsufficientStorage(
            f"The storage volume has {free} bytes free, below the {minimum} kept in reserve;"
            " new uploads are refused until space is freed (downloads still work)",
            free_bytes=free,
            min_free_bytes=minimum,
        )


class Hold:
    """An upload's share of its owner's quota while it is in flight (nothing when unlimited)."""

    def __init__(self, services: Services, owner: str, hold_id: uuid.UUID | None = None) -> None:
        self._services = services
        self._limits = limits_of(services)
        self.owner = owner
        self.id = hold_id or uuid.uuid4()
        self.held = 0
        self.active = not self._limits.unlimited
        self._ttl = float(max(services.config.temp_max_age_seconds, 60))

    def take(self, need: int, want: int, ttl_seconds: float | None = None) -> None:
        """Hold `need` bytes (and one file) at least, `want` at most; 413 when even `need` does not fit."""
        if not self.active:
            return
        got = self._services.repo.reserve(
            self.id, self.owner, self._limits, 1, need, want, ttl_seconds or self._ttl
        )
        if got.granted is None:
            which = (
                "files"
                if self._limits.files is not None and got.stored.files >= self._limits.files
                else "bytes"
            )
            metrics.business(metrics.QUOTA_REFUSALS, 1, which)
            raise QuotaExceeded(
                f"This upload would pass the storage quota of {self.owner} ({which})",
                **quota.exceeded_body(got.stored, self._limits),
            )
        self.held = got.granted

    def cover(self, size: int) -> None:
        """A streaming upload is about to reach `size` bytes: grow the hold ahead if needed."""
        if self.active and (wanted := quota.next_request(size, self.held)) is not None:
            self.take(*wanted)

    def settle(self, scope: DigestScope) -> None:
        """In the record's transaction: the counters take over from the hold."""
        if self.active:
            scope.settle_hold(self.id)

    def release(self) -> None:
        if self.active:
            try:
                self._services.repo.release_hold(self.id)
            except Exception:  # it lapses on its own at its expiry
                log.warning("could not release quota hold %s; it lapses at its expiry", self.id)


class Screening:
    """One upload's malware scan: fail closed (503) unless MEDIA_SCAN_FAIL_OPEN=1."""

    def __init__(self, services: Services) -> None:
        self._fail_open = services.config.scan_fail_open
        self.enabled = not isinstance(services.scanner, NoScanner)
        self._session: ScanSession | None = services.scanner.session() if self.enabled else None

    def feed(self, chunk: bytes) -> None:
        if self._session is not None:
            try:
                self._session.feed(chunk)
            except ScanFailed as exc:
                self._failed(exc)

    def verdict(self) -> None:
        """Raises ContentRejected for an infected upload; returns for a clean (or unscanned) one."""
        if self._session is None:
            if self.enabled:
                metrics.system(metrics.SCANS, 1, "unscanned")
            return
        try:
            verdict = self._session.verdict()
        except ScanFailed as exc:
            self._failed(exc)
            metrics.system(metrics.SCANS, 1, "unscanned")
            return
        if verdict.infected:
            metrics.system(metrics.SCANS, 1, "infected")
            raise ContentRejected(
                f"The malware scanner found {verdict.signature}; nothing was stored",
                signature=verdict.signature,
            )
        metrics.system(metrics.SCANS, 1, "clean")

    def _failed(self, exc: ScanFailed) -> None:
        self.close()
        if not self._fail_open or isinstance(exc, ScanLimitExceeded):
            raise exc  # past clamd's StreamMaxLength is a setting to fix, never a reason to skip the scan
        log.warning("malware scanner unavailable (%s): storing unscanned (MEDIA_SCAN_FAIL_OPEN=1)", exc)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


class Guarded:
    """A CAS writer whose every chunk grows the quota hold first and is scanned after it is written."""

    def __init__(self, inner: BlobWriter, hold: Hold, screening: Screening) -> None:
        self.inner = inner
        self.hold = hold
        self.screening = screening

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def prefix(self) -> bytes:
        return self.inner.prefix

    def write(self, chunk: bytes) -> None:
        self.hold.cover(self.inner.size + len(chunk))
        self.inner.write(chunk)
        self.screening.feed(chunk)

    def finish(self) -> StagedBlob:
        return self.inner.finish()


@contextmanager
def guarded(services: Services, writer: BlobWriter, hold: Hold) -> Iterator[Guarded]:
    """`writer` behind the quota hold and the scanner; the hold is released if the block fails
    (once settled in the record's transaction, releasing it again is a no-op)."""
    screening = Screening(services)
    try:
        yield Guarded(writer, hold, screening)
    except BaseException:
        hold.release()
        raise
    finally:
        screening.close()
