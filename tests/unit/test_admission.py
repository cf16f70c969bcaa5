"""Quotas, the free-space guard and the malware scan around both upload flows, with the in-memory
twins (the real clamd and PostgreSQL are in tests/integration)."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import Any

import pytest

from common import media, presigned
from common.memory_repository import InMemoryMediaRepository
from common.memorystore import InMemoryBlobStore
from common.problems import (
    ContentRejected,
    InsufficientStorage,
    QuotaExceeded,
    ScanFailed,
    to_problem,
)
from common.records import ListQuery, MediaRecord
from common.scanning import MemoryScanner, ScanLimitExceeded
from common.services import Services
from common.tokens import DELETE, READ, WRITE, Principal
from tests.factories import memory_services, png, upload_body

ALICE = Principal("alice", frozenset({READ, WRITE, DELETE}))
BOB = Principal("bob", frozenset({READ, WRITE, DELETE}))
MARK = b"NOT-A-REAL-VIRUS-MARKER"


def upload(svc: Services, who: Principal, data: bytes) -> MediaRecord:
    body, ctype = upload_body(data, "a.png")
    return media.upload_multipart(svc, who, io.BytesIO(body), ctype)


def presign(svc: Services, who: Principal, data: bytes) -> presigned.PresignedUpload:
    return presigned.presign(svc, who, {"filename": "a.png", "content_type": "image/png", "size": len(data)})


def put(svc: Services, upload: presigned.PresignedUpload, data: bytes) -> MediaRecord:
    token = upload.url.rsplit("/", 1)[1]
    return presigned.complete_upload(svc, token, "image/png", len(data), io.BytesIO(data))


def blobs(svc: Services) -> int:
    assert isinstance(svc.store, InMemoryBlobStore)
    return len(svc.store.blobs)


def holds(svc: Services) -> int:
    assert isinstance(svc.repo, InMemoryMediaRepository)
    return len(svc.repo.holds)


# --- Quotas -----------------------------------------------------------------------------------------


def test_the_upload_that_would_pass_the_byte_quota_is_refused_with_usage_and_limit() -> None:
    a, b = png(20, 20), png(21, 21)
    svc = memory_services(MEDIA_QUOTA_BYTES_PER_USER=str(len(a) + len(b) - 1))
    upload(svc, ALICE, a)
    with pytest.raises(QuotaExceeded) as refused:
        upload(svc, ALICE, b)
    problem = to_problem(refused.value)
    assert problem.status == 413 and problem.type.endswith("/quota-exceeded")
    assert refused.value.extra["usage"] == {"bytes": len(a), "files": 1}
    assert refused.value.extra["limit"] == {"bytes": len(a) + len(b) - 1, "files": None}
    assert blobs(svc) == 1 and holds(svc) == 0  # nothing stored, the hold released
    upload(svc, BOB, b)  # the quota is per subject


def test_the_file_quota_and_what_a_delete_gives_back() -> None:
    svc = memory_services(MEDIA_QUOTA_FILES_PER_USER="1")
    first = upload(svc, ALICE, png(20, 20))
    with pytest.raises(QuotaExceeded):
        upload(svc, ALICE, png(22, 22))
    media.delete(svc, ALICE, str(first.id))
    upload(svc, ALICE, png(22, 22))
    assert svc.repo.usage("alice").files == 1


def test_usage_is_logical_a_deduplicated_file_counts_each_time() -> None:
    svc = memory_services()
    data = png(30, 30)
    upload(svc, ALICE, data)
    upload(svc, ALICE, data)
    upload(svc, BOB, data)
    assert svc.repo.usage("alice").bytes == 2 * len(data) and svc.repo.usage("alice").files == 2
    assert svc.repo.usage("bob").files == 1 and blobs(svc) == 1


def test_a_presign_holds_its_declared_size_until_the_put_settles_it() -> None:
    a, b = png(20, 20), png(21, 21)
    svc = memory_services(MEDIA_QUOTA_BYTES_PER_USER=str(len(a) + len(b) - 1))
    first = presign(svc, ALICE, a)
    assert holds(svc) == 1
    with pytest.raises(QuotaExceeded):
        presign(svc, ALICE, b)  # the first one's hold counts before a byte is sent
    with pytest.raises(QuotaExceeded):
        upload(svc, ALICE, b)  # and for direct uploads too
    put(svc, first, a)
    assert holds(svc) == 0 and svc.repo.usage("alice").bytes == len(a)


def test_a_refused_presigned_put_gives_its_hold_back() -> None:
    svc = replace(memory_services(MEDIA_QUOTA_BYTES_PER_USER="100000"), scanner=MemoryScanner(MARK))
    data = png(20, 20) + MARK
    signed = presign(svc, ALICE, data)
    with pytest.raises(ContentRejected):
        put(svc, signed, data)
    assert holds(svc) == 0 and svc.repo.usage("alice").files == 0


# --- Free space ---------------------------------------------------------------------------------------


class SmallVolume(InMemoryBlobStore):
    def __init__(self, free: int) -> None:
        super().__init__()
        self.free = free

    def free_bytes(self) -> int | None:
        return self.free


def test_uploads_get_507_below_the_free_space_floor_and_downloads_still_work() -> None:
    volume = SmallVolume(free=10_000_000)
    svc = replace(memory_services(MEDIA_MIN_FREE_BYTES="1000000"), store=volume)
    stored = upload(svc, ALICE, png(20, 20))
    volume.free = 999_999
    for attempt in (lambda: upload(svc, ALICE, png(21, 21)), lambda: presign(svc, ALICE, png(21, 21))):
        with pytest.raises(InsufficientStorage) as refused:
            attempt()
        assert refused.value.status == 507 and refused.value.extra["free_bytes"] == 999_999
    content = media.read_content(svc, ALICE, str(stored.id), "GET", {})
    assert content.decision.status == 200
    off = replace(memory_services(MEDIA_MIN_FREE_BYTES="0"), store=SmallVolume(free=0))
    upload(off, ALICE, png(20, 20))  # 0 turns the guard off


# --- Malware scanning -------------------------------------------------------------------------------


def scanning(scanner: MemoryScanner, **env: str) -> Services:
    return replace(memory_services(None, **env), scanner=scanner)


def test_an_infected_direct_upload_is_refused_naming_the_signature_and_nothing_is_stored() -> None:
    scanner = MemoryScanner(MARK)
    svc = scanning(scanner)
    with pytest.raises(ContentRejected) as refused:
        upload(svc, ALICE, png(40, 40) + MARK + png(2, 2))
    problem = to_problem(refused.value)
    assert problem.status == 422 and problem.type.endswith("/content-rejected")
    assert refused.value.extra["signature"] == "Memory-Test-Signature"
    assert blobs(svc) == 0 and svc.repo.usage("alice").files == 0
    clean = upload(svc, ALICE, png(40, 40))
    assert clean.status == "ready"
    assert all(s.closed for s in scanner.sessions)
    # Every byte went through the scanner, once.
    assert scanner.sessions[-1].fed_bytes == clean.size


def test_an_infected_presigned_upload_fails_its_record_with_the_reason() -> None:
    svc = scanning(MemoryScanner(MARK))
    data = png(20, 20) + MARK
    signed = presign(svc, ALICE, data)
    with pytest.raises(ContentRejected):
        put(svc, signed, data)
    record = svc.repo.get(signed.record.id)
    assert record is not None and record.status == "failed"
    assert "Memory-Test-Signature" in (record.failure_reason or "")
    assert blobs(svc) == 0


@pytest.mark.parametrize("flow", ["direct", "presigned"])
def test_a_scanner_that_does_not_answer_fails_closed_with_503(flow: str) -> None:
    svc = scanning(MemoryScanner(MARK, fail=True))
    data = png(20, 20)
    with pytest.raises(ScanFailed) as failed:
        if flow == "direct":
            upload(svc, ALICE, data)
        else:
            put(svc, presign(svc, ALICE, data), data)
    assert to_problem(failed.value).status == 503
    assert to_problem(failed.value).type.endswith("/scanner-unavailable")
    assert blobs(svc) == 0
    if flow == "presigned":  # nothing contradicted the signature: the URL can be used again
        record = svc.repo.list_media(ListQuery(owner="alice", limit=5))[0]
        assert record.status == "pending"


def test_fail_open_stores_unscanned_but_never_past_the_scanners_size_limit() -> None:
    svc = scanning(MemoryScanner(MARK, fail=True), MEDIA_SCAN_FAIL_OPEN="1")
    assert upload(svc, ALICE, png(20, 20)).status == "ready"

    class TooLong(MemoryScanner):
        def session(self) -> Any:
            session = super().session()

            def refuse(chunk: bytes) -> None:
                raise ScanLimitExceeded("INSTREAM size limit exceeded")

            session.feed = refuse  # type: ignore[method-assign]
            return session

    limited = scanning(TooLong(MARK), MEDIA_SCAN_FAIL_OPEN="1")
    with pytest.raises(ScanLimitExceeded):
        upload(limited, ALICE, png(20, 20))
    assert blobs(limited) == 0
