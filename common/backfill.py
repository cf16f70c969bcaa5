"""The processing backfill: a job for every stored image that has none under the current recipe.

Uploads enqueue their own job (`processing.enqueue_if_image`). Two kinds of image never did: those
stored before there was a process function (migration 0005), and all of them once `imaging.RECIPE`
is bumped (what is made changed: every original is processed again). The maintenance walks the
records for them, one bounded batch per round across all processes (`BATCH` records in primary-key
order, from where the last round stopped: `processing_backfill`, migration 0012), and enqueues a job
per distinct original it finds, under that digest's lock, so a delete of its last record either
comes first (no job) or finds the job and releases it. The drain then works through them like any
other due job; no outbox event is written, so a recipe bump never floods the process function.

A digest whose lock is held right now (an upload or a delete committing) ends the batch there: the
next round starts again from that record. The walk ends when a batch comes back short; a record
added later made its own job.
"""

from __future__ import annotations

import logging

from common import imaging
from common.records import MediaRecord
from common.repository import MediaRepository

log = logging.getLogger("media.backfill")

TASK = "processing-backfill"
BATCH = 500


def wanted(record: MediaRecord) -> bool:
    """A record whose original the process function works on (a stored raster image)."""
    return (
        record.status == "ready" and record.sha256 is not None and record.content_type in imaging.PROCESSABLE
    )


def backfill(repo: MediaRepository, recipe: int | None = None, batch: int = BATCH) -> int:
    """One batch of the walk for `recipe` (the current one): the jobs it enqueued (0 as well once
    the walk is done)."""
    recipe = imaging.RECIPE if recipe is None else recipe
    after = repo.backfill_position(recipe)
    if after is None:
        return 0
    records = repo.records_after(after, batch)
    enqueued, done = 0, len(records) < batch
    for record in records:
        if wanted(record):
            assert record.sha256 is not None
            with repo.try_digest_scope(record.sha256) as scope:
                if scope is None:  # busy: this record is the next round's first
                    done = False
                    break
                if scope.references(record.sha256) and scope.enqueue_job(
                    record.sha256, recipe, record.content_type
                ):
                    enqueued += 1
        after = record.id
    repo.advance_backfill(recipe, after, done)
    if enqueued or done:
        log.info(
            "processing backfill (recipe %d): %d job(s) enqueued%s",
            recipe,
            enqueued,
            ", done" if done else "",
        )
    return enqueued
