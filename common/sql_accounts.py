"""The SQL of people's data (migration 0006): usage counters (kept by a trigger), quota holds,
erasure jobs and their receipts. Mixed into `repository.py`'s classes, which hold the connections."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from common.database import Connect, DeadlineConnection, translate_errors
from common.quota import Limits, Usage, grant
from common.records import MEDIA_COLUMNS, Erasure, MediaRecord, Reservation, VariantRow, media_record

_ERASURE = (
    "id, subject, requested_by, state, records_removed, blobs_removed, bytes_freed, requested_at, finished_at"
)


class AccountScope:
    """In a digest's transaction (`repository.digest_scope`)."""

    _conn: DeadlineConnection

    def settle_hold(self, hold: uuid.UUID) -> None:
        with translate_errors(), self._conn.transaction():
            self._conn.execute("DELETE FROM quota_holds WHERE id = %s", (hold,))

    def erase(self, erasure: uuid.UUID, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        # One statement (an erasure deletes thousands): the record, its count on the receipt, and
        # its blob noted unless another record has it (the CTEs see the table before the DELETE).
        with translate_errors():
            row = self._conn.execute(
                "WITH d AS (DELETE FROM media WHERE id = %(id)s"  # noqa: S608
                f" AND sha256 IS NOT DISTINCT FROM %(sha)s RETURNING {MEDIA_COLUMNS}),"
                " counted AS (UPDATE erasures SET records_removed = records_removed + 1"
                " WHERE id = %(erasure)s AND EXISTS (SELECT 1 FROM d)),"
                " noted AS (INSERT INTO erasure_blobs (erasure, sha256, size)"
                " SELECT %(erasure)s, d.sha256, d.size FROM d WHERE d.sha256 IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM media m WHERE m.sha256 = d.sha256 AND m.id <> d.id) ON CONFLICT DO NOTHING)"
                f" SELECT {MEDIA_COLUMNS} FROM d",
                {"id": media_id, "sha": sha256, "erasure": erasure},
            ).fetchone()
        return media_record(row) if row else None

    def erased_blob(
        self, erasure: uuid.UUID, sha256: str, size: int, removed: bool, variants: Sequence[VariantRow]
    ) -> None:
        # One statement; a step retried after a crash finds its row gone and counts nothing twice.
        with translate_errors():
            self._conn.execute(
                "WITH gone AS (DELETE FROM erasure_blobs WHERE erasure = %(erasure)s AND sha256 = %(sha)s"
                " RETURNING 1),"
                " counted AS (UPDATE erasures SET blobs_removed = blobs_removed + %(blobs)s,"
                " bytes_freed = bytes_freed + %(bytes)s"
                " WHERE id = %(erasure)s AND EXISTS (SELECT 1 FROM gone))"
                " INSERT INTO erasure_blobs (erasure, sha256, size)"
                " SELECT %(erasure)s, v.sha256, v.size FROM unnest(%(digests)s::text[], %(sizes)s::bigint[])"
                " AS v (sha256, size) WHERE EXISTS (SELECT 1 FROM gone) ON CONFLICT DO NOTHING",
                {
                    "erasure": erasure,
                    "sha": sha256,
                    "blobs": 1 if removed else 0,
                    "bytes": size if removed else 0,
                    "digests": [v.sha256 for v in variants],
                    "sizes": [v.size for v in variants],
                },
            )


class AccountQueries:
    _conn: Connect

    def usage(self, owner: str) -> Usage:
        with self._conn() as conn:
            row = conn.execute("SELECT bytes, files FROM usage WHERE owner = %s", (owner,)).fetchone()
        return Usage(int(row["bytes"]), int(row["files"])) if row else Usage(0, 0)

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
        with self._conn() as conn, conn.transaction():
            # The owner's usage row is the lock: commits (the trigger) and other reservations wait.
            conn.execute("INSERT INTO usage (owner) VALUES (%s) ON CONFLICT DO NOTHING", (owner,))
            row = conn.execute(
                "SELECT bytes, files FROM usage WHERE owner = %s FOR UPDATE", (owner,)
            ).fetchone()
            assert row is not None
            stored = Usage(int(row["bytes"]), int(row["files"]))
            others = conn.execute(
                "SELECT coalesce(sum(bytes), 0) AS bytes, coalesce(sum(files), 0) AS files FROM quota_holds"
                " WHERE owner = %s AND id <> %s AND expires_at > clock_timestamp()",
                (owner, hold),
            ).fetchone()
            assert others is not None
            granted = grant(
                stored, Usage(int(others["bytes"]), int(others["files"])), limits, files, need, want
            )
            if granted is not None:
                conn.execute(
                    "INSERT INTO quota_holds (id, owner, bytes, files, expires_at) VALUES"
                    " (%s, %s, %s, %s, clock_timestamp() + make_interval(secs => %s))"
                    " ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes,"
                    " expires_at = EXCLUDED.expires_at",
                    (hold, owner, granted, files, ttl_seconds),
                )
        return Reservation(granted, stored)

    def release_hold(self, hold: uuid.UUID) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM quota_holds WHERE id = %s", (hold,))

    def purge_holds(self) -> int:
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM quota_holds WHERE expires_at < clock_timestamp()")
        return cur.rowcount

    def start_erasure(self, subject: str, requested_by: str) -> Erasure:
        with self._conn() as conn:
            row = conn.execute(
                f"INSERT INTO erasures (id, subject, requested_by) VALUES (%s, %s, %s)"  # noqa: S608
                f" ON CONFLICT (subject) WHERE state = 'running' DO NOTHING RETURNING {_ERASURE}",
                (uuid.uuid4(), subject, requested_by),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    f"SELECT {_ERASURE} FROM erasures WHERE subject = %s AND state = 'running'",  # noqa: S608
                    (subject,),
                ).fetchone()
        if row is None:  # finished between the two statements: start another
            return self.start_erasure(subject, requested_by)
        return Erasure(**row)

    def erasure(self, erasure: uuid.UUID) -> Erasure | None:
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_ERASURE} FROM erasures WHERE id = %s", (erasure,)).fetchone()  # noqa: S608
        return Erasure(**row) if row else None

    def claim_erasure(self, lease_seconds: float, erasure: uuid.UUID | None = None) -> Erasure | None:
        only = "AND id = %(id)s" if erasure is not None else ""
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE erasures SET lease_until = clock_timestamp() + make_interval(secs => %(lease)s)"  # noqa: S608
                " WHERE id = (SELECT id FROM erasures WHERE state = 'running'"
                f" AND (lease_until IS NULL OR lease_until < clock_timestamp()) {only}"
                " ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_ERASURE}",
                {"lease": lease_seconds, "id": erasure},
            ).fetchone()
        return Erasure(**row) if row else None

    def renew_erasure(self, erasure: uuid.UUID, lease_seconds: float) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE erasures SET lease_until = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s AND state = 'running'",
                (lease_seconds, erasure),
            )

    def release_erasure(self, erasure: uuid.UUID) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE erasures SET lease_until = NULL WHERE id = %s", (erasure,))

    def records_of(self, owner: str, limit: int) -> list[MediaRecord]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {MEDIA_COLUMNS} FROM media WHERE owner = %s LIMIT %s",  # noqa: S608
                (owner, limit),
            ).fetchall()
        return [media_record(r) for r in rows]

    def erased_blobs(self, erasure: uuid.UUID, limit: int) -> list[tuple[str, int]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT sha256, size FROM erasure_blobs WHERE erasure = %s ORDER BY sha256 LIMIT %s",
                (erasure, limit),
            ).fetchall()
        return [(str(r["sha256"]), int(r["size"])) for r in rows]

    def finish_erasure(self, erasure: uuid.UUID) -> Erasure | None:
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE erasures e SET state = 'done', finished_at = clock_timestamp(), lease_until = NULL"  # noqa: S608
                " WHERE id = %s AND state = 'running'"
                " AND NOT EXISTS (SELECT 1 FROM media WHERE owner = e.subject)"
                " AND NOT EXISTS (SELECT 1 FROM erasure_blobs WHERE erasure = e.id)"
                f" RETURNING {_ERASURE}",
                (erasure,),
            ).fetchone()
        return Erasure(**row) if row else None
