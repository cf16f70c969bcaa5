"""Housekeeping that every process runs in the background, safe to run from all of them at once.

Each round:
- temp files untouched for `temp_max_age_seconds` whose writer is gone are removed (a live upload
  holds a lock on its file, see `localstore.py`);
- pending uploads whose URL expired more than `pending_grace_seconds` ago are removed, with the
  temp file of an upload that died on the way;
- once per `temp_sweep_interval_seconds` across all processes (one of them wins the round in the
  database), the store is reconciled with the table: a blob that no record references and that is
  older than `orphan_grace_seconds` is removed under its digest lock. Such blobs are what a crash,
  or a database that stopped answering, between an upload's rename and its INSERT leaves behind;
- quota holds that lapsed (their upload's process died) are forgotten;
- running erasures nobody holds a lease on are carried on (`erasure.py`), for a bounded time;
- items that asked to expire unattached and were not attached in time are deleted (a batch);
- change-feed events older than MEDIA_CHANGES_RETENTION_DAYS are purged (a batch);
- once per period across all processes, a batch of the processing backfill (`backfill.py`): a job
  for each stored image that has none under the current recipe.
In a thread of its own (`scrub_tick`, it spends most of a period reading), once per period across
all processes, unless MEDIA_SCRUB_MIB_PER_SECOND is 0: a slice of the integrity scrub
(`scrub.py`), the stored blobs re-hashed, paced to that rate.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from collections.abc import Callable

from common import audit, backfill, metrics, removal, scrub
from common.cas import BlobStore
from common.config import Config
from common.erasure import resume_erasures
from common.repository import MediaRepository

log = logging.getLogger("media.maintenance")

RECONCILE_TASK = "reconcile-orphans"
_BATCH = 500


def upload_label(media_id: uuid.UUID) -> str:
    """The temp-file label of a presigned upload, so the cleanup can find what it left behind."""
    return f"put-{media_id}"


def maintain(config: Config, store: BlobStore, repo: MediaRepository) -> None:
    """One round of housekeeping (see the module's docstring)."""
    removed = store.sweep_temp(config.temp_max_age_seconds)
    if removed:
        log.info("swept %d abandoned temp file(s)", removed)
        metrics.system(metrics.TEMP_SWEPT, removed)
    for record in repo.remove_expired_pending(config.pending_grace_seconds):
        store.remove_temp(upload_label(record.id))
        log.info("removed expired pending upload %s", record.id)
        metrics.business(metrics.PRESIGNED, 1, "expired")
    repo.purge_rate_limits()
    repo.purge_holds()
    resume_erasures(store, repo, config.audit_log)
    expired = expire_unattached(store, repo, config.audit_log)
    if expired:
        log.info("deleted %d upload(s) nobody attached in time", expired)
    repo.purge_changes(config.changes_retention_days * 86400, _BATCH)
    if repo.claim_task(RECONCILE_TASK, config.temp_sweep_interval_seconds):
        orphans = reconcile_orphans(store, repo, config.orphan_grace_seconds)
        if orphans:
            log.info("removed %d orphan blob(s) no record referenced", orphans)
    if repo.claim_task(backfill.TASK, config.temp_sweep_interval_seconds):
        backfill.backfill(repo)


def expire_unattached(store: BlobStore, repo: MediaRepository, audited: bool = True) -> int:
    """Delete, in one bounded batch, the items that asked to expire unattached and were not
    attached in time (`removal.remove`: the usual refcount rules); an audit event each."""
    removed = 0
    for record in repo.expired_unattached(_BATCH):
        if removal.remove(store, repo, record) is None:
            continue  # it changed meanwhile (attached, completed): the next round looks again
        removed += 1
        if audited:
            audit.emit(
                audit.Event(
                    event="expired_unattached",
                    outcome="success",
                    status=200,
                    actor=record.owner,
                    client_ip=None,
                    media_id=str(record.id),
                    sha256=record.sha256,
                    size=record.size,
                    request_id=f"expiry-{record.id}",
                    function="maintenance",
                )
            )
    return removed


def scrub_tick(config: Config, store: BlobStore, repo: MediaRepository) -> None:
    """One period's slice of the integrity scrub, in one process at a time; nothing at rate 0."""
    if config.scrub_mib_per_second > 0 and repo.claim_task(scrub.TASK, config.temp_sweep_interval_seconds):
        scrub.background_round(config, store, repo)


def reconcile_orphans(store: BlobStore, repo: MediaRepository, grace_seconds: float) -> int:
    """Remove the blobs older than `grace_seconds` that no record references; return how many.

    Each candidate is decided under its digest lock, taken without waiting: a digest whose lock is
    held belongs to an upload (or a delete) committing right now and is left for the next round.
    Under the lock, an upload of the same bytes cannot be between its rename and its INSERT.
    """
    removed = 0
    candidates = store.blobs_older_than(grace_seconds)
    while batch := list(itertools.islice(candidates, _BATCH)):
        referenced = repo.referenced(batch)
        for digest in batch:
            if digest in referenced:
                continue
            with repo.try_digest_scope(digest) as scope:
                if scope is None or scope.references(digest) > 0:
                    continue
                store.delete(digest)
                removed += 1
                log.warning("removed orphan blob %s: no record references it", digest)
    return removed


def start_maintenance(config: Config, store: BlobStore, repo: MediaRepository) -> threading.Event:
    """Run `maintain` at start-up and then every `temp_sweep_interval_seconds`, in a daemon thread,
    and `scrub_tick` likewise in another (a long scrub slice never delays the housekeeping).

    Setting the returned event stops both.
    """
    stop = threading.Event()

    def every_period(work: Callable[[Config, BlobStore, MediaRepository], None], what: str) -> None:
        while True:
            try:
                work(config, store, repo)
            except Exception:  # the database may be away; next round
                log.exception("%s failed; will retry", what)
            if stop.wait(config.temp_sweep_interval_seconds):
                return

    for work, name in ((maintain, "maintenance"), (scrub_tick, "scrub")):
        thread = threading.Thread(target=every_period, args=(work, name), name=f"media-{name}", daemon=True)
        thread.start()
    return stop
