"""The process function's event handling with the in-memory twins (no database, no pixels)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from common import imaging, processing
from common.events import PING_EVENT, Received, RecordingSink
from common.records import UPLOADED_EVENT
from tests.factories import memory_services


def test_a_pingsource_event_drains_and_other_types_are_ignored() -> None:
    sink = RecordingSink([])
    svc = dataclasses.replace(memory_services(), events=sink)
    digest = "ab" * 32
    with svc.repo.digest_scope(digest) as scope:
        scope.enqueue_processing(digest, 1, "image/png", uuid.uuid4())
    assert processing.handle(svc, Received("com.example.other", "1", {})) == processing.Drained()
    drained = processing.handle(svc, Received(PING_EVENT, "2", {}))
    # the outbox went out, and the job was tried: its original is not in the store, for good
    assert drained.published == 1 and [e.type for e in sink.accepted] == [UPLOADED_EVENT]
    assert drained.failed == 1
    state = svc.repo.processing_of(digest, 1)
    assert state is not None and state.state == "failed" and "missing" in (state.reason or "")


def test_an_uploaded_event_without_a_digest_does_nothing() -> None:
    svc = memory_services()
    assert processing.handle(svc, Received(UPLOADED_EVENT, "1", {"sha256": "short"})) == processing.Drained()


def test_an_unexpected_error_is_retried_then_failed_and_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = memory_services(MEDIA_PROCESS_MAX_ATTEMPTS="2")
    with svc.store.writer(10) as writer:  # the original is there this time
        writer.write(b"\x89PNG....")
        digest = writer.finish().sha256
        svc.store.commit(writer)
    with svc.repo.digest_scope(digest) as scope:
        scope.enqueue_processing(digest, 1, "image/png", uuid.uuid4())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(imaging, "render_isolated", broken)
    outcomes = []
    for _ in range(2):
        job = svc.repo.claim_job(60)
        assert job is not None
        outcomes.append(processing.run(svc, job))
        svc.repo.jobs[digest, 1].due = 0  # type: ignore[attr-defined]  # no waiting out the backoff
    assert outcomes == ["retried", "failed"]
    state = svc.repo.processing_of(digest, 1)
    assert state is not None and "RuntimeError: a bug" in (state.reason or "")


def test_a_job_its_workers_keep_dying_on_is_failed_when_claimed_once_too_often() -> None:
    svc = memory_services(MEDIA_PROCESS_MAX_ATTEMPTS="2")
    digest = "ef" * 32
    with svc.repo.digest_scope(digest) as scope:
        scope.enqueue_processing(digest, 1, "image/png", uuid.uuid4())
    for _ in range(2):  # two workers claimed it and died (their leases ran out)
        assert svc.repo.claim_job(0) is not None
    job = svc.repo.claim_job(60)
    assert job is not None and job.attempts == 3
    assert processing.run(svc, job) == "failed"
    state = svc.repo.processing_of(digest, 1)
    assert state is not None and "no worker finished it" in (state.reason or "")
