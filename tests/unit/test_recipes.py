"""Describing and attaching with the in-memory twins (the SQL, the triggers and the change feed are
in tests/integration/test_recipes.py)."""

from __future__ import annotations

import io
import time

import pytest

from common import maintenance, media, recipes
from common.problems import AttachmentLimit, NotFound, PreconditionFailed
from common.records import MediaRecord
from common.services import Services
from common.tokens import ADMIN, DELETE, READ, WRITE, Principal
from tests.factories import memory_services, png, upload_body

ALICE = Principal("alice", frozenset({READ, WRITE, DELETE}))
BOB = Principal("bob", frozenset({READ, WRITE, DELETE}))
BACKEND = Principal("client:recipes", frozenset({READ, WRITE}), client_id="recipes")
ROOT = Principal("root", frozenset({ADMIN}))


def upload(svc: Services, who: Principal, expire_after: float | None = None) -> MediaRecord:
    body, ctype = upload_body(png(20 + int(time.time_ns() % 30), 20))
    return media.upload_multipart(svc, who, io.BytesIO(body), ctype, None, expire_after)


def test_describing_applies_the_patch_on_the_version_asked_for() -> None:
    svc = memory_services()
    record = upload(svc, ALICE)
    done = recipes.describe(svc, ALICE, str(record.id), '"v1"', lambda: {"alt": "Soup", "tags": ["A", "a"]})
    assert (done.alt, done.tags, done.version) == ("Soup", ("a",), 2)
    with pytest.raises(PreconditionFailed):
        recipes.describe(svc, ALICE, str(record.id), '"v1"', lambda: {"alt": "lost"})
    with pytest.raises(NotFound):
        recipes.describe(svc, BOB, str(record.id), None, lambda: {"alt": "not theirs"})
    assert recipes.describe(svc, ROOT, str(record.id), None, dict).version == 2  # nothing to change


def test_a_user_attaches_their_own_and_the_backend_anyones() -> None:
    svc = memory_services()
    mine, theirs = upload(svc, ALICE), upload(svc, BOB)
    a, created = recipes.attach(svc, ALICE, str(mine.id), "recipe", "1", lambda: None)
    assert created and a.position == 0
    assert recipes.attach(svc, ALICE, str(mine.id), "recipe", "1", lambda: None) == (a, False)
    with pytest.raises(NotFound):
        recipes.attach(svc, ALICE, str(theirs.id), "recipe", "1", lambda: None)
    b, _ = recipes.attach(svc, BACKEND, str(theirs.id), "recipe", "1", lambda: {"role": "cover"})
    assert (b.position, b.role) == (1, "cover")
    assert recipes.detach_everything(svc, ALICE, "recipe", "1") == 1  # a user: only her own
    assert recipes.detach_everything(svc, BACKEND, "recipe", "1") == 1


def test_the_limits_count_what_is_attached() -> None:
    svc = memory_services(MEDIA_MAX_ATTACHMENTS_PER_MEDIA="1", MEDIA_MAX_ATTACHMENTS_PER_REF="2")
    one, two, three = (upload(svc, ALICE) for _ in range(3))
    recipes.attach(svc, ALICE, str(one.id), "recipe", "1", lambda: None)
    with pytest.raises(AttachmentLimit):
        recipes.attach(svc, ALICE, str(one.id), "recipe", "2", lambda: None)
    recipes.attach(svc, ALICE, str(two.id), "recipe", "1", lambda: None)
    with pytest.raises(AttachmentLimit):
        recipes.attach(svc, ALICE, str(three.id), "recipe", "1", lambda: None)


def test_what_nobody_attached_in_time_is_deleted_with_its_blob() -> None:
    svc = memory_services()
    doomed = upload(svc, ALICE, expire_after=0.01)
    saved = upload(svc, ALICE, expire_after=0.01)
    kept = upload(svc, ALICE)
    recipes.attach(svc, ALICE, str(saved.id), "recipe", "9", lambda: None)
    time.sleep(0.05)
    assert maintenance.expire_unattached(svc.store, svc.repo) == 1
    assert svc.repo.get(doomed.id) is None
    assert svc.repo.get(saved.id) is not None and svc.repo.get(kept.id) is not None
    assert not svc.store.exists(doomed.sha256 or "")
