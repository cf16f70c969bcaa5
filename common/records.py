"""What the repository's rows become: records, jobs, holds, erasures and the scrub's state, as
frozen data classes, with the statuses and event types they use. No SQL, no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.quota import Usage

STATUSES = ("pending", "ready", "failed", "corrupt")
CORRUPT_REASON = "the stored bytes no longer match their SHA-256 (quarantined)"
UPLOADED_EVENT = "media.uploaded"  # the CloudEvent type the outbox publishes


@dataclass(frozen=True)
class MediaRecord:
    id: uuid.UUID
    owner: str
    filename: str
    content_type: str
    size: int
    sha256: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None  # pending uploads: when the upload URL expires
    failure_reason: str | None = None
    alt: str | None = None
    caption: str | None = None
    tags: tuple[str, ...] = ()
    version: int = 1  # of the metadata: its ETag (If-Match)
    expires_unattached: bool = False
    unattached_expires_at: datetime | None = None  # set while it asked to expire and is unattached


@dataclass(frozen=True)
class NewPending:
    owner: str
    filename: str
    content_type: str
    size: int
    declared_sha256: str | None
    expires_at: datetime
    id: uuid.UUID | None = None  # chosen by the caller (the quota hold's id); None: a new one
    expire_unattached_after: float | None = None  # seconds; None: kept until deleted


@dataclass(frozen=True)
class Erasure:
    """An erasure job and its receipt."""

    id: uuid.UUID
    subject: str
    requested_by: str
    state: str  # running | done
    records_removed: int
    blobs_removed: int
    bytes_freed: int
    requested_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Reservation:
    """A quota hold's answer: the bytes it now holds, or None (refused), and what is stored."""

    granted: int | None
    stored: Usage


@dataclass(frozen=True)
class NewMedia:
    owner: str
    filename: str
    content_type: str
    size: int
    sha256: str
    status: str = "ready"
    expire_unattached_after: float | None = None  # seconds; None: kept until deleted


@dataclass(frozen=True)
class ListQuery:
    owner: str | None  # None: every owner (admins)
    limit: int
    after: tuple[datetime, uuid.UUID] | None = None  # keyset: rows strictly older than this
    content_type_prefix: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class ImageJob:
    """A claimed piece of the process function's work: one original, one recipe version."""

    sha256: str
    recipe: int
    content_type: str
    attempts: int  # including this one; also the claim's token (finish_job checks it)


@dataclass(frozen=True)
class VariantRow:
    format: str
    width: int
    height: int
    size: int
    sha256: str


@dataclass(frozen=True)
class Processing:
    """What `GET /media/{id}` says of an image's processing."""

    state: str  # pending | done | failed
    reason: str | None
    width: int | None
    height: int | None
    blurhash: str | None
    dominant_color: str | None
    variants: tuple[VariantRow, ...]


@dataclass(frozen=True)
class Outcome:
    """How a claimed job ended: done (with what was made), failed for good, or to be retried."""

    state: str  # done | failed | retry
    reason: str | None = None
    retry_after_seconds: float = 0.0
    width: int | None = None
    height: int | None = None
    blurhash: str | None = None
    dominant_color: str | None = None


@dataclass(frozen=True)
class OutboxEvent:
    id: int
    type: str
    subject: str
    data: dict[str, Any]
    created_at: datetime


def settled(job: ImageJob, outcome: Outcome, max_attempts: int) -> tuple[str, str | None, float]:
    """(state, reason, delay before the next attempt) to record: a retry past `max_attempts` is a
    failure for good (the dead letter), with the last reason."""
    if outcome.state != "retry":
        return outcome.state, outcome.reason, 0.0
    if job.attempts >= max_attempts:
        return "failed", f"gave up after {job.attempts} attempts: {outcome.reason}", 0.0
    return "pending", outcome.reason, outcome.retry_after_seconds


@dataclass(frozen=True)
class ScrubState:
    """The integrity scrub's progress (one row): the last digest checked in this pass (`""`: none
    yet), when the pass started and finished (None: not yet), and what it has read and found."""

    cursor: str = ""
    pass_started_at: datetime | None = None
    pass_finished_at: datetime | None = None
    pass_bytes: int = 0
    pass_mismatches: int = 0


# The columns a MediaRecord is read from, in its fields' order (the SQL modules select them).
MEDIA_COLUMNS = (
    "id, owner, filename, content_type, size, sha256, status,"
    " created_at, updated_at, expires_at, failure_reason,"
    " alt, caption, tags, version, expires_unattached, unattached_expires_at"
)


def media_record(row: dict[str, Any]) -> MediaRecord:
    return MediaRecord(**{**row, "tags": tuple(row["tags"])})


@dataclass(frozen=True)
class Attachment:
    media_id: uuid.UUID
    kind: str
    ref: str
    role: str | None
    position: int


@dataclass(frozen=True)
class Detail:
    """A record with what `GET /media/{id}` shows beside it: its original's processing (None when
    the digest has no job) and its attachments (ordered by kind, ref)."""

    record: MediaRecord
    processing: Processing | None
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True)
class Change:
    """One event of the change feed: its place (`xid`, `id`), what happened, to which record."""

    xid: int
    id: int
    type: str
    subject: str
    data: dict[str, Any]
    created_at: datetime
