"""Erasure of a subject's media and their usage, with the in-memory twins (the kill -9 and the
real PostgreSQL are in tests/integration and tests/e2e)."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import pytest

from common import accounts, erasure, imaging, media, presigned, processing
from common.memory_repository import InMemoryMediaRepository
from common.memorystore import InMemoryBlobStore
from common.problems import Forbidden, NotFound
from common.records import MediaRecord
from common.services import Services
from common.tokens import ADMIN, DELETE, READ, WRITE, Principal
from tests.factories import memory_services, photo, png, upload_body

ALICE = Principal("alice", frozenset({READ, WRITE, DELETE}))
BOB = Principal("bob", frozenset({READ, WRITE, DELETE}))
READER = Principal("alice", frozenset({READ}))
ROOT = Principal("root", frozenset({ADMIN}))


@pytest.fixture
def svc() -> Services:
    return memory_services()


def upload(svc: Services, who: Principal, data: bytes) -> MediaRecord:
    body, ctype = upload_body(data, "a.jpg")
    return media.upload_multipart(svc, who, io.BytesIO(body), ctype)


def stored(svc: Services) -> dict[str, bytes]:
    assert isinstance(svc.store, InMemoryBlobStore)
    return dict(svc.store.blobs)


def test_erasing_one_user_keeps_the_bytes_another_user_also_uploaded(
    svc: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="media.audit")
    shared, own = png(60, 40), photo(700, 500)
    upload(svc, ALICE, shared)
    mine = upload(svc, ALICE, own)
    theirs = upload(svc, BOB, shared)
    presigned.presign(svc, ALICE, {"filename": "p.png", "content_type": "image/png", "size": 10})
    processing.drain(svc)  # the images' variants: blobs of their own, freed with their original
    before = stored(svc)
    variants_of_own = svc.repo.processing_of(mine.sha256 or "", imaging.RECIPE)
    assert variants_of_own is not None and variants_of_own.variants
    freed_variants = sum(v.size for v in variants_of_own.variants)

    job = accounts.request_erasure(svc, ALICE, "me")

    assert job.state == "done" and job.subject == "alice" and job.requested_by == "alice"
    assert job.records_removed == 3  # the shared one's, her own, and the pending presign
    assert job.blobs_removed == 1 + len(variants_of_own.variants)
    assert job.bytes_freed == len(own) + freed_variants
    assert job.finished_at is not None
    after = stored(svc)
    assert set(before) - set(after) == {mine.sha256, *(v.sha256 for v in variants_of_own.variants)}
    content = media.read_content(svc, BOB, str(theirs.id), "GET", {})
    assert content.file is not None and content.file.read() == shared  # theirs keeps working
    assert svc.repo.records_of("alice", 10) == [] and svc.repo.usage("alice").files == 0
    done = [r.__dict__["audit"] for r in caplog.records if r.name == "media.audit"]
    assert [e["event"] for e in done] == ["erasure_completed"]
    assert done[0]["records_removed"] == 3 and done[0]["size"] == job.bytes_freed


def test_only_the_subject_or_an_admin_may_erase_and_see_the_job(svc: Services) -> None:
    upload(svc, ALICE, png(20, 20))
    with pytest.raises(Forbidden):
        accounts.request_erasure(svc, BOB, "alice")
    with pytest.raises(Forbidden):
        accounts.request_erasure(svc, READER, "me")  # media:delete is needed for oneself
    job = accounts.request_erasure(svc, ROOT, "alice")
    assert job.requested_by == "root" and job.records_removed == 1
    assert accounts.erasure_status(svc, ALICE, str(job.id)).id == job.id
    with pytest.raises(NotFound):
        accounts.erasure_status(svc, BOB, str(job.id))
    with pytest.raises(NotFound):
        accounts.erasure_status(svc, ROOT, "not-a-uuid")


def test_asking_again_while_it_runs_answers_the_same_job_and_a_later_one_starts_afresh(svc: Services) -> None:
    for size in range(10, 16):
        upload(svc, ALICE, png(size, size))
    running = svc.repo.start_erasure("alice", "alice")
    again = accounts.request_erasure(svc, ALICE, "me")
    assert again.id == running.id and again.state == "done" and again.records_removed == 6
    later = accounts.request_erasure(svc, ALICE, "me")
    assert later.id != running.id and later.state == "done" and later.records_removed == 0


def test_an_interrupted_erasure_resumes_where_the_database_says_and_counts_exactly(svc: Services) -> None:
    images = [png(10 + i, 10) for i in range(7)]
    for data in images:
        upload(svc, ALICE, data)
    job = svc.repo.start_erasure("alice", "alice")
    assert svc.repo.claim_erasure(erasure.LEASE_SECONDS, job.id) is not None
    # A process that died after deleting three records (their blobs only noted, not checked):
    for record in svc.repo.records_of("alice", 3):
        with svc.repo.digest_scope(record.sha256 or "") as scope:
            scope.erase(job.id, record.id, record.sha256)
    halfway = svc.repo.erasure(job.id)
    assert halfway is not None and halfway.records_removed == 3 and halfway.blobs_removed == 0
    assert svc.repo.claim_erasure(erasure.LEASE_SECONDS) is None  # its lease is still live
    assert erasure.run(svc.store, svc.repo, job.id, time.monotonic() - 1) is False  # no time: nothing

    assert isinstance(svc.repo, InMemoryMediaRepository)
    svc.repo.erasure_leases[job.id] = 0.0  # the lease ran out
    erasure.resume_erasures(svc.store, svc.repo)

    done = svc.repo.erasure(job.id)
    assert done is not None and done.state == "done"
    assert (done.records_removed, done.blobs_removed) == (7, 7)
    assert done.bytes_freed == sum(len(d) for d in images)
    assert stored(svc) == {}


def test_usage_is_the_callers_own_or_anyones_for_an_admin() -> None:
    svc = memory_services(MEDIA_QUOTA_BYTES_PER_USER="1000000", MEDIA_QUOTA_FILES_PER_USER="10")
    data = png(20, 20)
    upload(svc, ALICE, data)
    mine: dict[str, Any] = accounts.usage(svc, ALICE, "me")
    assert mine["subject"] == "alice" and (mine["bytes"], mine["files"]) == (len(data), 1)
    assert mine["quota"] == {"bytes": 1000000, "files": 10}
    assert mine["remaining"] == {"bytes": 1000000 - len(data), "files": 9}
    assert accounts.usage(svc, ROOT, "alice")["bytes"] == len(data)
    with pytest.raises(Forbidden):
        accounts.usage(svc, BOB, "alice")
