from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from common.cas import SNIFF_BYTES
from common.localstore import PIPELINE_AFTER, LocalBlobStore
from common.memorystore import InMemoryBlobStore
from common.problems import BlobMissing, BlobTooLarge, StorageFull


def store_bytes(store: LocalBlobStore, data: bytes, chunk: int = 7000) -> str:
    with store.writer(10**9) as w:
        for i in range(0, len(data), chunk):
            w.write(data[i : i + chunk])
        staged = w.finish()
        store.commit(w)
    return staged.sha256


def test_commit_moves_the_bytes_to_their_address(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = os.urandom(100_000)
    digest = store_bytes(store, data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = tmp_path / "sha256" / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []
    with store.open(digest) as f:
        assert f.read() == data


def test_past_the_pipeline_threshold_the_bytes_and_digest_are_the_same(tmp_path: Path) -> None:
    """Beyond PIPELINE_AFTER the hashing and writing move to a thread; nothing changes outside.
    The chunks come in a reused bytearray, as a reader into one buffer would hand them."""
    store = LocalBlobStore(tmp_path)
    data = os.urandom(PIPELINE_AFTER * 2 + 12345)
    buffer = bytearray(1 << 20)
    with store.writer(10**9) as w:
        for i in range(0, len(data), len(buffer)):
            piece = data[i : i + len(buffer)]
            buffer[: len(piece)] = piece
            w.write(cast(bytes, memoryview(buffer)[: len(piece)]))  # refilled right after
        assert w._lane is not None  # type: ignore[attr-defined]  # the thread did the work
        assert w.prefix == data[:SNIFF_BYTES] and w.size == len(data)
        staged = w.finish()
        store.commit(w)
    assert staged.sha256 == hashlib.sha256(data).hexdigest()
    with store.open(staged.sha256) as f:
        assert f.read() == data


def test_a_full_volume_met_by_the_writing_thread_fails_the_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBlobStore(tmp_path)
    chunk = os.urandom(1 << 20)
    with pytest.raises(StorageFull), store.writer(10**10) as w:
        for _ in range(PIPELINE_AFTER // len(chunk)):
            w.write(chunk)  # written here: no thread yet
        real = w._file.write  # type: ignore[attr-defined]

        def full(data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(w._file, "write", full)  # type: ignore[attr-defined]
        for _ in range(50):
            w.write(chunk)  # the lane's write fails; a later write or finish says so
        assert w._lane is not None  # type: ignore[attr-defined]
        w.finish()
    assert real is not None
    assert list((tmp_path / "tmp").iterdir()) == []
    assert [p for p in (tmp_path / "sha256").rglob("*") if p.is_file()] == []


def test_the_same_bytes_twice_keep_one_copy(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = os.urandom(5000)
    assert store_bytes(store, data) == store_bytes(store, data)
    assert len([p for p in (tmp_path / "sha256").rglob("*") if p.is_file()]) == 1
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_writer_keeps_the_sniff_prefix(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = os.urandom(SNIFF_BYTES * 3)
    with store.writer(10**9) as w:
        for i in range(0, len(data), 1000):
            w.write(data[i : i + 1000])
        assert w.prefix == data[:SNIFF_BYTES]
        assert w.size == len(data)


def test_exceeding_the_limit_raises_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(BlobTooLarge), store.writer(10) as w:
        w.write(b"12345")
        w.write(b"678901")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert [p for p in (tmp_path / "sha256").rglob("*") if p.is_file()] == []


def test_an_uncommitted_writer_removes_its_temp_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with store.writer(100) as w:
        w.write(b"abc")
        assert len(list((tmp_path / "tmp").iterdir())) == 1
    assert list((tmp_path / "tmp").iterdir()) == []


def test_delete_and_missing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store_bytes(store, b"hello")
    assert store.exists(digest)
    store.delete(digest)
    assert not store.exists(digest)
    store.delete(digest)  # idempotent
    with pytest.raises(BlobMissing):
        store.open(digest)


def test_a_damaged_blob_is_replaced_by_the_next_upload_of_its_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = store_bytes(store, b"the right bytes")
    store.path_for(digest).write_bytes(b"the ri")  # truncated on the volume
    assert store_bytes(store, b"the right bytes") == digest
    with store.open(digest) as f:
        assert f.read() == b"the right bytes"
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "ab", "g" * 64])
def test_paths_come_from_digests_only(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        LocalBlobStore(tmp_path).path_for(bad)


def test_sweep_removes_only_stale_temp_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    stale = tmp_path / "tmp" / "upload-old.part"
    fresh = tmp_path / "tmp" / "upload-new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert store.sweep_temp(3600) == 1
    assert not stale.exists()
    assert fresh.exists()
    assert store.sweep_temp(0) == 1
    assert not fresh.exists()


def test_the_sweep_leaves_the_file_of_a_live_writer_alone_however_old(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    old = time.time() - 7200
    with store.writer(100) as w:
        w.write(b"abc")
        (part,) = (tmp_path / "tmp").iterdir()
        os.utime(part, (old, old))  # its client paused for two hours
        assert store.sweep_temp(3600) == 0  # this process knows its own writers
        assert LocalBlobStore(tmp_path).sweep_temp(3600) == 0  # and the writer's lock says so to others
        assert store.remove_temp("upload") == 0
        w.write(b"def")
        staged = w.finish()
        store.commit(w)
    with store.open(staged.sha256) as f:
        assert f.read() == b"abcdef"


def test_the_sweep_removes_the_file_of_a_writer_that_died(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    part = tmp_path / "tmp" / "upload--elsewhere.part"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'xb'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('locked', flush=True); time.sleep(60)",
            str(part),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == b"locked\n"
        old = time.time() - 7200
        os.utime(part, (old, old))
        assert store.sweep_temp(3600) == 0  # another process's writer, alive
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdout.close()
    assert store.sweep_temp(3600) == 1  # dead: the kernel dropped its lock
    assert not part.exists()


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.check_writable()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_unwritable_volume_fails_the_check(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    (tmp_path / "tmp").rmdir()
    (tmp_path / "tmp").write_text("not a directory")
    with pytest.raises(NotADirectoryError):
        store.check_writable()


def test_in_memory_store_honours_the_same_contract() -> None:
    store = InMemoryBlobStore()
    with store.writer(100) as w:
        w.write(b"abc")
        staged = w.finish()
        store.commit(w)
    assert store.exists(staged.sha256)
    assert store.open(staged.sha256).read() == b"abc"
    store.delete(staged.sha256)
    with pytest.raises(BlobMissing):
        store.open(staged.sha256)
    with pytest.raises(BlobTooLarge), store.writer(2) as w:
        w.write(b"abc")
