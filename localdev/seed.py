"""Records and their blobs written straight into PostgreSQL and the CAS directory, bypassing the
API: how drills and benchmarks get thousands of records in seconds (COPY, and files at their
addresses, laid out as `cas.LocalBlobStore` does)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg


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
