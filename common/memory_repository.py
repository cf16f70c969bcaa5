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
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from common.problems import DatabaseUnavailable
from common.repository import DigestScope, ListQuery, MediaRecord, NewMedia, NewPending


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

    def referenced(self, digests: Sequence[str]) -> set[str]:
        self._check()
        wanted = set(digests)
        return {r.sha256 for r in self.rows.values() if r.sha256 in wanted}

    def digests_after(self, after: str, limit: int) -> list[str]:
        self._check()
        return sorted({r.sha256 for r in self.rows.values() if r.sha256 and r.sha256 > after})[:limit]

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
        return sum(1 for r in self._repo.rows.values() if r.sha256 == sha256)
