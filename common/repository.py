"""Media records in PostgreSQL (psycopg 3 with a per-process pool), and an in-memory twin for tests.

`MediaRepository` and `DigestScope` are the contract; `PgMediaRepository` keeps it, with the SQL of
records, digests, maintenance rounds and rate limits here and that of image processing, people's
data and the scrub in `sql_processing.py`, `sql_accounts.py` and `sql_scrub.py` (mixed in). Only
these modules speak SQL; what rows become is `records.py`. Every query is parameterised. Connections come from
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
from typing import Any, Protocol

from common.database import Database, DeadlineConnection, digest_lock_key, translate_errors
from common.quota import Limits, Usage
from common.records import (
    CORRUPT_REASON,
    MEDIA_COLUMNS,
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
    media_record,
)
from common.sql_accounts import AccountQueries, AccountScope
from common.sql_processing import ProcessingQueries, ProcessingScope
from common.sql_recipes import RecipeQueries
from common.sql_scrub import ScrubQueries


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

    def enqueue_job(self, sha256: str, recipe: int, content_type: str) -> bool:
        """The job alone (the backfill's: no outbox row); True when it was not there yet."""

    def release_superseded(self, sha256: str, recipe: int) -> list[str]:
        """This original's jobs and variant rows under recipes older than `recipe` go; returns the
        variants' digests (their blobs may now be unreferenced)."""

    def release_processing(self, sha256: str) -> list[str]:
        """When no record has this original any more: its jobs and variant rows go; returns the
        variants' digests (their blobs may now be unreferenced)."""

    def add_variant(self, sha256: str, recipe: int, variant: VariantRow) -> bool:
        """Record a variant of the job (sha256, recipe); False when that job is gone (its original
        was deleted meanwhile). Holds the job row (FOR SHARE) until the scope ends."""

    def settle_hold(self, hold: uuid.UUID) -> None:
        """The upload's quota hold ends in the transaction that writes its record (the counters
        take over)."""

    def erase(self, erasure: uuid.UUID, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        """Delete the record for the erasure (as `delete`), count it on the receipt, and note its
        blob to free when no other record has it; all in this transaction."""

    def release_variants(self, sha256: str) -> list[VariantRow]:
        """`release_processing`, with the variants' sizes."""

    def erased_blob(
        self, erasure: uuid.UUID, sha256: str, size: int, removed: bool, variants: Sequence[VariantRow]
    ) -> None:
        """The erasure's blob `sha256` was checked: counted on the receipt if `removed`; the
        variants it released are noted to check in turn."""


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

    def corrupt_only(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` only `corrupt` records reference (no other record, no variant): the
        blobs the integrity scrub quarantined, which the store no longer has at their address."""

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

    def backfill_position(self, recipe: int) -> uuid.UUID | None:
        """Where the processing backfill for `recipe` goes on from (the nil UUID: the start), or
        None once it is done."""

    def records_after(self, after: uuid.UUID, limit: int) -> list[MediaRecord]:
        """Up to `limit` records with an id above `after`, in id order (the primary key)."""

    def advance_backfill(self, recipe: int, after: uuid.UUID, finished: bool) -> None: ...

    def unsent_events(self, limit: int) -> list[OutboxEvent]: ...

    def mark_sent(self, ids: Sequence[int]) -> None: ...

    def usage(self, owner: str) -> Usage:
        """What the owner keeps stored (the counters, not a scan)."""

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
        """Create or grow the hold under the owner's usage row lock (`quota.grant` decides)."""

    def release_hold(self, hold: uuid.UUID) -> None: ...

    def purge_holds(self) -> int:
        """Forget the holds that lapsed (their process died)."""

    def start_erasure(self, subject: str, requested_by: str) -> Erasure:
        """A new erasure of the subject, or the one already running."""

    def erasure(self, erasure: uuid.UUID) -> Erasure | None: ...

    def claim_erasure(self, lease_seconds: float, erasure: uuid.UUID | None = None) -> Erasure | None:
        """A running erasure (that one, or any) nobody holds a lease on, leased for `lease_seconds`."""

    def renew_erasure(self, erasure: uuid.UUID, lease_seconds: float) -> None:
        """The holder is still at it: its lease runs `lease_seconds` from now."""

    def release_erasure(self, erasure: uuid.UUID) -> None:
        """Give up the lease (the request's share is over): the maintenance takes over at once."""

    def records_of(self, owner: str, limit: int) -> list[MediaRecord]:
        """Any `limit` of the owner's records, whatever their status."""

    def erased_blobs(self, erasure: uuid.UUID, limit: int) -> list[tuple[str, int]]:
        """The erasure's blobs still to check: (sha256, size)."""

    def finish_erasure(self, erasure: uuid.UUID) -> Erasure | None:
        """Done, if nothing of the subject and nothing to check is left; else None."""

    def update_metadata(
        self, media_id: uuid.UUID, expected_version: int | None, fields: dict[str, Any]
    ) -> MediaRecord | None:
        """Set the descriptive `fields` if the version is still `expected_version` (None: any)."""

    def attach(
        self, attachment: Attachment, position_given: bool, max_per_media: int, max_per_ref: int
    ) -> tuple[Attachment, bool]:
        """Attach or update; (what is stored, created?); AttachmentLimit past a limit."""

    def detach(self, media_id: uuid.UUID, kind: str, ref: str, ttl_seconds: float) -> bool: ...

    def detach_all(self, kind: str, ref: str, owner: str | None, ttl_seconds: float) -> int: ...

    def attachments_of(self, media_id: uuid.UUID) -> list[Attachment]: ...

    def detail(self, media_id: uuid.UUID, recipe: int) -> Detail | None:
        """The record, its original's processing under `recipe` and its attachments: one round trip."""

    def attached(
        self, kind: str, ref: str, owner: str | None, limit: int, after: tuple[int, uuid.UUID] | None
    ) -> list[tuple[MediaRecord, Attachment]]:
        """What is attached to (kind, ref), in position order (keyset on (position, id))."""

    def expired_unattached(self, limit: int) -> list[MediaRecord]: ...

    def changes_after(self, after: tuple[int, int] | None, limit: int) -> list[Change]:
        """The change feed after the cursor (xid, id), strictly ordered, without gaps."""

    def changes_horizon(self) -> tuple[int, int] | None: ...

    def purge_changes(self, older_than_seconds: float, limit: int) -> int: ...

    def processing_of_many(self, digests: Sequence[str], recipe: int) -> dict[str, Processing]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def mark_corrupt(self, sha256: str, reason: str = CORRUPT_REASON) -> int:
        """The ready records of `sha256` become `corrupt` (with `reason`); how many did."""

    def remake_variants_of(self, variant_sha256: str) -> int:
        """A variant's bytes rotted: its rows go and their jobs are pending again (a variant can
        be made anew, unlike an original); how many jobs were."""

    def scrub_state(self) -> ScrubState:
        """Where the integrity scrub stands (a fresh state before its first round)."""

    def save_scrub_state(self, state: ScrubState) -> None: ...

    def referenced_totals(self) -> tuple[int, int]:
        """(distinct referenced digests, their bytes): what a full scrub pass reads."""

    def statuses_of(self, sha256: str) -> dict[str, int]:
        """How many records of `sha256` there are, by status."""


# expires_unattached, unattached_expires_at: from (flag, seconds) of `_expiry`.
_EXPIRY = "%s, clock_timestamp() + make_interval(secs => %s)"


def _expiry(after_seconds: float | None) -> tuple[bool, float | None]:
    return after_seconds is not None, after_seconds


class _PgDigestScope(ProcessingScope, AccountScope):
    def __init__(self, conn: DeadlineConnection) -> None:
        self._conn = conn

    def insert(self, new: NewMedia) -> MediaRecord:
        with translate_errors(), self._conn.transaction():
            row = self._conn.execute(
                "INSERT INTO media (id, owner, filename, content_type, size, sha256, status,"  # noqa: S608
                " expires_unattached, unattached_expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                f" {_EXPIRY}) RETURNING {MEDIA_COLUMNS}",
                (
                    uuid.uuid4(),
                    new.owner,
                    new.filename,
                    new.content_type,
                    new.size,
                    new.sha256,
                    new.status,
                    *_expiry(new.expire_unattached_after),
                ),
            ).fetchone()
        assert row is not None
        return media_record(row)

    def complete(self, media_id: uuid.UUID, sha256: str, size: int) -> MediaRecord | None:
        with translate_errors(), self._conn.transaction():
            row = self._conn.execute(
                "UPDATE media SET status = 'ready', sha256 = %s, size = %s, claimed_at = NULL,"  # noqa: S608
                " updated_at = clock_timestamp() WHERE id = %s AND status = 'pending'"
                f" RETURNING {MEDIA_COLUMNS}",
                (sha256, size, media_id),
            ).fetchone()
        return media_record(row) if row else None

    def delete(self, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        with translate_errors(), self._conn.transaction():
            row = self._conn.execute(
                "DELETE FROM media WHERE id = %s AND sha256 IS NOT DISTINCT FROM %s"  # noqa: S608
                f" RETURNING {MEDIA_COLUMNS}",
                (media_id, sha256),
            ).fetchone()
        return media_record(row) if row else None

    def references(self, sha256: str) -> int:
        with translate_errors():
            row = self._conn.execute(
                "SELECT (SELECT count(*) FROM media WHERE sha256 = %s)"
                " + (SELECT count(*) FROM image_variants WHERE variant_sha256 = %s) AS n",
                (sha256, sha256),
            ).fetchone()
        assert row is not None
        return int(row["n"])


class PgMediaRepository(ProcessingQueries, AccountQueries, ScrubQueries, RecipeQueries):
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
                f"SELECT {MEDIA_COLUMNS} FROM media WHERE id = %s",  # noqa: S608
                (media_id,),
            ).fetchone()
        return media_record(row) if row else None

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
        sql = f"SELECT {MEDIA_COLUMNS} FROM media"  # noqa: S608 - only fixed fragments are joined
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        params.append(query.limit)
        with self._conn() as conn:
            rows = conn.execute(sql.encode(), params).fetchall()
        return [media_record(r) for r in rows]

    @contextmanager
    def digest_scope(self, sha256: str) -> Iterator[DigestScope]:
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (digest_lock_key(sha256),))
            yield _PgDigestScope(conn)

    @contextmanager
    def try_digest_scope(self, sha256: str) -> Iterator[DigestScope | None]:
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s) AS locked", (digest_lock_key(sha256),)
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

    def corrupt_only(self, digests: Sequence[str]) -> set[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT m.sha256 FROM media AS m WHERE m.sha256 = ANY(%s) GROUP BY m.sha256"
                " HAVING bool_and(m.status = 'corrupt')"
                " AND NOT EXISTS (SELECT 1 FROM image_variants AS v WHERE v.variant_sha256 = m.sha256)",
                (list(digests),),
            ).fetchall()
        return {str(r["sha256"]) for r in rows}

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
                " (id, owner, filename, content_type, size, status, expires_at, declared_sha256,"
                " expires_unattached, unattached_expires_at)"
                f" VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, {_EXPIRY}) RETURNING {MEDIA_COLUMNS}",
                (
                    new.id or uuid.uuid4(),
                    new.owner,
                    new.filename,
                    new.content_type,
                    new.size,
                    new.expires_at,
                    new.declared_sha256,
                    *_expiry(new.expire_unattached_after),
                ),
            ).fetchone()
        assert row is not None
        return media_record(row)

    def claim(self, media_id: uuid.UUID, stale_after_seconds: int) -> MediaRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE media SET claimed_at = clock_timestamp()"  # noqa: S608
                " WHERE id = %s AND status = 'pending' AND (claimed_at IS NULL"
                " OR claimed_at < clock_timestamp() - make_interval(secs => %s))"
                f" RETURNING {MEDIA_COLUMNS}",
                (media_id, stale_after_seconds),
            ).fetchone()
        return media_record(row) if row else None

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
                f" LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {MEDIA_COLUMNS}",
                (grace_seconds, limit),
            ).fetchall()
        return [media_record(r) for r in rows]

    def ping(self) -> None:
        """One round trip, the checkout included, within `timeout_seconds` in all (readiness)."""
        started = time.monotonic()
        timeout = self._db.timeout_seconds
        with self._conn() as conn, conn.deadline(max(0.05, timeout - (time.monotonic() - started))):
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._db.close()
