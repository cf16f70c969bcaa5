"""The maintenance against real PostgreSQL and a real CAS: orphan blobs are reconciled away, safely."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import psycopg

from common import media
from common.maintenance import RECONCILE_TASK, maintain, reconcile_orphans
from common.records import NewMedia
from common.services import Services
from tests.factories import png
from tests.support import RunningPostgres

# S3 lists whole-second LastModified times, so a blob can look up to a second older than it is:
# the margin between the young orphan's apparent age and GRACE must hold that second and the
# time both reconciles take on a slow machine (1.0 left ~0.1 s and failed under CI).
GRACE = 3.0


def orphan(services: Services) -> str:
    """What a crash between the rename and the INSERT leaves: a blob at its address, no record."""
    with services.store.writer(10**7) as writer:
        writer.write(png())
        staged = writer.finish()
        services.store.commit(writer)
    return staged.sha256


def referenced(services: Services) -> str:
    data = png()
    with services.store.writer(10**7) as writer:
        writer.write(data)
        staged = writer.finish()
        new = NewMedia("someone", "a.png", "image/png", staged.size, staged.sha256)
        media.commit_blob(services, writer, staged.sha256, lambda scope: scope.insert(new))
    return staged.sha256


@contextmanager
def held(services: Services, digest: str) -> Iterator[None]:
    """The digest's lock held by another thread, as an upload committing these bytes holds it."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with services.repo.digest_scope(digest):
            taken.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        thread.join(10)


def test_the_reconciler_removes_old_orphans_only(services: Services) -> None:
    old, busy, kept = orphan(services), orphan(services), referenced(services)
    time.sleep(GRACE + 0.2)
    young = orphan(services)
    with held(services, busy):
        assert reconcile_orphans(services.store, services.repo, GRACE) == 1
    assert not services.store.exists(old)
    assert services.store.exists(busy)  # an upload of these bytes may be committing: next round
    assert services.store.exists(kept)  # a record references it
    assert services.store.exists(young)  # within the grace period
    assert reconcile_orphans(services.store, services.repo, GRACE) == 1  # the lock is free now
    assert not services.store.exists(busy)
    assert services.store.exists(kept) and services.store.exists(young)


def test_one_process_per_interval_runs_the_reconciler(services: Services, pg: RunningPostgres) -> None:
    task = f"test-{uuid.uuid4().hex}"
    assert services.repo.claim_task(task, 60) is True
    assert services.repo.claim_task(task, 60) is False  # another process, same interval
    time.sleep(0.3)
    assert services.repo.claim_task(task, 0.2) is True  # the interval has passed

    with psycopg.connect(pg.url, autocommit=True) as conn:  # make this round due, whatever ran before
        conn.execute("DELETE FROM maintenance_rounds WHERE task = %s", (RECONCILE_TASK,))
    config = replace(services.config, orphan_grace_seconds=0, temp_sweep_interval_seconds=60)
    first = orphan(services)
    maintain(config, services.store, services.repo)
    assert not services.store.exists(first)  # this round's reconciler ran here
    second = orphan(services)
    maintain(config, services.store, services.repo)
    assert services.store.exists(second)  # the next one is not due for a minute, in any process
