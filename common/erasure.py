"""Erasure of everything a subject owns (GDPR art. 17), as a resumable job.

`accounts.request_erasure` starts the job (or joins the one running) and works on it for a moment,
so a small account is gone before the 202 answers; the maintenance (every process, `resume_erasures`)
carries on with whatever is left, under a lease a dead process loses. The work is batches:
- every record the subject owns, whatever its status, is deleted in its digest's transaction, which
  also counts it on the receipt and notes its blob when no other record has it (`scope.erase`);
- each noted blob is then checked under its digest's lock, the same refcount rule as a single
  delete: unlinked only when nothing references it (a blob another user also uploaded stays, and
  theirs keeps working), counted on the receipt, and the variants its original had are noted next.
No transaction or lock is held for more than one record or blob, so an erasure of any size runs
beside normal traffic, and a crash at any point resumes exactly where the database says it was.
When nothing is left, the job is `done`, with its receipt, and an audit event is emitted.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from common import audit, metrics
from common.cas import BlobStore
from common.problems import DatabaseUnavailable
from common.records import Erasure
from common.removal import NO_BLOB
from common.repository import MediaRepository

log = logging.getLogger("media.erasure")

BATCH = 200
LEASE_SECONDS = 15.0  # renewed after every batch (a batch takes well under a second)
ROUND_SECONDS = 20.0  # what one maintenance round spends at most


def run(
    store: BlobStore, repo: MediaRepository, erasure_id: uuid.UUID, deadline: float, audited: bool = True
) -> bool:
    """Work on the (leased) erasure until it is done (True) or `deadline` (time.monotonic) passes;
    `audited`: emit the audit event at the end (MEDIA_AUDIT_LOG)."""
    job = repo.erasure(erasure_id)
    if job is None or job.state != "running":
        return True
    while time.monotonic() < deadline:
        blobs = repo.erased_blobs(job.id, BATCH)
        for sha256, size in blobs:
            _check_blob(store, repo, job.id, sha256, size)
        if blobs:
            continue
        records = repo.records_of(job.subject, BATCH)
        for record in records:
            with repo.digest_scope(record.sha256 or NO_BLOB) as scope:
                if scope.erase(job.id, record.id, record.sha256) is not None:
                    metrics.business(metrics.ERASED_RECORDS)
        if records:
            repo.renew_erasure(job.id, LEASE_SECONDS)
            continue
        done = repo.finish_erasure(job.id)
        if done is not None:
            if audited:
                _audit(done)
            log.info("erasure %s of %s done: %s", done.id, done.subject, receipt_json(done)["receipt"])
            return True
    return False


def _check_blob(
    store: BlobStore, repo: MediaRepository, erasure_id: uuid.UUID, sha256: str, size: int
) -> None:
    with repo.digest_scope(sha256) as scope:
        variants = scope.release_variants(sha256)
        removed = scope.references(sha256) == 0
        if removed:
            store.delete(sha256)
        scope.erased_blob(erasure_id, sha256, size, removed, variants)


def resume_erasures(store: BlobStore, repo: MediaRepository, audited: bool = True) -> None:
    """A maintenance round's share: the running erasures nobody holds, for `ROUND_SECONDS` in all."""
    deadline = time.monotonic() + ROUND_SECONDS
    while time.monotonic() < deadline and (job := repo.claim_erasure(LEASE_SECONDS)) is not None:
        try:
            run(store, repo, job.id, deadline, audited)
        except DatabaseUnavailable:
            log.warning("erasure %s paused: the database is unavailable", job.id)
            return


def _audit(job: Erasure) -> None:
    audit.emit(
        audit.Event(
            event="erasure_completed",
            outcome="success",
            status=200,
            actor=job.requested_by,
            client_ip=None,
            media_id=None,
            sha256=None,
            size=job.bytes_freed,
            request_id=f"erasure-{job.id}",
            function="maintenance",
        ),
        subject=job.subject,
        records_removed=job.records_removed,
        blobs_removed=job.blobs_removed,
    )


def receipt_json(job: Erasure, base_url: str = "") -> dict[str, Any]:
    return {
        "id": str(job.id),
        "subject": job.subject,
        "state": job.state,
        "requested_by": job.requested_by,
        "receipt": {
            "records_removed": job.records_removed,
            "blobs_removed": job.blobs_removed,
            "bytes_freed": job.bytes_freed,
            "requested_at": job.requested_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        },
        "links": {"self": f"{base_url}/erasures/{job.id}"},
    }
