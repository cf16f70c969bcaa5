"""The PostgreSQL repository and the CAS together, against a real database and filesystem."""

from __future__ import annotations

import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common import media
from common.memory_repository import InMemoryMediaRepository
from common.problems import DatabaseUnavailable
from common.records import ListQuery, MediaRecord, NewMedia, NewPending
from common.repository import PgMediaRepository
from common.services import Services
from common.tokens import DELETE, READ, WRITE, Principal
from tests.factories import png, upload_body
from tests.support import RunningPostgres, delete_racing_a_completion


def new(owner: str, sha: str | None = None) -> NewMedia:
    return NewMedia(
        owner=owner, filename="f.png", content_type="image/png", size=3, sha256=sha or uuid.uuid4().hex * 2
    )


def test_insert_get_and_keyset_listing(services: Services) -> None:
    owner = f"o-{uuid.uuid4()}"
    created = []
    for _ in range(5):
        rec = new(owner)
        with services.repo.digest_scope(rec.sha256) as scope:
            created.append(scope.insert(rec))
    assert services.repo.get(created[0].id) == created[0]
    page = services.repo.list_media(ListQuery(owner=owner, limit=2))
    assert [r.id for r in page] == [created[4].id, created[3].id]
    rest = services.repo.list_media(
        ListQuery(owner=owner, limit=10, after=(page[-1].created_at, page[-1].id))
    )
    assert [r.id for r in rest] == [c.id for c in created[2::-1]]
    assert (
        services.repo.list_media(ListQuery(owner=owner, limit=10, content_type_prefix="application/")) == []
    )


def test_digest_scope_excludes_other_holders_of_the_same_digest(services: Services) -> None:
    digest = uuid.uuid4().hex * 2
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with services.repo.digest_scope(digest):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second() -> None:
        inside.wait(5)
        with services.repo.digest_scope(digest):
            order.append("second in")

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        inside.wait(5)
        time.sleep(0.3)  # the second holder is now waiting on the advisory lock
        assert order == ["first in"]
        release.set()
        a.result(10)
        b.result(10)
    assert order == ["first in", "first out", "second in"]


def test_a_delete_racing_an_upload_of_the_same_bytes_never_strands_a_record(services: Services) -> None:
    alice = Principal("race-" + uuid.uuid4().hex, frozenset({READ, WRITE, DELETE}))
    data = png()
    body, ctype = upload_body(data)
    for _ in range(15):
        victim = media.upload_multipart(services, alice, io.BytesIO(body), ctype)
        with ThreadPoolExecutor(2) as pool:
            deleted = pool.submit(media.delete, services, alice, str(victim.id))
            uploaded = pool.submit(media.upload_multipart, services, alice, io.BytesIO(body), ctype)
            deleted.result(10)
            survivor = uploaded.result(10)
        assert survivor.sha256 is not None
        assert services.store.exists(survivor.sha256), "a ready record lost its bytes"
        media.delete(services, alice, str(survivor.id))
        assert not services.store.exists(survivor.sha256)


def test_an_upload_committed_between_a_delete_and_its_unlink_keeps_its_bytes(services: Services) -> None:
    """The delete commits first, then takes the lock again to unlink: an upload of the same bytes
    that got in between is seen, and its blob stays."""
    alice = Principal("between-" + uuid.uuid4().hex, frozenset({READ, WRITE, DELETE}))
    body, ctype = upload_body(png(20, 20))
    victim = media.upload_multipart(services, alice, io.BytesIO(body), ctype)
    original = services.repo.digest_scope
    scopes: list[str] = []
    survivors: list[MediaRecord] = []

    def upload_before_the_unlink(sha256: str) -> Any:
        scopes.append(sha256)
        if len(scopes) == 2:  # the delete's second scope: its DELETE is committed by now
            services.repo.digest_scope = original  # type: ignore[method-assign]
            survivors.append(media.upload_multipart(services, alice, io.BytesIO(body), ctype))
        return original(sha256)

    services.repo.digest_scope = upload_before_the_unlink  # type: ignore[method-assign]
    try:
        media.delete(services, alice, str(victim.id))
    finally:
        services.repo.digest_scope = original  # type: ignore[method-assign]
    assert scopes == [victim.sha256, victim.sha256]
    assert services.repo.get(victim.id) is None
    [survivor] = survivors
    assert survivor.sha256 is not None and survivor.sha256 == victim.sha256
    assert services.store.exists(survivor.sha256)


def test_a_delete_racing_the_completion_of_its_upload_leaves_no_orphan(services: Services) -> None:
    alice = Principal("alice-" + uuid.uuid4().hex[:8], frozenset({READ, WRITE, DELETE}))
    digest = delete_racing_a_completion(services, alice, png())
    assert services.repo.list_media(ListQuery(owner=alice.subject, limit=10)) == []
    assert not services.store.exists(digest)


def test_an_unreachable_database_fails_fast_as_unavailable() -> None:
    repo = PgMediaRepository("postgresql://nobody@127.0.0.1:1/none", timeout_seconds=1)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            repo.get(uuid.uuid4())
        assert time.monotonic() - started < 5
    finally:
        repo.close()


def test_migrations_are_idempotent(pg: RunningPostgres) -> None:
    from common.migrate import migrate

    assert migrate(pg.url) == []


def test_a_claim_is_exclusive_until_it_goes_stale(services: Services) -> None:
    pending = services.repo.create_pending(
        NewPending(
            f"o-{uuid.uuid4()}", "a.png", "image/png", 10, None, datetime.now(UTC) + timedelta(minutes=5)
        )
    )
    assert services.repo.claim(pending.id, 3600) is not None
    assert services.repo.claim(pending.id, 3600) is None  # a live claim: the second PUT gets 409
    time.sleep(0.01)
    assert services.repo.claim(pending.id, 0) is not None  # its process died long ago: taken over
    services.repo.release(pending.id)
    assert services.repo.claim(pending.id, 3600) is not None


@pytest.mark.parametrize("kind", ["postgres", "memory"])
def test_referenced_digests_are_walked_in_order_once_each(services: Services, kind: str) -> None:
    repo = services.repo if kind == "postgres" else InMemoryMediaRepository()
    prefix = uuid.uuid4().hex[:16]  # sorts this test's digests apart from any other in the database
    digests = [prefix + c * 48 for c in "0123"]
    for sha in [*digests, digests[1]]:  # two records share a digest: walked once
        with repo.digest_scope(sha) as scope:
            scope.insert(new(f"o-{uuid.uuid4()}", sha))
    assert repo.digests_after(prefix, 3) == digests[:3]
    assert repo.digests_after(digests[2], 1) == digests[3:]
