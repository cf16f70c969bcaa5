"""Media records in PostgreSQL (psycopg 3 with a per-process pool), and an in-memory twin for tests.

Only this module speaks SQL. Every query is parameterised. Driver and pool failures leave it as
`DatabaseUnavailable` (503 at the edge), values the database refuses as `UnstorableInput` (400),
never as psycopg exceptions.

Every wait on the server has a deadline. A connection is waited for at most `timeout_seconds`
(the pool's checkout); each round trip on it (a statement, a COMMIT, the pool's own checks) at
most `timeout_seconds` too: `statement_timeout` lets a live server cancel a slow statement
itself, and `_DeadlineConnection` gives up on a server that stopped answering altogether (frozen,
failing over, partitioned without a reset, where no cancel and no error ever arrives), closing
that connection so the pool replaces it. TCP keepalives and `tcp_user_timeout` let the kernel
notice a dead peer on idle TCP connections too. Once PostgreSQL has failed to answer, a circuit
breaker refuses requests at once for `timeout_seconds` and then lets one try again, so threads do
not pile up waiting deadlines. So a request that needs the database answers 503 within about
twice the timeout, whatever the database does.

`digest_scope(sha256)` is the lock that keeps the CAS and the table consistent: it holds a
PostgreSQL session advisory lock keyed by the digest, on one connection, until the block ends.
Committing an upload and deleting the last record of a digest both happen inside it, so a delete
can never unlink a blob between an upload's rename and its INSERT (see `media.py`). Advisory
locks work across processes and hosts, which file locks on NFS do not.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from common.breaker import CircuitBreaker
from common.problems import DatabaseUnavailable, UnstorableInput

log = logging.getLogger("media.repository")

STATUSES = ("pending", "ready", "failed")


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


class DigestScope(Protocol):
    def insert(self, new: NewMedia) -> MediaRecord: ...

    def complete(self, media_id: uuid.UUID, sha256: str, size: int) -> MediaRecord | None:
        """pending -> ready; None when the record is no longer pending (cleaned up, or finished)."""

    def delete(self, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        """Delete the record if it still has digest `sha256` (None: no bytes yet); else None."""

    def references(self, sha256: str) -> int: ...


class MediaRepository(Protocol):
    def get(self, media_id: uuid.UUID) -> MediaRecord | None: ...

    def list_media(self, query: ListQuery) -> list[MediaRecord]: ...

    def digest_scope(self, sha256: str) -> AbstractContextManager[DigestScope]: ...

    def try_digest_scope(self, sha256: str) -> AbstractContextManager[DigestScope | None]:
        """The digest's lock if it is free right now, else None (nothing waits)."""

    def referenced(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` some record references."""

    def claim_task(self, task: str, every_seconds: float) -> bool:
        """True for one caller per `every_seconds` across all processes (maintenance rounds)."""

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

    def ping(self) -> None: ...

    def close(self) -> None: ...


def conninfo_problem(conninfo: str) -> str | None:
    """Why `conninfo` is not a PostgreSQL connection string (URL or key=value), or None."""
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def _lock_key(sha256: str) -> int:
    """A signed 64-bit advisory-lock key from the digest's first 16 hex digits."""
    return int(sha256[:16], 16) - (1 << 63)


_COLUMNS = (
    "id, owner, filename, content_type, size, sha256, status,"
    " created_at, updated_at, expires_at, failure_reason"
)


def _record(row: dict[str, Any]) -> MediaRecord:
    return MediaRecord(**row)


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    try:
        yield
    except (psycopg.DataError, UnicodeEncodeError) as exc:  # a NUL, a lone surrogate, a bad value
        raise UnstorableInput(str(exc).strip().splitlines()[0]) from exc
    except (
        psycopg.OperationalError,  # connection lost or refused, statement_timeout, our own deadline
        psycopg_pool.PoolTimeout,  # no connection free within the checkout timeout
        psycopg_pool.TooManyRequests,  # too many requests already waiting for one
        psycopg_pool.PoolClosed,
    ) as exc:
        raise DatabaseUnavailable(str(exc).strip() or exc.__class__.__name__) from exc


class NoAnswer(psycopg.OperationalError):
    """PostgreSQL did not answer within the deadline (a `_DeadlineConnection` gave up)."""


def _silent(exc: BaseException | None) -> bool:
    """Whether a failure cost its caller a whole deadline: PostgreSQL did not answer a round trip,
    or no connection could be had in time. (A refused or reset connection fails at once, and a
    server-side error such as statement_timeout is an answer.)"""
    return isinstance(exc, NoAnswer | psycopg_pool.PoolTimeout)


# How much longer the client waits than the server's statement_timeout: a live server cancels a
# slow statement itself (the connection survives); only a silent one reaches the client's deadline.
_CLIENT_MARGIN_SECONDS = 0.25


class _DeadlineConnection(psycopg.Connection[dict[str, Any]]):
    """A connection on which no wait for the server outlasts `deadline_seconds`.

    psycopg does every round trip through `Connection.wait` (statements, COMMIT, the pool's checks
    and rollbacks), and its wait functions take a timeout (psycopg >= 3.3). When it expires, the
    protocol is somewhere in the middle of an exchange and the connection cannot be reused: it is
    closed (the pool sees it closed and opens another) and `NoAnswer` is raised.
    """

    deadline_seconds: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is not None or self.deadline_seconds is None:
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, self.deadline_seconds)
        except psycopg.errors._WaitTimeout:  # psycopg's own (private) class for an expired wait
            self.pgconn.finish()
            log.warning("PostgreSQL did not answer within %.2f s; connection dropped", self.deadline_seconds)
            raise NoAnswer(f"PostgreSQL did not answer within {self.deadline_seconds:.2f} s") from None

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """A shorter deadline for the round trips inside the block (readiness has its own budget)."""
        saved = self.deadline_seconds
        self.deadline_seconds = seconds if saved is None else min(saved, seconds)
        try:
            yield
        finally:
            self.deadline_seconds = saved


class _PgDigestScope:
    def __init__(self, conn: _DeadlineConnection) -> None:
        self._conn = conn

    def insert(self, new: NewMedia) -> MediaRecord:
        with _unavailable_on_failure(), self._conn.transaction():
            row = self._conn.execute(
                f"INSERT INTO media (id, owner, filename, content_type, size, sha256, status)"  # noqa: S608
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (uuid.uuid4(), new.owner, new.filename, new.content_type, new.size, new.sha256, new.status),
            ).fetchone()
        assert row is not None
        return _record(row)

    def complete(self, media_id: uuid.UUID, sha256: str, size: int) -> MediaRecord | None:
        with _unavailable_on_failure(), self._conn.transaction():
            row = self._conn.execute(
                "UPDATE media SET status = 'ready', sha256 = %s, size = %s, claimed_at = NULL,"  # noqa: S608
                f" updated_at = clock_timestamp() WHERE id = %s AND status = 'pending' RETURNING {_COLUMNS}",
                (sha256, size, media_id),
            ).fetchone()
        return _record(row) if row else None

    def delete(self, media_id: uuid.UUID, sha256: str | None) -> MediaRecord | None:
        with _unavailable_on_failure(), self._conn.transaction():
            row = self._conn.execute(
                "DELETE FROM media WHERE id = %s AND sha256 IS NOT DISTINCT FROM %s"  # noqa: S608
                f" RETURNING {_COLUMNS}",
                (media_id, sha256),
            ).fetchone()
        return _record(row) if row else None

    def references(self, sha256: str) -> int:
        with _unavailable_on_failure():
            row = self._conn.execute(
                "SELECT count(*) AS n FROM media WHERE sha256 = %s", (sha256,)
            ).fetchone()
        assert row is not None
        return int(row["n"])


class PgMediaRepository:
    """Opens its pool on construction; build it per process, after the fork (see services.py)."""

    def __init__(self, conninfo: str, *, max_size: int = 8, timeout_seconds: float = 2.0) -> None:
        self._timeout = timeout_seconds
        client_deadline = timeout_seconds + _CLIENT_MARGIN_SECONDS

        def configure(conn: _DeadlineConnection) -> None:
            conn.deadline_seconds = client_deadline

        self._pool: psycopg_pool.ConnectionPool[_DeadlineConnection] = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            timeout=timeout_seconds,  # the checkout
            # Beyond this many requests already waiting for a connection, the next one is refused at
            # once (503): the queue in front of the pool is bounded, not only by the thread count.
            max_waiting=4 * max_size,
            open=False,
            # A failed connection attempt is retried once at once, then given up: no backoff timer
            # outlives an outage. The pool grows again on the next request that waits for a
            # connection, so it recovers as soon as PostgreSQL answers.
            reconnect_timeout=0,
            connection_class=_DeadlineConnection,
            configure=configure,
            kwargs={
                "autocommit": True,
                # A cluster created with SQL_ASCII would otherwise hand back bytes for text.
                "client_encoding": "utf8",
                "row_factory": dict_row,
                "application_name": "media",
                # libpq counts the whole connection set-up, TLS and authentication included.
                "connect_timeout": max(2, round(timeout_seconds)),
                "options": f"-c statement_timeout={round(timeout_seconds * 1000)}",
                # TCP only (ignored on Unix sockets): notice a peer that vanished, idle or not.
                "keepalives": 1,
                "keepalives_idle": max(1, round(2 * timeout_seconds)),
                "keepalives_interval": max(1, round(timeout_seconds)),
                "keepalives_count": 3,
                "tcp_user_timeout": round(2 * client_deadline * 1000),
            },
            name="media",
        )
        self._pool.open(wait=False)
        self._checking = threading.Lock()
        # While PostgreSQL is silent, requests are refused at once rather than each waiting the
        # deadline (and queuing behind each other); one tries again every `timeout_seconds`.
        self._breaker = CircuitBreaker(timeout_seconds)

    @contextmanager
    def _conn(self) -> Iterator[_DeadlineConnection]:
        if not self._breaker.allow():
            raise DatabaseUnavailable("PostgreSQL did not answer just now; retry in a moment")
        try:
            with (
                _unavailable_on_failure(),
                self._pool.connection(timeout=self._timeout) as conn,
            ):
                yield conn
        except DatabaseUnavailable as exc:
            if _silent(exc.__cause__):
                self._breaker.failed()
            else:
                self._breaker.released()
            self._flush_stale_connections()
            raise
        except BaseException:
            self._breaker.released()  # the caller's own error: says nothing about PostgreSQL
            raise
        else:
            self._breaker.succeeded()

    def _flush_stale_connections(self) -> None:
        """After a failure, check the idle connections in the background and drop the broken ones.

        Checking every connection on checkout would cost a round trip per request; instead a
        connection that broke while PostgreSQL was away fails one request (503), and this makes
        sure its idle siblings do not each fail another one once the database is back.
        """
        if not self._checking.acquire(blocking=False):
            return

        def check() -> None:
            try:
                self._pool.check()
            except Exception:  # the database may still be away; the next failure checks again
                log.debug("pool check failed", exc_info=True)
            finally:
                self._checking.release()

        threading.Thread(target=check, name="media-pool-check", daemon=True).start()

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
        with self._conn() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(sha256),))
            try:
                yield _PgDigestScope(conn)
            finally:
                # If the connection broke, the session (and its lock) is gone anyway.
                if not conn.closed and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(sha256),))

    @contextmanager
    def try_digest_scope(self, sha256: str) -> Iterator[DigestScope | None]:
        with self._conn() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS locked", (_lock_key(sha256),)).fetchone()
            if row is None or not row["locked"]:
                yield None
                return
            try:
                yield _PgDigestScope(conn)
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(sha256),))

    def referenced(self, digests: Sequence[str]) -> set[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT DISTINCT sha256 FROM media WHERE sha256 = ANY(%s)", (list(digests),)
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

    def ping(self) -> None:
        """One round trip, the checkout included, within `timeout_seconds` in all (readiness)."""
        started = time.monotonic()
        with self._conn() as conn, conn.deadline(max(0.05, self._timeout - (time.monotonic() - started))):
            conn.execute("SELECT 1")

    def close(self) -> None:
        self._pool.close()
