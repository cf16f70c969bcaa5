"""The SQL of image processing (migration 0005): the jobs the process function claims, the variants
it records, and the outbox. Mixed into `repository.py`'s classes, which hold the connections."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from common.database import Connect, DeadlineConnection, digest_lock_key, translate_errors
from common.records import (
    MEDIA_COLUMNS,
    UPLOADED_EVENT,
    ImageJob,
    MediaRecord,
    OutboxEvent,
    Outcome,
    Processing,
    VariantRow,
    media_record,
    settled,
)

_NO_ID = uuid.UUID(int=0)  # before every record, in the backfill's primary-key order


class ProcessingScope:
    """In a digest's transaction (`repository.digest_scope`)."""

    _conn: DeadlineConnection

    def enqueue_processing(self, sha256: str, recipe: int, content_type: str, media_id: uuid.UUID) -> None:
        with translate_errors(), self._conn.transaction():
            self.enqueue_job(sha256, recipe, content_type)
            self._conn.execute(
                "INSERT INTO outbox (type, subject, data) VALUES (%s, %s, %s)",
                (
                    UPLOADED_EVENT,
                    str(media_id),
                    Jsonb({"id": str(media_id), "sha256": sha256, "content_type": content_type}),
                ),
            )

    def enqueue_job(self, sha256: str, recipe: int, content_type: str) -> bool:
        with translate_errors():
            cur = self._conn.execute(
                "INSERT INTO image_jobs (sha256, recipe, content_type) VALUES (%s, %s, %s)"
                " ON CONFLICT (sha256, recipe) DO NOTHING",
                (sha256, recipe, content_type),
            )
        return cur.rowcount == 1

    def release_superseded(self, sha256: str, recipe: int) -> list[str]:
        with translate_errors():
            rows = self._conn.execute(
                "WITH jobs AS (DELETE FROM image_jobs WHERE sha256 = %(sha)s AND recipe < %(recipe)s)"
                " DELETE FROM image_variants WHERE sha256 = %(sha)s AND recipe < %(recipe)s"
                " RETURNING variant_sha256",
                {"sha": sha256, "recipe": recipe},
            ).fetchall()
        return sorted({str(r["variant_sha256"]) for r in rows})

    def release_processing(self, sha256: str) -> list[str]:
        return sorted({v.sha256 for v in self.release_variants(sha256)})

    def release_variants(self, sha256: str) -> list[VariantRow]:
        # One statement: the job and its variants go only when no record has the original.
        with translate_errors():
            rows = self._conn.execute(
                "WITH held AS (SELECT 1 FROM media WHERE sha256 = %(sha)s LIMIT 1),"
                " jobs AS (DELETE FROM image_jobs WHERE sha256 = %(sha)s AND NOT EXISTS (SELECT 1 FROM held))"
                " DELETE FROM image_variants WHERE sha256 = %(sha)s AND NOT EXISTS (SELECT 1 FROM held)"
                " RETURNING format, width, height, size, variant_sha256 AS sha256",
                {"sha": sha256},
            ).fetchall()
        return [VariantRow(**r) for r in rows]

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


class ProcessingQueries:
    _conn: Connect

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
        """Under the original's digest lock, taken before anything is written: the `processed`
        events (migration 0010) are then ordered with the uploads and deletes of that digest's
        records, as the change feed orders them (by transaction id, assigned at the first write)."""
        state, reason, delay = settled(job, outcome, max_attempts)
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (digest_lock_key(job.sha256),))
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

    def backfill_position(self, recipe: int) -> uuid.UUID | None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO processing_backfill (recipe) VALUES (%s) ON CONFLICT (recipe) DO NOTHING",
                (recipe,),
            )
            row = conn.execute(
                "SELECT after_id, finished_at FROM processing_backfill WHERE recipe = %s", (recipe,)
            ).fetchone()
        if row is None or row["finished_at"] is not None:
            return None
        return row["after_id"] or _NO_ID

    def records_after(self, after: uuid.UUID, limit: int) -> list[MediaRecord]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {MEDIA_COLUMNS} FROM media WHERE id > %s ORDER BY id LIMIT %s",  # noqa: S608
                (after, limit),
            ).fetchall()
        return [media_record(r) for r in rows]

    def advance_backfill(self, recipe: int, after: uuid.UUID, finished: bool) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE processing_backfill SET after_id = %s, updated_at = clock_timestamp(),"
                " finished_at = CASE WHEN %s THEN clock_timestamp() END WHERE recipe = %s",
                (after, finished, recipe),
            )

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
