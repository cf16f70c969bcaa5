"""Media records in PostgreSQL (psycopg 3 with a per-process pool), and an in-memory twin for tests.

Only this module speaks SQL. Every query is parameterised. Connections come from
`database.Database`, which bounds every wait on the server and turns driver and pool failures
into `DatabaseUnavailable` (503 at the edge) and values the database refuses into
`UnstorableInput` (400): never psycopg exceptions.

`digest_scope(sha256)` is the lock that keeps the CAS and the table consistent: one transaction
holding a transaction-scoped advisory lock keyed by the digest (`pg_advisory_xact_lock`). What
is written inside commits when the block ends, and the lock goes with that commit; the writes
inside are savepoints. Committing an upload and unlinking the last blob of a digest both happen
inside one, so a delete can never unlink a blob between an upload's rename and its INSERT (see
`media.py`). Advisory locks work across processes and hosts, which file locks on NFS do not; a
transaction-scoped one also works through PgBouncer in transaction mode, where a session lock
would stay on whichever server connection took it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from psycopg.types.json import Jsonb

from common.database import Database, DeadlineConnection, translate_errors

STATUSES = ("pending", "ready", "failed")
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


@dataclass(frozen=True)
class NewPending:
    owner: str
    filename: str
    content_type: str
    size: int
    declared_sha256: str | None
    expires_at: datetime


@dataclass(frozen=True)
class NewMedia:
    owner: str
    filename: str
    content_type: str
    size: int
    sha256: str
    status: str = "ready"


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


class DigestScope(Protocol):
    def insert(self, new: NewMedia) -> MediaRecord: ...

    def complete(self, media_id: uuid.UUID, sha256: str, size: int) -> MediaRecord | None:
        """pending -> ready; None when the record is no longer pending (cleaned up, or finished)."""

    def delete(self, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        """Delete the record if it still has digest `sha256` (None: no bytes yet); else None."""

    def references(self, sha256: str) -> int:
        """Records whose content is `sha256`, and variants whose bytes are: the blob's users."""

    def enqueue_processing(self, sha256: str, recipe: int, content_type: str, media_id: uuid.UUID) -> None:
        """The job for this original (unless one exists) and a `media.uploaded` outbox row, in the
        transaction that makes the record ready."""

    def release_processing(self, sha256: str) -> list[str]:
        """When no record has this original any more: its jobs and variant rows go; returns the
        variants' digests (their blobs may now be unreferenced)."""

    def add_variant(self, sha256: str, recipe: int, variant: VariantRow) -> bool:
        """Record a variant of the job (sha256, recipe); False when that job is gone (its original
        was deleted meanwhile). Holds the job row (FOR SHARE) until the scope ends."""


class MediaRepository(Protocol):
    def get(self, media_id: uuid.UUID) -> MediaRecord | None: ...

    def list_media(self, query: ListQuery) -> list[MediaRecord]: ...

    def digest_scope(self, sha256: str) -> AbstractContextManager[DigestScope]:
        """The digest's lock for the block, which is one transaction: its writes commit at the end."""

    def try_digest_scope(self, sha256: str) -> AbstractContextManager[DigestScope | None]:
        """The digest's lock if it is free right now, else None (nothing waits)."""

    def referenced(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` some record references."""

    def digests_after(self, after: str, limit: int) -> list[str]:
        """The referenced digests greater than `after` (`""` for the first), in order, `limit` of them."""

    def claim_task(self, task: str, every_seconds: float) -> bool:
        """True for one caller per `every_seconds` across all processes (maintenance rounds)."""

    def rate_take(
        self, key: str, cost_seconds: float, window_seconds: float, force: bool = False
    ) -> tuple[bool, float]:
        """One GCRA decision, atomically (see `ratelimit.py`): allowed?, and the key's TAT ahead
        of now afterwards, in seconds."""

    def purge_rate_limits(self) -> int:
        """Forget the keys at full quota again (their TAT has passed)."""

    def create_pending(self, new: NewPending) -> MediaRecord: ...

    def claim(self, media_id: uuid.UUID, stale_after_seconds: int) -> MediaRecord | None:
        """Mark a pending upload as in progress; None when it is not pending or already claimed.

        A claim older than `stale_after_seconds` belongs to a process that died mid-upload and is
        taken over, so a crash does not leave the URL unusable until it expires.
        """

    def release(self, media_id: uuid.UUID) -> None:
        """Give up a claim, so that the upload can be retried with the same URL."""

    def fail(self, media_id: uuid.UUID, reason: str) -> None: ...

    def remove_expired_pending(self, grace_seconds: int, limit: int = 100) -> list[MediaRecord]: ...

    def claim_job(self, lease_seconds: float, sha256: str | None = None) -> ImageJob | None:
        """The oldest due pending job (or this original's), leased for `lease_seconds`: nobody
        else claims it until it is finished or the lease runs out (a worker that died)."""

    def finish_job(self, job: ImageJob, outcome: Outcome, max_attempts: int) -> str | None:
        """Record how the claimed job ended (`settled`): the state recorded, or None when the claim
        was lost (another worker took it after the lease ran out)."""

    def processing_of(self, sha256: str, recipe: int) -> Processing | None: ...

    def unsent_events(self, limit: int) -> list[OutboxEvent]: ...

    def mark_sent(self, ids: Sequence[int]) -> None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def _lock_key(sha256: str) -> int:
    """A signed 64-bit advisory-lock key from the digest's first 16 hex digits."""
    return int(sha256[:16], 16) - (1 << 63)


_COLUMNS = (
    "id, owner, filename, content_type, size, sha256, status,"
    " created_at, updated_at, expires_at, failure_reason"
)


def _record(row: dict[str, Any]) -> MediaRecord:
    return MediaRecord(**row)


class _PgDigestScope:
    def __init__(self, conn: DeadlineConnection) -> None:
        self._conn = conn

    def insert(self, new: NewMedia) -> MediaRecord:
        with translate_errors(), self._conn.transaction():
            row = self._conn.execute(
                f"INSERT INTO media (id, owner, filename, content_type, size, sha256, status)"  # noqa: S608
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (uuid.uuid4(), new.owner, new.filename, new.content_type, new.size, new.sha256, new.status),
            ).fetchone()
        assert row is not None
        return _record(row)

    def complete(self, media_id: uuid.UUID, sha256: str, size: int) -> MediaRecord | None:
        with translate_errors(), self._conn.transaction():
            row = self._conn.execute(
                "UPDATE media SET status = 'ready', sha256 = %s, size = %s, claimed_at = NULL,"  # noqa: S608
                f" updated_at = clock_timestamp() WHERE id = %s AND status = 'pending' RETURNING {_COLUMNS}",
                (sha256, size, media_id),
            ).fetchone()
        return _record(row) if row else None

    def delete(self, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        with translate_errors(), self._conn.transaction():
            row = self._conn.execute(
                "DELETE FROM media WHERE id = %s AND sha256 IS NOT DISTINCT FROM %s"  # noqa: S608
                f" RETURNING {_COLUMNS}",
                (media_id, sha256),
            ).fetchone()
        return _record(row) if row else None

    def references(self, sha256: str) -> int:
        with translate_errors():
            row = self._conn.execute(
                "SELECT (SELECT count(*) FROM media WHERE sha256 = %s)"
                " + (SELECT count(*) FROM image_variants WHERE variant_sha256 = %s) AS n",
                (sha256, sha256),
            ).fetchone()
        assert row is not None
        return int(row["n"])

    def enqueue_processing(self, sha256: str, recipe: int, content_type: str, media_id: uuid.UUID) -> None:
        with translate_errors(), self._conn.transaction():
            self._conn.execute(
                "INSERT INTO image_jobs (sha256, recipe, content_type) VALUES (%s, %s, %s)"
                " ON CONFLICT (sha256, recipe) DO NOTHING",
                (sha256, recipe, content_type),
            )
            self._conn.execute(
                "INSERT INTO outbox (type, subject, data) VALUES (%s, %s, %s)",
                (
                    UPLOADED_EVENT,
                    str(media_id),
                    Jsonb({"id": str(media_id), "sha256": sha256, "content_type": content_type}),
                ),
            )

    def release_processing(self, sha256: str) -> list[str]:
        with translate_errors(), self._conn.transaction():
            held = self._conn.execute("SELECT 1 FROM media WHERE sha256 = %s LIMIT 1", (sha256,)).fetchone()
            if held is not None:
                return []
            rows = self._conn.execute(
                "DELETE FROM image_variants WHERE sha256 = %s RETURNING variant_sha256", (sha256,)
            ).fetchall()
            self._conn.execute("DELETE FROM image_jobs WHERE sha256 = %s", (sha256,))
        return sorted({str(r["variant_sha256"]) for r in rows})

    def add_variant(self, sha256: str, recipe: int, variant: VariantRow) -> bool:
        with translate_errors(), self._conn.transaction():
            job = self._conn.execute(
                "SELECT 1 FROM image_jobs WHERE sha256 = %s AND recipe = %s FOR SHARE", (sha256, recipe)
            ).fetchone()
            if job is None:
                return False
            self._conn.execute(
                "INSERT INTO image_variants (sha256, recipe, format, width, height, size, variant_sha256)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha256, recipe, format, width)"
                " DO UPDATE SET height = EXCLUDED.height, size = EXCLUDED.size,"
                " variant_sha256 = EXCLUDED.variant_sha256",
                (sha256, recipe, variant.format, variant.width, variant.height, variant.size, variant.sha256),
            )
        return True


class PgMediaRepository:
    """Opens its pool on construction; build it per process, after the fork (see services.py)."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 8,
        timeout_seconds: float = 2.0,
        transaction_pooling: bool = False,
    ) -> None:
        self._db = Database(
            conninfo,
            max_size=max_size,
            timeout_seconds=timeout_seconds,
            transaction_pooling=transaction_pooling,
        )
        self._conn = self._db.connection

    def get(self, media_id: uuid.UUID) -> MediaRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM media WHERE id = %s",  # noqa: S608
                (media_id,),
            ).fetchone()
        return _record(row) if row else None

    def list_media(self, query: ListQuery) -> list[MediaRecord]:
        where: list[str] = []
        params: list[Any] = []
        if query.owner is not None:
            where.append("owner = %s")
            params.append(query.owner)
        if query.after is not None:
            where.append("(created_at, id) < (%s, %s)")
            params.extend(query.after)
        if query.content_type_prefix:
            where.append("starts_with(content_type, %s)")
            params.append(query.content_type_prefix)
        if query.status:
            where.append("status = %s")
            params.append(query.status)
        sql = f"SELECT {_COLUMNS} FROM media"  # noqa: S608 - only fixed fragments are joined
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(query.limit)
        with self._conn() as conn:
            rows = conn.execute(sql.encode(), params).fetchall()
        return [_record(r) for r in rows]

    @contextmanager
    def digest_scope(self, sha256: str) -> Iterator[DigestScope]:
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(sha256),))
            yield _PgDigestScope(conn)

    @contextmanager
    def try_digest_scope(self, sha256: str) -> Iterator[DigestScope | None]:
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s) AS locked", (_lock_key(sha256),)
            ).fetchone()
            yield _PgDigestScope(conn) if row is not None and row["locked"] else None

    def referenced(self, digests: Sequence[str]) -> set[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT sha256 FROM media WHERE sha256 = ANY(%s)"
                " UNION SELECT variant_sha256 FROM image_variants WHERE variant_sha256 = ANY(%s)",
                (list(digests), list(digests)),
            ).fetchall()
        return {str(r["sha256"]) for r in rows}

    def digests_after(self, after: str, limit: int) -> list[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT sha256 FROM (SELECT sha256 FROM media WHERE sha256 > %s"
                " UNION SELECT variant_sha256 FROM image_variants WHERE variant_sha256 > %s) AS d"
                " ORDER BY sha256 LIMIT %s",
                (after, after, limit),
            ).fetchall()
        return [str(r["sha256"]) for r in rows]

    def claim_task(self, task: str, every_seconds: float) -> bool:
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO maintenance_rounds (task, last_run) VALUES (%s, clock_timestamp())"
                " ON CONFLICT (task) DO UPDATE SET last_run = clock_timestamp()"
                " WHERE maintenance_rounds.last_run < clock_timestamp() - make_interval(secs => %s)"
                " RETURNING task",
                (task, every_seconds),
            ).fetchone()
        return row is not None

    def rate_take(
        self, key: str, cost_seconds: float, window_seconds: float, force: bool = False
    ) -> tuple[bool, float]:
        # statement_timestamp() is one instant for the whole statement; every reference to the
        # old row (r.tat) sees it before the update.
        fits = "%(force)s OR GREATEST(r.tat, statement_timestamp()) + make_interval(secs => %(cost)s)"
        fits += " <= statement_timestamp() + make_interval(secs => %(window)s)"
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO rate_limits AS r (key, tat, allowed) VALUES (%(key)s,"  # noqa: S608
                " CASE WHEN %(force)s OR %(cost)s <= %(window)s"
                " THEN statement_timestamp() + make_interval(secs => %(cost)s)"
                " ELSE statement_timestamp() END, %(force)s OR %(cost)s <= %(window)s)"
                f" ON CONFLICT (key) DO UPDATE SET allowed = {fits},"
                f" tat = CASE WHEN {fits}"
                " THEN GREATEST(r.tat, statement_timestamp()) + make_interval(secs => %(cost)s)"
                " ELSE r.tat END"
                " RETURNING allowed,"
                " extract(epoch FROM GREATEST(tat, statement_timestamp()) - statement_timestamp()) AS ahead",
                {"key": key, "cost": cost_seconds, "window": window_seconds, "force": force},
            ).fetchone()
        assert row is not None
        return bool(row["allowed"]), float(row["ahead"])

    def purge_rate_limits(self) -> int:
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM rate_limits WHERE tat < statement_timestamp()")
        return cur.rowcount

    def create_pending(self, new: NewPending) -> MediaRecord:
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO media"  # noqa: S608 - only the fixed column list is interpolated
                " (id, owner, filename, content_type, size, status, expires_at, declared_sha256)"
                f" VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s) RETURNING {_COLUMNS}",
                (
                    uuid.uuid4(),
                    new.owner,
                    new.filename,
                    new.content_type,
                    new.size,
                    new.expires_at,
                    new.declared_sha256,
                ),
            ).fetchone()
        assert row is not None
        return _record(row)

    def claim(self, media_id: uuid.UUID, stale_after_seconds: int) -> MediaRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE media SET claimed_at = clock_timestamp()"  # noqa: S608
                " WHERE id = %s AND status = 'pending' AND (claimed_at IS NULL"
                " OR claimed_at < clock_timestamp() - make_interval(secs => %s))"
                f" RETURNING {_COLUMNS}",
                (media_id, stale_after_seconds),
            ).fetchone()
        return _record(row) if row else None

    def release(self, media_id: uuid.UUID) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE media SET claimed_at = NULL WHERE id = %s AND status = 'pending'", (media_id,)
            )

    def fail(self, media_id: uuid.UUID, reason: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE media SET status = 'failed', failure_reason = %s, claimed_at = NULL,"
                " updated_at = clock_timestamp() WHERE id = %s AND status = 'pending'",
                (reason[:500], media_id),
            )

    def remove_expired_pending(self, grace_seconds: int, limit: int = 100) -> list[MediaRecord]:
        with self._conn() as conn:
            rows = conn.execute(
                f"DELETE FROM media WHERE id IN (SELECT id FROM media WHERE status = 'pending'"  # noqa: S608
                " AND expires_at < clock_timestamp() - make_interval(secs => %s)"
                f" LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
                (grace_seconds, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def claim_job(self, lease_seconds: float, sha256: str | None = None) -> ImageJob | None:
        only = "AND sha256 = %(sha)s" if sha256 is not None else ""
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE image_jobs SET attempts = attempts + 1, updated_at = clock_timestamp(),"  # noqa: S608
                " lease_until = clock_timestamp() + make_interval(secs => %(lease)s)"
                " WHERE (sha256, recipe) = (SELECT sha256, recipe FROM image_jobs"
                " WHERE state = 'pending' AND next_attempt_at <= clock_timestamp()"
                f" AND (lease_until IS NULL OR lease_until < clock_timestamp()) {only}"
                " ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " RETURNING sha256, recipe, content_type, attempts",
                {"lease": lease_seconds, "sha": sha256},
            ).fetchone()
        return ImageJob(**row) if row else None

    def finish_job(self, job: ImageJob, outcome: Outcome, max_attempts: int) -> str | None:
        state, reason, delay = settled(job, outcome, max_attempts)
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE image_jobs SET state = %(state)s, reason = %(reason)s, lease_until = NULL,"
                " next_attempt_at = clock_timestamp() + make_interval(secs => %(delay)s),"
                " width = COALESCE(%(width)s, width), height = COALESCE(%(height)s, height),"
                " blurhash = COALESCE(%(blurhash)s, blurhash),"
                " dominant_color = COALESCE(%(color)s, dominant_color), updated_at = clock_timestamp()"
                " WHERE sha256 = %(sha)s AND recipe = %(recipe)s AND state = 'pending'"
                " AND attempts = %(attempts)s RETURNING state",
                {
                    "state": state,
                    "reason": reason,
                    "delay": delay,
                    "width": outcome.width,
                    "height": outcome.height,
                    "blurhash": outcome.blurhash,
                    "color": outcome.dominant_color,
                    "sha": job.sha256,
                    "recipe": job.recipe,
                    "attempts": job.attempts,
                },
            ).fetchone()
        return str(row["state"]) if row else None

    def processing_of(self, sha256: str, recipe: int) -> Processing | None:
        with self._conn() as conn:
            job = conn.execute(
                "SELECT state, reason, width, height, blurhash, dominant_color FROM image_jobs"
                " WHERE sha256 = %s AND recipe = %s",
                (sha256, recipe),
            ).fetchone()
            if job is None:
                return None
            rows = conn.execute(
                "SELECT format, width, height, size, variant_sha256 AS sha256 FROM image_variants"
                " WHERE sha256 = %s AND recipe = %s ORDER BY format, width",
                (sha256, recipe),
            ).fetchall()
        variants = tuple(VariantRow(**r) for r in rows) if job["state"] == "done" else ()
        return Processing(**job, variants=variants)

    def unsent_events(self, limit: int) -> list[OutboxEvent]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, type, subject, data, created_at FROM outbox WHERE sent_at IS NULL"
                " ORDER BY id LIMIT %s",
                (limit,),
            ).fetchall()
        return [OutboxEvent(**r) for r in rows]

    def mark_sent(self, ids: Sequence[int]) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE outbox SET sent_at = clock_timestamp() WHERE id = ANY(%s)", (list(ids),))

    def ping(self) -> None:
        """One round trip, the checkout included, within `timeout_seconds` in all (readiness)."""
        started = time.monotonic()
        timeout = self._db.timeout_seconds
        with self._conn() as conn, conn.deadline(max(0.05, timeout - (time.monotonic() - started))):
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._db.close()
