"""The process function's event handling with the in-memory twins (no database, no pixels)."""

from __future__ import annotations

import dataclasses
import uuid

from common import processing
from common.events import PING_EVENT, Received, RecordingSink
from common.repository import UPLOADED_EVENT
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
