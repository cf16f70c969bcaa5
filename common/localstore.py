"""The blob store on a mounted volume (`cas.BlobStore`; the S3-compatible twin is `s3store.py`).

Layout: `<root>/sha256/ab/cd/<64 hex>` for blobs, `<root>/tmp/` for uploads in flight (on the same
filesystem, so the final move is a rename).

Write path: a writer holds an exclusive `flock` on its temp file for as long as it lives, so the
sweeper (in any process sharing the volume) leaves the file of a live upload alone however long
its client pauses, and removes the files of writers that died (the kernel drops their locks).
Linux's NFS client maps `flock` to NFS byte-range locks, which are per process: a process's own
live writers are therefore also remembered in memory. `commit` fsyncs the file, renames it to its
address and fsyncs the directory. When the address already holds a file (dedup), the freshly
written and hashed temp file still replaces it, atomically: a size match proves nothing, and this
heals a blob whose bytes rotted for the price of a rename (open readers keep their inode).

Integrity: `quarantine` renames a blob to `<root>/quarantine/<hex>.<UTC timestamp>`. A full volume
(ENOSPC, EDQUOT) is `StorageFull` wherever it shows.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

from common.cas import (
    BlobWriter,
    Hashing,
    StagedBlob,
    Verification,
    check_digest,
    check_label,
    is_digest,
    quarantine_stamp,
    rehash,
)
from common.pipeline import Lane
from common.problems import BlobMissing, StorageFull

T = TypeVar("T")
log = logging.getLogger("media.cas")

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


WRITEBACK_WINDOW = 8 * 1024 * 1024
PIPELINE_AFTER = WRITEBACK_WINDOW  # smaller uploads (most photos) never start a thread


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(2) through libc; None where it does not exist."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    write_flag = 2  # SYNC_FILE_RANGE_WRITE: start writeback of the range, do not wait for it

    def start_writeback(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, write_flag)  # advisory: a failure only means no head start

    return start_writeback


_start_writeback = _load_sync_file_range()


class LocalBlobWriter(Hashing):
    """Writes a temp file, starting its writeback every `WRITEBACK_WINDOW` bytes.

    Without that head start the kernel lets gigabytes of dirty pages pile up, throttles the writer
    once they pass its dirty limit, and the final fsync has all of it still to do (measured here:
    1 GiB written and fsynced at ~400 MiB/s without, ~1.1 GiB/s with).

    Past `PIPELINE_AFTER` bytes, hashing and writing move to a `pipeline.Lane` (a thread of their
    own, a few chunks behind), so that the request thread receives the next chunk meanwhile; the
    size limit and the sniff prefix are still decided as each chunk arrives.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.path = path
        self._file: BinaryIO | None = _no_space_guard(lambda: open(path, "xb"))  # noqa: SIM115
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: never contended
        self._written = 0
        self._synced_to = 0
        self._lane: Lane | None = None
        self.staged: StagedBlob | None = None

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "write after finish"
        self._count(chunk)
        if self._lane is None and self.size <= PIPELINE_AFTER:
            self._store(chunk)
            return
        if self._lane is None:
            self._lane = Lane(self._store, name="media-cas-write")
        self._lane.put(bytes(chunk))  # a copy if the caller's buffer is reused (a bytearray)

    def _store(self, chunk: bytes) -> None:
        """Hash and write one chunk; start the writeback of every full window."""
        assert self._file is not None
        f = self._file
        self._hash.update(chunk)
        _no_space_guard(lambda: f.write(chunk))
        self._written += len(chunk)
        if _start_writeback is not None and self._written - self._synced_to >= WRITEBACK_WINDOW:
            _no_space_guard(f.flush)
            _start_writeback(f.fileno(), self._synced_to, self._written - self._synced_to)
            self._synced_to = self._written

    def finish(self) -> StagedBlob:
        """Flush and fsync the temp file; the bytes are durable before they get an address."""
        if self.staged is None:
            assert self._file is not None
            if self._lane is not None:
                self._lane.close()  # every chunk hashed and written, or the first failure raised
            f = self._file
            _no_space_guard(f.flush)
            _no_space_guard(lambda: os.fsync(f.fileno()))
            f.close()
            self._file = None
            self.staged = self._staged()
        return self.staged

    def discard(self) -> None:
        if self._lane is not None:
            self._lane.abandon()
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "sha256"
        self.tmp = root / "tmp"
        self.quarantined = root / "quarantine"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._live: set[Path] = set()  # this process's writers (see the module's docstring)
        self._live_lock = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        check_digest(sha256)
        return self.blobs / sha256[:2] / sha256[2:4] / sha256

    @contextmanager
    def writer(self, max_bytes: int, label: str = "upload") -> Iterator[BlobWriter]:
        """A temp file on the volume; removed on the way out unless `commit` moved it."""
        path = self.tmp / f"{check_label(label)}--{uuid.uuid4().hex}.part"
        with self._live_lock:
            self._live.add(path)
        try:
            w = LocalBlobWriter(path, max_bytes)
            try:
                yield w
            finally:
                w.discard()
        finally:
            with self._live_lock:
                self._live.discard(path)

    def commit(self, writer: BlobWriter) -> bool:
        """Rename the temp file to its address; True when the address already held a file of the
        same size (dedup). The existing file is replaced all the same: these bytes were just hashed,
        its own may have rotted since (a same-size corruption is healed here for free, a different
        size is logged). Readers that have it open keep the old inode."""
        assert isinstance(writer, LocalBlobWriter)
        staged = writer.finish()
        final = self.path_for(staged.sha256)
        try:
            size = final.stat().st_size
        except FileNotFoundError:
            size = None
        if size is not None and size != staged.size:
            log.warning(
                "blob %s had %d bytes instead of %d; replaced by a new upload", final, size, staged.size
            )
        created = _makedirs(final.parent)
        _no_space_guard(lambda: os.rename(writer.path, final))
        _fsync_dir(final.parent)
        for d in created:
            _fsync_dir(d.parent)
        return size == staged.size

    def open(self, sha256: str, start: int = 0, length: int | None = None) -> BinaryIO:
        try:
            file = open(self.path_for(sha256), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        file.seek(start)  # the response sends `length` from here (sendfile under gunicorn)
        return file

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def size(self, sha256: str) -> int | None:
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, sha256: str) -> None:
        path = self.path_for(sha256)
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def verify(self, sha256: str, pace: Callable[[int], None] | None = None) -> Verification | None:
        try:
            file = open(self.path_for(sha256), "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with file:
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            return rehash(cast(BinaryIO, file), pace)

    def quarantine(self, sha256: str) -> None:
        """Rename the blob to `<root>/quarantine/<hex>.<UTC timestamp>` (same filesystem: atomic)."""
        path = self.path_for(sha256)
        self.quarantined.mkdir(exist_ok=True)
        try:
            os.rename(path, self.quarantined / f"{sha256}.{quarantine_stamp()}")
        except FileNotFoundError:
            return
        _fsync_dir(self.quarantined)
        _fsync_dir(path.parent)

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.root).free

    def blobs_older_than(self, seconds: float) -> Iterator[str]:
        # The rename into place sets the ctime: it is when the blob got its address.
        cutoff = time.time() - seconds
        for outer in _subdirs(self.blobs):
            for inner in _subdirs(Path(outer)):
                for entry in _entries(Path(inner)):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if is_digest(entry.name) and max(st.st_mtime, st.st_ctime) <= cutoff:
                        yield entry.name

    def sweep_temp(self, max_age_seconds: float) -> int:
        """Remove temp files untouched for `max_age_seconds` whose writer is gone."""
        cutoff = time.time() - max_age_seconds
        removed = 0
        for entry in os.scandir(self.tmp):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                    removed += self._remove_abandoned(Path(entry.path))
            except FileNotFoundError:
                continue  # finished or swept by another process meanwhile
        return removed

    def remove_temp(self, label: str) -> int:
        """Remove the temp files of `label` whose writer is gone (a live one removes its own)."""
        return sum(self._remove_abandoned(p) for p in self.tmp.glob(f"{check_label(label)}--*.part"))

    def _remove_abandoned(self, path: Path) -> int:
        """Unlink `path` unless a live writer holds it: 1 if removed, else 0."""
        with self._live_lock:
            if path in self._live:
                return 0
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a writer in another process is alive
        else:
            path.unlink(missing_ok=True)
            return 1
        finally:
            os.close(fd)

    def download_url(
        self, sha256: str, content_type: str, disposition: str, cache_control: str
    ) -> str | None:
        return None

    def check_writable(self) -> None:
        probe = self.tmp / f"ready-{uuid.uuid4().hex}.probe"
        try:
            with open(probe, "xb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:  # removed meanwhile
        return []


def _subdirs(path: Path) -> list[str]:
    return [e.path for e in _entries(path) if e.is_dir(follow_symlinks=False)]


def _makedirs(path: Path) -> list[Path]:
    """Create missing directories; return the ones created, outermost first."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process created it first
            d.mkdir()
    return list(reversed(missing))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_space_guard(op: Callable[[], T]) -> T:
    try:
        return op()
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise StorageFull(str(exc)) from exc
        raise
