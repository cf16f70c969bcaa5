"""The in-memory twin of `repository.PgMediaRepository`, for unit tests of the use cases.

It keeps the same contract (the repository tests run against both where they can); the per-digest
lock is a `threading.Lock` instead of a PostgreSQL advisory lock.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from common.problems import AttachmentLimit, DatabaseUnavailable
from common.quota import Limits, Usage, grant
from common.records import (
    CORRUPT_REASON,
    UPLOADED_EVENT,
    Attachment,
    Change,
    Detail,
    Erasure,
    ImageJob,
    ListQuery,
    MediaRecord,
    NewMedia,
    NewPending,
    OutboxEvent,
    Outcome,
    Processing,
    Reservation,
    ScrubState,
    VariantRow,
    settled,
)
from common.repository import DigestScope
from common.sql_recipes import CHANGE_TYPES

_COUNTED = ("ready", "corrupt")


def _expiry(after_seconds: float | None) -> dict[str, Any]:
    """expires_unattached, unattached_expires_at of a new record (as repository._expiry)."""
    if after_seconds is None:
        return {}
    return {
        "expires_unattached": True,
        "unattached_expires_at": datetime.now(UTC) + timedelta(seconds=after_seconds),
    }  # the statuses usage counts (migration 0006's trigger)


@dataclass
class _Hold:
    owner: str
    bytes: int
    files: int
    expires: float  # time.monotonic()


@dataclass
class _Job:
    content_type: str
    state: str = "pending"
    attempts: int = 0
    due: float = 0.0  # time.monotonic()
    lease_until: float | None = None
    reason: str | None = None
    made: Outcome | None = None
    variants: dict[tuple[str, int], VariantRow] = field(default_factory=dict)


class InMemoryMediaRepository:
    """The same contract without a database, for unit tests of the use cases."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, MediaRecord] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.claims: set[uuid.UUID] = set()
        self.declared: dict[uuid.UUID, str | None] = {}
        self.task_runs: dict[str, float] = {}
        self.rates: dict[str, float] = {}
        self.jobs: dict[tuple[str, int], _Job] = {}
        self.outbox: list[OutboxEvent] = []
        self.backfills: dict[int, tuple[uuid.UUID, bool]] = {}
        self.sent: set[int] = set()
        self.holds: dict[uuid.UUID, _Hold] = {}
        self.attachments: dict[tuple[uuid.UUID, str, str], Attachment] = {}
        self.erasures: dict[uuid.UUID, Erasure] = {}
        self.erasure_leases: dict[uuid.UUID, float] = {}
        self.erasure_blobs: dict[uuid.UUID, dict[str, int]] = {}
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise DatabaseUnavailable("in-memory repository switched off")

    def get(self, media_id: uuid.UUID) -> MediaRecord | None:
        self._check()
        return self.rows.get(media_id)

    def list_media(self, query: ListQuery) -> list[MediaRecord]:
        self._check()
        rows = [
            r
            for r in self.rows.values()
            if (query.owner is None or r.owner == query.owner)
            and (query.after is None or (r.created_at, r.id) < query.after)
            and (not query.content_type_prefix or r.content_type.startswith(query.content_type_prefix))
            and (not query.status or r.status == query.status)
        ]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return rows[: query.limit]

    @contextmanager
    def digest_scope(self, sha256: str) -> Iterator[DigestScope]:
        self._check()
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock:
            yield _MemoryDigestScope(self)

    @contextmanager
    def try_digest_scope(self, sha256: str) -> Iterator[DigestScope | None]:
        self._check()
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        if not lock.acquire(blocking=False):
            yield None
            return
        try:
            yield _MemoryDigestScope(self)
        finally:
            lock.release()

    def _users(self) -> list[str]:
        """Every digest in use, once per user: records, then variants."""
        originals = [r.sha256 for r in self.rows.values() if r.sha256]
        return originals + [v.sha256 for job in self.jobs.values() for v in job.variants.values()]

    def referenced(self, digests: Sequence[str]) -> set[str]:
        self._check()
        return set(digests) & set(self._users())

    def digests_after(self, after: str, limit: int) -> list[str]:
        self._check()
        return sorted({d for d in self._users() if d > after})[:limit]

    def corrupt_only(self, digests: Sequence[str]) -> set[str]:
        self._check()
        variants = {v.sha256 for job in self.jobs.values() for v in job.variants.values()}
        wanted = set(digests)
        statuses: dict[str, set[str]] = {}
        for r in self.rows.values():
            if r.sha256 in wanted:
                statuses.setdefault(r.sha256, set()).add(r.status)
        return {d for d, seen in statuses.items() if seen == {"corrupt"} and d not in variants}

    def claim_task(self, task: str, every_seconds: float) -> bool:
        self._check()
        now = time.monotonic()
        with self._guard:
            last = self.task_runs.get(task)
            if last is not None and now - last < every_seconds:
                return False
            self.task_runs[task] = now
            return True

    def rate_take(
        self, key: str, cost_seconds: float, window_seconds: float, force: bool = False
    ) -> tuple[bool, float]:
        self._check()
        now = time.time()
        with self._guard:
            tat = max(self.rates.get(key, now), now)
            allowed = force or tat + cost_seconds - now <= window_seconds
            if allowed:
                tat += cost_seconds
                self.rates[key] = tat
            return allowed, tat - now

    def purge_rate_limits(self) -> int:
        now = time.time()
        with self._guard:
            gone = [k for k, tat in self.rates.items() if tat < now]
            for k in gone:
                del self.rates[k]
        return len(gone)

    def create_pending(self, new: NewPending) -> MediaRecord:
        self._check()
        now = datetime.now(UTC)
        record = MediaRecord(
            id=new.id or uuid.uuid4(),
            owner=new.owner,
            filename=new.filename,
            content_type=new.content_type,
            size=new.size,
            sha256=None,
            status="pending",
            created_at=now,
            updated_at=now,
            expires_at=new.expires_at,
            **_expiry(new.expire_unattached_after),
        )
        with self._guard:
            self.rows[record.id] = record
            self.declared[record.id] = new.declared_sha256
        return record

    def claim(self, media_id: uuid.UUID, stale_after_seconds: int) -> MediaRecord | None:
        self._check()
        with self._guard:
            record = self.rows.get(media_id)
            if record is None or record.status != "pending" or media_id in self.claims:
                return None
            self.claims.add(media_id)
            return record

    def release(self, media_id: uuid.UUID) -> None:
        with self._guard:
            self.claims.discard(media_id)

    def fail(self, media_id: uuid.UUID, reason: str) -> None:
        with self._guard:
            record = self.rows.get(media_id)
            if record is not None and record.status == "pending":
                self.rows[media_id] = replace(record, status="failed", failure_reason=reason)
            self.claims.discard(media_id)

    def remove_expired_pending(self, grace_seconds: int, limit: int = 100) -> list[MediaRecord]:
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
        with self._guard:
            gone = [
                r
                for r in self.rows.values()
                if r.status == "pending" and r.expires_at and r.expires_at < cutoff
            ][:limit]
            for r in gone:
                del self.rows[r.id]
        return gone

    def claim_job(self, lease_seconds: float, sha256: str | None = None) -> ImageJob | None:
        self._check()
        now = time.monotonic()
        with self._guard:
            due = [
                (job.due, key)
                for key, job in self.jobs.items()
                if job.state == "pending"
                and job.due <= now
                and (job.lease_until is None or job.lease_until < now)
                and (sha256 is None or key[0] == sha256)
            ]
            if not due:
                return None
            key = min(due)[1]
            job = self.jobs[key]
            job.attempts += 1
            job.lease_until = now + lease_seconds
            return ImageJob(key[0], key[1], job.content_type, job.attempts)

    def finish_job(self, job: ImageJob, outcome: Outcome, max_attempts: int) -> str | None:
        self._check()
        state, reason, delay = settled(job, outcome, max_attempts)
        with self._guard:
            held = self.jobs.get((job.sha256, job.recipe))
            if held is None or held.state != "pending" or held.attempts != job.attempts:
                return None
            held.state, held.reason, held.lease_until = state, reason, None
            held.due = time.monotonic() + delay
            if state == "done":
                held.made = outcome
            return state

    def processing_of(self, sha256: str, recipe: int) -> Processing | None:
        self._check()
        job = self.jobs.get((sha256, recipe))
        if job is None:
            return None
        made = job.made or Outcome(job.state)
        variants = tuple(sorted(job.variants.values(), key=lambda v: (v.format, v.width)))
        return Processing(
            job.state,
            job.reason,
            made.width,
            made.height,
            made.blurhash,
            made.dominant_color,
            variants if job.state == "done" else (),
        )

    def backfill_position(self, recipe: int) -> uuid.UUID | None:
        self._check()
        after, finished = self.backfills.setdefault(recipe, (uuid.UUID(int=0), False))
        return None if finished else after

    def records_after(self, after: uuid.UUID, limit: int) -> list[MediaRecord]:
        self._check()
        return [self.rows[i] for i in sorted(i for i in self.rows if i > after)[:limit]]

    def advance_backfill(self, recipe: int, after: uuid.UUID, finished: bool) -> None:
        self._check()
        self.backfills[recipe] = (after, finished)

    def unsent_events(self, limit: int) -> list[OutboxEvent]:
        self._check()
        return [e for e in self.outbox if e.id not in self.sent][:limit]

    def mark_sent(self, ids: Sequence[int]) -> None:
        self._check()
        self.sent.update(ids)

    def usage(self, owner: str) -> Usage:
        self._check()
        with self._guard:
            mine = [r for r in self.rows.values() if r.owner == owner and r.status in _COUNTED]
        return Usage(sum(r.size for r in mine), len(mine))

    def reserve(
        self,
        hold: uuid.UUID,
        owner: str,
        limits: Limits,
        files: int,
        need: int,
        want: int,
        ttl_seconds: float,
    ) -> Reservation:
        stored = self.usage(owner)
        now = time.monotonic()
        with self._guard:
            others = [h for k, h in self.holds.items() if h.owner == owner and k != hold and h.expires > now]
            held = Usage(sum(h.bytes for h in others), sum(h.files for h in others))
            granted = grant(stored, held, limits, files, need, want)
            if granted is not None:
                self.holds[hold] = _Hold(owner, granted, files, now + ttl_seconds)
        return Reservation(granted, stored)

    def release_hold(self, hold: uuid.UUID) -> None:
        self._check()
        with self._guard:
            self.holds.pop(hold, None)

    def purge_holds(self) -> int:
        now = time.monotonic()
        with self._guard:
            gone = [k for k, h in self.holds.items() if h.expires < now]
            for k in gone:
                del self.holds[k]
        return len(gone)

    def start_erasure(self, subject: str, requested_by: str) -> Erasure:
        self._check()
        with self._guard:
            for e in self.erasures.values():
                if e.subject == subject and e.state == "running":
                    return e
            e = Erasure(uuid.uuid4(), subject, requested_by, "running", 0, 0, 0, datetime.now(UTC), None)
            self.erasures[e.id] = e
            self.erasure_blobs[e.id] = {}
            return e

    def erasure(self, erasure: uuid.UUID) -> Erasure | None:
        self._check()
        return self.erasures.get(erasure)

    def claim_erasure(self, lease_seconds: float, erasure: uuid.UUID | None = None) -> Erasure | None:
        self._check()
        now = time.monotonic()
        with self._guard:
            for e in sorted(self.erasures.values(), key=lambda e: e.requested_at):
                if e.state != "running" or (erasure is not None and e.id != erasure):
                    continue
                if self.erasure_leases.get(e.id, 0.0) < now:
                    self.erasure_leases[e.id] = now + lease_seconds
                    return e
        return None

    def renew_erasure(self, erasure: uuid.UUID, lease_seconds: float) -> None:
        self._check()
        with self._guard:
            self.erasure_leases[erasure] = time.monotonic() + lease_seconds

    def release_erasure(self, erasure: uuid.UUID) -> None:
        self._check()
        with self._guard:
            self.erasure_leases.pop(erasure, None)

    def records_of(self, owner: str, limit: int) -> list[MediaRecord]:
        self._check()
        with self._guard:
            return [r for r in self.rows.values() if r.owner == owner][:limit]

    def erased_blobs(self, erasure: uuid.UUID, limit: int) -> list[tuple[str, int]]:
        self._check()
        with self._guard:
            return sorted(self.erasure_blobs.get(erasure, {}).items())[:limit]

    def finish_erasure(self, erasure: uuid.UUID) -> Erasure | None:
        self._check()
        with self._guard:
            e = self.erasures.get(erasure)
            if e is None or e.state != "running" or self.erasure_blobs.get(erasure):
                return None
            if any(r.owner == e.subject for r in self.rows.values()):
                return None
            done = replace(e, state="done", finished_at=datetime.now(UTC))
            self.erasures[erasure] = done
            self.erasure_leases.pop(erasure, None)
            return done

    def _count(self, erasure: uuid.UUID, records: int = 0, blobs: int = 0, size: int = 0) -> None:
        e = self.erasures[erasure]
        self.erasures[erasure] = replace(
            e,
            records_removed=e.records_removed + records,
            blobs_removed=e.blobs_removed + blobs,
            bytes_freed=e.bytes_freed + size,
        )

    # --- the recipe application (see sql_recipes.py; the change feed's triggers exist only there)

    def update_metadata(
        self, media_id: uuid.UUID, expected_version: int | None, fields: dict[str, Any]
    ) -> MediaRecord | None:
        self._check()
        with self._guard:
            record = self.rows.get(media_id)
            if record is None or (expected_version is not None and record.version != expected_version):
                return None
            changes: dict[str, Any] = {k: tuple(v) if k == "tags" else v for k, v in fields.items()}
            done = replace(record, **changes, version=record.version + 1, updated_at=datetime.now(UTC))
            self.rows[media_id] = done
            return done

    def attach(
        self, attachment: Attachment, position_given: bool, max_per_media: int, max_per_ref: int
    ) -> tuple[Attachment, bool]:
        self._check()
        a = attachment
        with self._guard:
            record = self.rows.get(a.media_id)
            if record is None:
                raise LookupError(a.media_id)
            key = (a.media_id, a.kind, a.ref)
            existing = self.attachments.get(key)
            if existing is None:
                if sum(1 for k in self.attachments if k[0] == a.media_id) >= max_per_media:
                    raise AttachmentLimit("media", max_per_media)
                on_ref = [v.position for k, v in self.attachments.items() if k[1:] == (a.kind, a.ref)]
                if len(on_ref) >= max_per_ref:
                    raise AttachmentLimit("reference", max_per_ref)
                position = a.position if position_given else max(on_ref, default=-1) + 1
            else:
                position = a.position if position_given else existing.position
            stored = replace(a, position=position)
            self.attachments[key] = stored
            self.rows[a.media_id] = replace(record, unattached_expires_at=None)
            return stored, existing is None

    def detach(self, media_id: uuid.UUID, kind: str, ref: str, ttl_seconds: float) -> bool:
        self._check()
        with self._guard:
            gone = self.attachments.pop((media_id, kind, ref), None) is not None
            if gone:
                self._restart_expiry([media_id], ttl_seconds)
            return gone

    def detach_all(self, kind: str, ref: str, owner: str | None, ttl_seconds: float) -> int:
        self._check()
        with self._guard:
            keys = [
                k
                for k in self.attachments
                if k[1:] == (kind, ref) and (owner is None or self.rows[k[0]].owner == owner)
            ]
            for k in keys:
                del self.attachments[k]
            self._restart_expiry([k[0] for k in keys], ttl_seconds)
            return len(keys)

    def _restart_expiry(self, media_ids: Sequence[uuid.UUID], ttl_seconds: float) -> None:
        until = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        for media_id in media_ids:
            record = self.rows.get(media_id)
            if record and record.expires_unattached and not any(k[0] == media_id for k in self.attachments):
                self.rows[media_id] = replace(record, unattached_expires_at=until)

    def attachments_of(self, media_id: uuid.UUID) -> list[Attachment]:
        self._check()
        return sorted(
            (v for k, v in self.attachments.items() if k[0] == media_id), key=lambda a: (a.kind, a.ref)
        )

    def detail(self, media_id: uuid.UUID, recipe: int) -> Detail | None:
        record = self.get(media_id)
        if record is None:
            return None
        processing = self.processing_of(record.sha256, recipe) if record.sha256 else None
        return Detail(record, processing, tuple(self.attachments_of(media_id)))

    def attached(
        self, kind: str, ref: str, owner: str | None, limit: int, after: tuple[int, uuid.UUID] | None
    ) -> list[tuple[MediaRecord, Attachment]]:
        self._check()
        with self._guard:
            found = [
                (self.rows[k[0]], v)
                for k, v in self.attachments.items()
                if k[1:] == (kind, ref) and (owner is None or self.rows[k[0]].owner == owner)
            ]
        found.sort(key=lambda pair: (pair[1].position, pair[0].id))
        if after is not None:
            found = [p for p in found if (p[1].position, p[0].id) > after]
        return found[:limit]

    def expired_unattached(self, limit: int) -> list[MediaRecord]:
        self._check()
        now = datetime.now(UTC)
        with self._guard:
            due = [r for r in self.rows.values() if r.unattached_expires_at and r.unattached_expires_at < now]
        return sorted(due, key=lambda r: r.unattached_expires_at or now)[:limit]

    def changes_after(self, after: tuple[int, int] | None, limit: int) -> list[Change]:
        """What the twin's outbox holds of the feed: the feed is written by PostgreSQL's triggers,
        which the twin does not emulate (tests/integration covers it)."""
        self._check()
        return [
            Change(0, e.id, e.type, e.subject, e.data, e.created_at)
            for e in self.outbox
            if e.type.startswith(CHANGE_TYPES) and (after is None or (0, e.id) > after)
        ][:limit]

    def changes_horizon(self) -> tuple[int, int] | None:
        return None

    def purge_changes(self, older_than_seconds: float, limit: int) -> int:
        return 0

    def processing_of_many(self, digests: Sequence[str], recipe: int) -> dict[str, Processing]:
        found = {d: self.processing_of(d, recipe) for d in digests}
        return {d: p for d, p in found.items() if p is not None}

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        return None

    def mark_corrupt(self, sha256: str, reason: str = CORRUPT_REASON) -> int:
        self._check()
        now = datetime.now(UTC)
        with self._guard:
            hit = [r for r in self.rows.values() if r.sha256 == sha256 and r.status == "ready"]
            for r in hit:
                self.rows[r.id] = replace(r, status="corrupt", failure_reason=reason[:500], updated_at=now)
        return len(hit)

    def remake_variants_of(self, variant_sha256: str) -> int:
        self._check()
        with self._guard:
            jobs = [
                job
                for job in self.jobs.values()
                if any(v.sha256 == variant_sha256 for v in job.variants.values())
            ]
            for job in jobs:
                job.variants = {k: v for k, v in job.variants.items() if v.sha256 != variant_sha256}
                job.state, job.attempts, job.reason, job.lease_until, job.due = "pending", 0, None, None, 0.0
        return len(jobs)

    def scrub_state(self) -> ScrubState:
        self._check()
        state: ScrubState = getattr(self, "scrub", ScrubState())
        return state

    def save_scrub_state(self, state: ScrubState) -> None:
        self._check()
        self.scrub = state

    def referenced_totals(self) -> tuple[int, int]:
        self._check()
        sizes = {r.sha256: r.size for r in self.rows.values() if r.sha256}
        for job in self.jobs.values():
            for v in job.variants.values():
                sizes[v.sha256] = max(v.size, sizes.get(v.sha256, 0))
        return len(sizes), sum(sizes.values())

    def statuses_of(self, sha256: str) -> dict[str, int]:
        self._check()
        counts: dict[str, int] = {}
        for r in self.rows.values():
            if r.sha256 == sha256:
                counts[r.status] = counts.get(r.status, 0) + 1
        return counts


class _MemoryDigestScope:
    def __init__(self, repo: InMemoryMediaRepository) -> None:
        self._repo = repo

    def insert(self, new: NewMedia) -> MediaRecord:
        self._repo._check()
        now = datetime.now(UTC)
        fields = {k: v for k, v in new.__dict__.items() if k != "expire_unattached_after"}
        record = MediaRecord(
            id=uuid.uuid4(), created_at=now, updated_at=now, **fields, **_expiry(new.expire_unattached_after)
        )
        with self._repo._guard:
            self._repo.rows[record.id] = record
        return replace(record)

    def complete(self, media_id: uuid.UUID, sha256: str, size: int) -> MediaRecord | None:
        self._repo._check()
        with self._repo._guard:
            record = self._repo.rows.get(media_id)
            if record is None or record.status != "pending":
                return None
            done = replace(record, status="ready", sha256=sha256, size=size, updated_at=datetime.now(UTC))
            self._repo.rows[media_id] = done
            self._repo.claims.discard(media_id)
            return done

    def delete(self, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        self._repo._check()
        with self._repo._guard:
            record = self._repo.rows.get(media_id)
            if record is None or record.sha256 != sha256:
                return None
            return self._repo.rows.pop(media_id)

    def references(self, sha256: str) -> int:
        self._repo._check()
        return self._repo._users().count(sha256)

    def enqueue_processing(self, sha256: str, recipe: int, content_type: str, media_id: uuid.UUID) -> None:
        self._repo._check()
        with self._repo._guard:
            self._repo.jobs.setdefault((sha256, recipe), _Job(content_type))
            data = {"id": str(media_id), "sha256": sha256, "content_type": content_type}
            event_id = len(self._repo.outbox) + 1
            self._repo.outbox.append(
                OutboxEvent(event_id, UPLOADED_EVENT, str(media_id), data, datetime.now(UTC))
            )

    def enqueue_job(self, sha256: str, recipe: int, content_type: str) -> bool:
        self._repo._check()
        with self._repo._guard:
            if (sha256, recipe) in self._repo.jobs:
                return False
            self._repo.jobs[sha256, recipe] = _Job(content_type)
            return True

    def release_superseded(self, sha256: str, recipe: int) -> list[str]:
        self._repo._check()
        with self._repo._guard:
            old = [key for key in self._repo.jobs if key[0] == sha256 and key[1] < recipe]
            return sorted({v.sha256 for key in old for v in self._repo.jobs.pop(key).variants.values()})

    def release_processing(self, sha256: str) -> list[str]:
        return sorted({v.sha256 for v in self.release_variants(sha256)})

    def release_variants(self, sha256: str) -> list[VariantRow]:
        self._repo._check()
        with self._repo._guard:
            if any(r.sha256 == sha256 for r in self._repo.rows.values()):
                return []
            gone = [key for key in self._repo.jobs if key[0] == sha256]
            return [v for key in gone for v in self._repo.jobs.pop(key).variants.values()]

    def settle_hold(self, hold: uuid.UUID) -> None:
        self._repo.release_hold(hold)

    def erase(self, erasure: uuid.UUID, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        deleted = self.delete(media_id, sha256)
        if deleted is None:
            return None
        with self._repo._guard:
            self._repo._count(erasure, records=1)
            if sha256 is not None and not any(r.sha256 == sha256 for r in self._repo.rows.values()):
                self._repo.erasure_blobs[erasure].setdefault(sha256, deleted.size)
        return deleted

    def erased_blob(
        self, erasure: uuid.UUID, sha256: str, size: int, removed: bool, variants: Sequence[VariantRow]
    ) -> None:
        self._repo._check()
        with self._repo._guard:
            if self._repo.erasure_blobs[erasure].pop(sha256, None) is None:
                return
            if removed:
                self._repo._count(erasure, blobs=1, size=size)
            for v in variants:
                self._repo.erasure_blobs[erasure].setdefault(v.sha256, v.size)

    def add_variant(self, sha256: str, recipe: int, variant: VariantRow) -> bool:
        self._repo._check()
        with self._repo._guard:
            job = self._repo.jobs.get((sha256, recipe))
            if job is None:
                return False
            job.variants[(variant.format, variant.width)] = variant
            return True
