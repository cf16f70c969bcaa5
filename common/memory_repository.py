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

from common.problems import DatabaseUnavailable
from common.repository import (
    UPLOADED_EVENT,
    DigestScope,
    ImageJob,
    ListQuery,
    MediaRecord,
    NewMedia,
    NewPending,
    OutboxEvent,
    Outcome,
    Processing,
    VariantRow,
    settled,
)


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
        self.sent: set[int] = set()
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
            id=uuid.uuid4(),
            owner=new.owner,
            filename=new.filename,
            content_type=new.content_type,
            size=new.size,
            sha256=None,
            status="pending",
            created_at=now,
            updated_at=now,
            expires_at=new.expires_at,
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

    def unsent_events(self, limit: int) -> list[OutboxEvent]:
        self._check()
        return [e for e in self.outbox if e.id not in self.sent][:limit]

    def mark_sent(self, ids: Sequence[int]) -> None:
        self._check()
        self.sent.update(ids)

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        return None


class _MemoryDigestScope:
    def __init__(self, repo: InMemoryMediaRepository) -> None:
        self._repo = repo

    def insert(self, new: NewMedia) -> MediaRecord:
        self._repo._check()
        now = datetime.now(UTC)
        record = MediaRecord(id=uuid.uuid4(), created_at=now, updated_at=now, **new.__dict__)
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

    def release_processing(self, sha256: str) -> list[str]:
        self._repo._check()
        with self._repo._guard:
            if any(r.sha256 == sha256 for r in self._repo.rows.values()):
                return []
            gone = [key for key in self._repo.jobs if key[0] == sha256]
            digests = {v.sha256 for key in gone for v in self._repo.jobs.pop(key).variants.values()}
        return sorted(digests)

    def add_variant(self, sha256: str, recipe: int, variant: VariantRow) -> bool:
        self._repo._check()
        with self._repo._guard:
            job = self._repo.jobs.get((sha256, recipe))
            if job is None:
                return False
            job.variants[(variant.format, variant.width)] = variant
            return True
