"""The BlobStore contract, on both stores: the volume (a real filesystem on tmp_path) and an
S3-compatible bucket (moto's S3 server on loopback). `media.py` relies on nothing else."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from common.cas import BlobStore
from common.config import Config
from common.localstore import LocalBlobStore
from common.problems import BlobMissing, BlobTooLarge, StorageUnavailable
from common.s3store import S3BlobStore, store_for
from localdev.harness import RunningS3
from tests.support import needs_freezable, plant_temp, stored_blobs, temp_leftovers

MiB = 1024 * 1024
PART = 8 * MiB


def s3_config(s3: RunningS3, bucket: str | None = None, timeout: float = 2) -> Config:
    return Config.from_env(
        {
            "MEDIA_STORAGE": "s3",
            "MEDIA_S3_BUCKET": bucket or s3.new_bucket(),
            "MEDIA_S3_ENDPOINT_URL": s3.endpoint,
            "MEDIA_S3_REGION": "us-east-1",
            "MEDIA_S3_PREFIX": "media",
            "MEDIA_S3_PART_BYTES": str(PART),
            "MEDIA_S3_TIMEOUT_SECONDS": str(timeout),
        }
    )


def s3_store(s3: RunningS3, bucket: str | None = None, timeout: float = 2) -> S3BlobStore:
    """The store as the service builds it (`store_for`), on a new bucket unless one is named."""
    return store_for(s3_config(s3, bucket, timeout))


def s3_counted(name: str, operation: str) -> float:
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "fs":
        yield LocalBlobStore(tmp_path / "cas")
    else:
        yield s3_store(request.getfixturevalue("s3"))


def blocks(total: int, block: int = MiB) -> Iterator[bytes]:
    """`total` bytes that differ from one test to the next, in blocks."""
    seed = os.urandom(16)
    for i in range(0, total, block):
        yield hashlib.sha256(seed + i.to_bytes(8, "big")).digest() * (min(block, total - i) // 32) + b"\0" * (
            min(block, total - i) % 32
        )


def put(store: BlobStore, data: bytes | Iterator[bytes], max_bytes: int = 64 * MiB) -> tuple[str, bool]:
    with store.writer(max_bytes) as writer:
        for chunk in [data] if isinstance(data, bytes) else data:
            writer.write(chunk)
        staged = writer.finish()
        return staged.sha256, store.commit(writer)


def test_stored_bytes_read_back_whole_and_in_ranges(store: BlobStore) -> None:
    data = os.urandom(300_000)
    digest, dedup = put(store, data)
    assert digest == hashlib.sha256(data).hexdigest() and not dedup
    assert store.exists(digest)
    with store.open(digest) as f:
        assert f.read() == data
    with store.open(digest, 1000, 5000) as f:
        assert f.read(5000) == data[1000:6000]
    with store.open(digest, len(data) - 10) as f:
        assert f.read() == data[-10:]
    assert stored_blobs(store) == [digest] and temp_leftovers(store) == []
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(BlobMissing):
        store.open(digest)
    store.delete(digest)  # idempotent


def test_the_same_bytes_twice_are_one_blob(store: BlobStore) -> None:
    data = os.urandom(10_000)
    first, dedup_first = put(store, data)
    second, dedup_second = put(store, data)
    assert first == second and (dedup_first, dedup_second) == (False, True)
    assert stored_blobs(store) == [first] and temp_leftovers(store) == []


def test_a_large_body_goes_in_parts_and_reads_back(store: BlobStore) -> None:
    digest = hashlib.sha256()
    chunks = list(blocks(3 * PART + 12345))
    for chunk in chunks:
        digest.update(chunk)
    stored, _ = put(store, iter(chunks))
    assert stored == digest.hexdigest()
    read = hashlib.sha256()
    with store.open(stored) as f:
        while block := f.read(MiB):
            read.update(block)
    assert read.hexdigest() == stored
    assert temp_leftovers(store) == []


def test_over_the_limit_or_given_up_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge), store.writer(PART + MiB) as writer:
        for chunk in blocks(2 * PART):
            writer.write(chunk)
    with pytest.raises(RuntimeError), store.writer(64 * MiB) as writer:
        for chunk in blocks(PART + MiB):  # a multipart upload has begun
            writer.write(chunk)
        raise RuntimeError("the client went away")
    assert temp_leftovers(store) == [] and stored_blobs(store) == []


def test_a_damaged_blob_is_replaced_by_a_new_upload(store: BlobStore) -> None:
    data = os.urandom(50_000)
    digest = hashlib.sha256(data).hexdigest()
    if isinstance(store, LocalBlobStore):
        store.path_for(digest).parent.mkdir(parents=True, exist_ok=True)
        store.path_for(digest).write_bytes(data[:100])
    else:
        assert isinstance(store, S3BlobStore)
        store.client.put_object(Bucket=store.bucket, Key=store.key_for(digest), Body=data[:100])
    assert put(store, data) == (digest, False)
    with store.open(digest) as f:
        assert f.read() == data


def plant(store: BlobStore, digest: str, data: bytes) -> None:
    """Put `data` at `digest`'s address behind the store's back (what rot or a bad disk does)."""
    if isinstance(store, LocalBlobStore):
        store.path_for(digest).parent.mkdir(parents=True, exist_ok=True)
        store.path_for(digest).write_bytes(data)
    else:
        assert isinstance(store, S3BlobStore)
        store.client.put_object(Bucket=store.bucket, Key=store.key_for(digest), Body=data)


def flipped(data: bytes, at: int = 1234) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_a_same_size_corruption_is_healed_by_a_new_upload_on_the_volume_kept_on_s3(store: BlobStore) -> None:
    data = os.urandom(50_000)
    digest, _ = put(store, data)
    plant(store, digest, flipped(data))
    assert put(store, data) == (digest, True)  # dedup either way
    with store.open(digest) as f:
        healed = f.read()
    if isinstance(store, LocalBlobStore):
        assert healed == data  # the verified new copy replaced the file
    else:
        assert healed == flipped(data)  # S3 keeps the object: the scrub finds it
    assert temp_leftovers(store) == []


def test_verify_rehashes_what_is_stored(store: BlobStore) -> None:
    data = os.urandom(3 * MiB + 17)
    digest, _ = put(store, data)
    reads: list[int] = []
    found = store.verify(digest, reads.append)
    assert found is not None and found.matches(digest) and found.size == len(data)
    assert sum(reads) == len(data) and max(reads) <= MiB  # bounded reads, each paced
    plant(store, digest, flipped(data))
    bad = store.verify(digest)
    assert bad is not None and not bad.matches(digest) and bad.size == len(data)
    assert bad.actual == hashlib.sha256(flipped(data)).hexdigest()
    assert store.verify("0" * 64) is None


def test_quarantine_takes_the_blob_off_its_address_and_keeps_it(store: BlobStore) -> None:
    data = os.urandom(20_000)
    digest, _ = put(store, data)
    plant(store, digest, flipped(data))
    store.quarantine(digest)
    assert not store.exists(digest) and stored_blobs(store) == []
    with pytest.raises(BlobMissing):
        store.open(digest)
    if isinstance(store, LocalBlobStore):
        kept = list(store.quarantined.iterdir())
        assert len(kept) == 1 and kept[0].name.startswith(digest + ".")
        assert kept[0].read_bytes() == flipped(data)
    else:
        assert isinstance(store, S3BlobStore)
        got = store.client.get_object(Bucket=store.bucket, Key=f"{store.prefix}quarantine/{digest}")
        assert got["Body"].read() == flipped(data)
    store.quarantine(digest)  # nothing there any more: a no-op
    assert put(store, data) == (digest, False)  # the right bytes again: a good copy
    found = store.verify(digest)
    assert found is not None and found.matches(digest)
    assert digest in set(store.blobs_older_than(0))  # quarantine is not seen as a blob


def test_free_bytes_on_the_volume_none_for_a_bucket(store: BlobStore) -> None:
    free = store.free_bytes()
    if isinstance(store, LocalBlobStore):
        assert isinstance(free, int) and free > 0
        assert abs(free - shutil.disk_usage(store.root).free) < 64 * MiB
    else:
        assert free is None


def test_the_sweep_takes_what_dead_writers_left_and_never_a_live_one(store: BlobStore) -> None:
    plant_temp(store, "dead")
    assert temp_leftovers(store) != []
    assert store.sweep_temp(3600) == 0  # young: a slow client may still be sending
    with store.writer(64 * MiB, label="live") as writer:
        for chunk in blocks(PART + MiB):
            writer.write(chunk)
        swept = store.sweep_temp(0)
        assert swept >= 1
        assert [k for k in temp_leftovers(store) if "live" in k] != []
        writer.finish()
        assert store.commit(writer) is False
    assert temp_leftovers(store) == []


def test_a_pending_upload_s_temp_files_go_by_label(store: BlobStore) -> None:
    plant_temp(store, "upload-abc")
    plant_temp(store, "upload-other")
    assert store.remove_temp("upload-abc") >= 1
    left = temp_leftovers(store)
    assert left and all("upload-other" in k for k in left)
    store.sweep_temp(0)


def test_size_is_the_stored_blob_s_or_none(store: BlobStore) -> None:
    digest, _ = put(store, os.urandom(12345))
    assert store.size(digest) == 12345
    assert store.size("0" * 64) is None


def test_blobs_older_than(store: BlobStore) -> None:
    digest, _ = put(store, os.urandom(1000))
    assert digest in set(store.blobs_older_than(0))
    assert digest not in set(store.blobs_older_than(3600))


def test_readiness_checks_the_store(store: BlobStore, s3: RunningS3) -> None:
    store.check_writable()
    if isinstance(store, S3BlobStore):
        errors = s3_counted("media_s3_errors_total", "HeadBucket")
        with pytest.raises(StorageUnavailable, match="bucket"):
            s3_store(s3, bucket="no-such-bucket-here").check_writable()
        assert s3_counted("media_s3_errors_total", "HeadBucket") == errors + 1  # its 404 is a failure


def test_s3_calls_and_errors_are_counted_by_operation(s3: RunningS3) -> None:
    store = s3_store(s3)
    puts, heads = (
        s3_counted("media_s3_requests_total", "PutObject"),
        s3_counted("media_s3_requests_total", "HeadObject"),
    )
    head_errors = s3_counted("media_s3_errors_total", "HeadObject")
    digest, _ = put(store, os.urandom(1000))  # one PutObject to the temp key, a HeadObject (dedup)
    assert not store.exists("0" * 64)  # a lookup's 404: a call, not an error
    assert s3_counted("media_s3_requests_total", "PutObject") == puts + 1
    assert s3_counted("media_s3_requests_total", "HeadObject") == heads + 2
    assert s3_counted("media_s3_errors_total", "HeadObject") == head_errors
    aborts = s3_counted("media_s3_errors_total", "UploadPart")
    with store.writer(64 * MiB) as writer:
        for chunk in blocks(PART):  # the multipart upload begins
            writer.write(chunk)
        assert writer._upload_id is not None
        s3_store(s3, bucket=store.bucket).client.abort_multipart_upload(
            Bucket=store.bucket, Key=writer.key, UploadId=writer._upload_id
        )
        with pytest.raises(StorageUnavailable):
            for chunk in blocks(PART):
                writer.write(chunk)
    assert s3_counted("media_s3_errors_total", "UploadPart") == aborts + 1  # NoSuchUpload


def test_an_upload_another_process_swept_is_a_503_and_leaves_nothing(s3: RunningS3) -> None:
    """Another process's sweep takes a multipart upload whose newest part is older than the temp
    age for abandoned; the writer it belonged to answers 503 (send it again), never a 500."""
    store = s3_store(s3)
    other = s3_store(s3, bucket=store.bucket)
    # moto answers a part for an aborted upload with a 500 where S3 says 404 NoSuchUpload (that
    # answer's own message: tests/unit/test_s3store.py); both are a 503 here, never a 500.
    with pytest.raises(StorageUnavailable), store.writer(64 * MiB) as writer:
        for chunk in blocks(PART + MiB):
            writer.write(chunk)
        assert other.sweep_temp(0) == 1  # not this process's: it cannot know the upload is live
        for chunk in blocks(PART):
            writer.write(chunk)
    assert temp_leftovers(store) == [] and stored_blobs(store) == []


def test_parts_are_the_configured_size(s3: RunningS3) -> None:
    store = s3_store(s3)
    with store.writer(64 * MiB) as writer:
        for chunk in blocks(2 * PART + 5):
            writer.write(chunk)
        assert writer._upload_id is not None
        parts = store.client.list_parts(Bucket=store.bucket, Key=writer.key, UploadId=writer._upload_id)
        assert [p["Size"] for p in parts["Parts"]] == [PART, PART]  # the last 5 bytes wait for finish
        assert len(writer._buffer) == 5


def test_readiness_of_a_silent_store_answers_within_the_probe_s_bound(s3: RunningS3) -> None:
    needs_freezable(s3)
    store = s3_store(s3, timeout=5)  # the other calls may wait 5 s; the probe does not
    store.check_writable()
    errors = s3_counted("media_s3_errors_total", "HeadBucket")
    s3.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="did not answer"):
            store.check_writable()
        took = time.monotonic() - started
    finally:
        s3.thaw()
    assert took < 0.95, f"{took:.2f} s: one attempt of {0.5} s to answer (the probe gives 3 s in all)"
    assert s3_counted("media_s3_errors_total", "HeadBucket") == errors + 1


def test_a_silent_object_store_is_unavailable_fast_and_recovers(s3: RunningS3) -> None:
    needs_freezable(s3)
    store = s3_store(s3, timeout=1)
    digest, _ = put(store, os.urandom(1000))
    s3.freeze()
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            store.exists(digest)
        first = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            store.open(digest)  # the breaker is open: refused at once
        second = time.monotonic() - started
    finally:
        s3.thaw()
    assert first < 4, f"{first:.1f} s for the first call (two attempts of 1 s and a backoff under 1 s)"
    assert second < 0.1, f"{second:.2f} s with the breaker open"
    deadline = time.monotonic() + 10
    while True:
        try:
            assert store.exists(digest)
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.2)


def test_concurrent_writers_do_not_mix(store: BlobStore) -> None:
    results: dict[int, str] = {}
    datas = {i: os.urandom(200_000) for i in range(6)}

    def write(i: int) -> None:
        results[i] = put(store, datas[i])[0]

    threads = [threading.Thread(target=write, args=(i,)) for i in datas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: hashlib.sha256(d).hexdigest() for i, d in datas.items()}
    assert temp_leftovers(store) == []
