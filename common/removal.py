"""Removing a record and, with its last reference, its bytes: the refcount rule every delete
follows (a single delete, the expiry of what nobody attached), under the digest's lock.

The record's DELETE commits first, in its digest's transaction; then, under the lock again, the
blob is unlinked only if no record or variant references it any more (an upload of the same bytes
may have committed in between), and so are the original's processing job, its variants and each
variant's blob that nothing else uses. A failure between the two steps leaves at worst an
unreferenced blob, which the reconciler removes (see maintenance.py); never a record without bytes.
"""

from __future__ import annotations

import logging

from common.cas import BlobStore
from common.problems import DatabaseUnavailable
from common.records import MediaRecord
from common.repository import MediaRepository

log = logging.getLogger("media.removal")

NO_BLOB = "0" * 64  # the lock key for records that have no bytes yet


def remove(store: BlobStore, repo: MediaRepository, record: MediaRecord) -> MediaRecord | None:
    """Delete `record` if its digest is still the one read (None: it changed, or it is gone), then
    its blob with its last reference."""
    with repo.digest_scope(record.sha256 or NO_BLOB) as scope:
        deleted = scope.delete(record.id, record.sha256)
    if deleted is not None and deleted.sha256 is not None:
        unlink_if_unreferenced(store, repo, deleted.sha256)
    return deleted


def unlink_if_unreferenced(store: BlobStore, repo: MediaRepository, sha256: str) -> None:
    """The last record of a digest is gone (committed): its blob goes too, unless it is referenced
    again; so do its processing job and variants, and each variant's blob nothing else uses."""
    try:
        with repo.digest_scope(sha256) as scope:
            released = scope.release_processing(sha256)  # its variants, with its last record
            if scope.references(sha256) == 0:
                store.delete(sha256)
    except DatabaseUnavailable:
        log.warning("blob %s of a deleted record left for the reconciler", sha256)
        return
    for variant in released:
        unlink_if_unreferenced(store, repo, variant)


def release_superseded(store: BlobStore, repo: MediaRepository, sha256: str, recipe: int) -> None:
    """The original's variants under `recipe` are made: its jobs and variants under older recipes
    go, and each of their blobs that nothing else uses (the rule above, variant by variant)."""
    try:
        with repo.digest_scope(sha256) as scope:
            released = scope.release_superseded(sha256, recipe)
    except DatabaseUnavailable:
        log.warning("older variants of %s kept: they go with its original's last record", sha256)
        return
    for variant in released:
        unlink_if_unreferenced(store, repo, variant)
