"""Records and their blobs written straight into PostgreSQL and the CAS directory, bypassing the
API: how drills and benchmarks get thousands of records in seconds (COPY, and files at their
addresses, laid out as `localstore.LocalBlobStore` does)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from common.imaging import RECIPE


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


def write_blob(cas_root: Path, data: bytes) -> Blob:
    sha256 = hashlib.sha256(data).hexdigest()
    path = cas_root / "sha256" / sha256[:2] / sha256[2:4] / sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Blob(sha256, len(data))


def random_blobs(cas_root: Path, count: int, size: int = 2048) -> list[Blob]:
    """`count` distinct blobs of `size` random bytes, stored under `cas_root`."""
    return [write_blob(cas_root, os.urandom(size)) for _ in range(count)]


def insert_records(database_url: str, owner: str, blobs: Sequence[Blob]) -> int:
    """One `ready` record of `owner` per entry of `blobs` (repeat a blob for deduplicated records)."""
    with (
        psycopg.connect(database_url, client_encoding="utf8") as conn,
        conn.cursor() as cur,
        cur.copy("COPY media (id, owner, filename, content_type, size, sha256, status) FROM STDIN") as copy,
    ):
        for i, blob in enumerate(blobs):
            copy.write_row(
                (
                    uuid.uuid4(),
                    owner,
                    f"seed-{i}.bin",
                    "application/octet-stream",
                    blob.size,
                    blob.sha256,
                    "ready",
                )
            )
    return len(blobs)


def seed_at_scale(url: str, records: int, users: int) -> None:
    """`records` records over `users` owners (`user-0`...), straight in SQL with the triggers off, and
    what grows with them: image jobs and variants for a share of the JPEGs (all of `user-42`'s and
    `user-43`'s), an attachment for a seventh of the records, usage counters, change events; then
    ANALYZE. About 30 s for a million records. What the EXPLAIN test and `make bench SCALE=1` use."""
    with psycopg.connect(url, autocommit=True, client_encoding="utf8") as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers: a bulk load
        conn.execute(
            "INSERT INTO media (id, owner, filename, content_type, size, sha256, status,"
            " created_at, updated_at)"
            " SELECT gen_random_uuid(), 'user-' || (i %% %s), 'f' || i || '.jpg',"
            " CASE WHEN i %% 3 = 0 THEN 'application/pdf' ELSE 'image/jpeg' END, 1000 + i %% 5000,"
            " encode(sha256(i::text::bytea), 'hex'), CASE WHEN i %% 97 = 0 THEN 'failed' ELSE 'ready' END,"
            " now() - make_interval(secs => i), now() FROM generate_series(1, %s) AS i",
            (users, records),
        )
        conn.execute(
            "INSERT INTO image_jobs (sha256, recipe, content_type, state, width, height)"
            " SELECT sha256, %s, content_type, 'done', 1600, 1200 FROM media"
            " WHERE content_type = 'image/jpeg' AND owner IN ('user-42', 'user-43') OR (size %% 10 = 0)"
            " ON CONFLICT DO NOTHING",
            (RECIPE,),
        )
        conn.execute(
            "INSERT INTO image_variants (sha256, recipe, format, width, height, size, variant_sha256)"
            " SELECT j.sha256, j.recipe, f, w, w * 3 / 4, 500,"
            " md5(j.sha256 || f || w) || md5(f || w || j.sha256)"
            " FROM image_jobs j, unnest(ARRAY['avif', 'webp']) AS f, unnest(ARRAY[320, 640, 1280]) AS w"
        )
        conn.execute(
            "INSERT INTO attachments (media_id, kind, ref, position)"
            " SELECT id, 'recipe', (abs(hashtext(id::text)) % 50000)::text, 0 FROM media"
            " WHERE abs(hashtext(id::text)) % 7 = 0"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO usage (owner, bytes, files)"
            " SELECT owner, sum(size), count(*) FROM media GROUP BY owner"
            " ON CONFLICT (owner) DO NOTHING"  # who uploaded before the seed keeps their counters
        )
        conn.execute(
            "INSERT INTO outbox (type, subject, data) SELECT 'com.recipes.media.created', id::text, '{}'"
            " FROM media WHERE size % 4 = 0"
        )
        conn.execute("ANALYZE")
