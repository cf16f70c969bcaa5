"""The SQL of the integrity scrub (migration 0007): corrupt records and the scrub's progress.
Mixed into `repository.py`'s `PgMediaRepository`, which holds the connections."""

from __future__ import annotations

from common.database import Connect
from common.records import CORRUPT_REASON, ScrubState


class ScrubQueries:
    _conn: Connect

    def mark_corrupt(self, sha256: str, reason: str = CORRUPT_REASON) -> int:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE media SET status = 'corrupt', failure_reason = %s, updated_at = clock_timestamp()"
                " WHERE sha256 = %s AND status = 'ready'",
                (reason[:500], sha256),
            )
        return cur.rowcount

    def remake_variants_of(self, variant_sha256: str) -> int:
        with self._conn() as conn:
            rows = conn.execute(
                "WITH dropped AS (DELETE FROM image_variants WHERE variant_sha256 = %s"
                " RETURNING sha256, recipe) UPDATE image_jobs AS j SET state = 'pending', attempts = 0,"
                " reason = NULL, lease_until = NULL, next_attempt_at = clock_timestamp(),"
                " updated_at = clock_timestamp()"
                " FROM (SELECT DISTINCT sha256, recipe FROM dropped) AS d"
                " WHERE j.sha256 = d.sha256 AND j.recipe = d.recipe RETURNING j.sha256",
                (variant_sha256,),
            ).fetchall()
        return len(rows)

    def scrub_state(self) -> ScrubState:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT cursor_sha256 AS cursor, pass_started_at, pass_finished_at, pass_bytes,"
                " pass_mismatches FROM scrub_state WHERE id"
            ).fetchone()
        return ScrubState(**row) if row else ScrubState()

    def save_scrub_state(self, state: ScrubState) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO scrub_state AS s (id, cursor_sha256, pass_started_at, pass_finished_at,"
                " pass_bytes, pass_mismatches) VALUES (true, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                " SET cursor_sha256 = EXCLUDED.cursor_sha256, pass_started_at = EXCLUDED.pass_started_at,"
                " pass_finished_at = EXCLUDED.pass_finished_at, pass_bytes = EXCLUDED.pass_bytes,"
                " pass_mismatches = EXCLUDED.pass_mismatches, updated_at = clock_timestamp()",
                (
                    state.cursor,
                    state.pass_started_at,
                    state.pass_finished_at,
                    state.pass_bytes,
                    state.pass_mismatches,
                ),
            )

    def referenced_totals(self) -> tuple[int, int]:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT count(*) AS n, COALESCE(sum(size), 0) AS bytes FROM (SELECT sha256, max(size) AS size"
                " FROM (SELECT sha256, size FROM media WHERE sha256 IS NOT NULL"
                " UNION ALL SELECT variant_sha256, size FROM image_variants) AS u GROUP BY sha256) AS d"
            ).fetchone()
        assert row is not None
        return int(row["n"]), int(row["bytes"])

    def statuses_of(self, sha256: str) -> dict[str, int]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT status, count(*) AS n FROM media WHERE sha256 = %s GROUP BY status", (sha256,)
            ).fetchall()
        return {str(r["status"]): int(r["n"]) for r in rows}
