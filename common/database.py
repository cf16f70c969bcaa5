"""PostgreSQL connections on which every wait has a deadline: a per-process psycopg pool.

A connection is waited for at most `timeout_seconds` (the pool's checkout); each round trip on it
(a statement, a COMMIT, the pool's own checks) at most `timeout_seconds` too: `statement_timeout`
lets a live server cancel a slow statement itself, and `DeadlineConnection` gives up on a server
that stopped answering altogether (frozen, failing over, partitioned without a reset, where no
cancel and no error ever arrives), closing that connection so the pool replaces it. TCP
keepalives and `tcp_user_timeout` let the kernel notice a dead peer on idle TCP connections too.
Once PostgreSQL has failed to answer, a circuit breaker refuses at once for `timeout_seconds` and
then lets one caller try again, so threads do not pile up waiting deadlines. So a request that
needs the database answers 503 within about twice the timeout, whatever the database does.

Driver and pool failures leave this module as `DatabaseUnavailable` (503 at the edge) and values
the database refuses as `UnstorableInput` (400), never as psycopg exceptions. The SQL itself is
in `repository.py`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from common import metrics
from common.breaker import CircuitBreaker
from common.problems import DatabaseUnavailable, UnstorableInput

log = logging.getLogger("media.database")


def conninfo_problem(conninfo: str) -> str | None:
    """Why `conninfo` is not a PostgreSQL connection string (URL or key=value), or None."""
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        return str(exc).strip().splitlines()[0]
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
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
    """PostgreSQL did not answer within the deadline (a `DeadlineConnection` gave up)."""


def _silent(exc: BaseException | None) -> bool:
    """Whether a failure cost its caller a whole deadline: PostgreSQL did not answer a round trip,
    or no connection could be had in time. (A refused or reset connection fails at once, and a
    server-side error such as statement_timeout is an answer.)"""
    return isinstance(exc, NoAnswer | psycopg_pool.PoolTimeout)


# How much longer the client waits than the server's statement_timeout: a live server cancels a
# slow statement itself (the connection survives); only a silent one reaches the client's deadline.
_CLIENT_MARGIN_SECONDS = 0.25


class DeadlineConnection(psycopg.Connection[dict[str, Any]]):
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


def _server_timeout(timeout_seconds: float) -> dict[str, Any]:
    return {"options": f"-c statement_timeout={round(timeout_seconds * 1000)}"}


# Through PgBouncer in transaction mode each transaction may run on another server connection:
# PgBouncer refuses the `options` startup parameter (set statement_timeout on the role instead,
# `ALTER ROLE ... SET statement_timeout`; the client's own deadline holds either way), and a
# statement psycopg prepared on one server connection does not exist on the next (PgBouncer
# before 1.21 does not track them), so nothing is prepared. Session state is never relied on: the
# digest lock is transaction-scoped (repository.py).
_THROUGH_TRANSACTION_POOLER: dict[str, Any] = {"prepare_threshold": None}


def digest_lock_key(sha256: str) -> int:
    """The digest's advisory-lock key (`pg_advisory_xact_lock`): a signed 64-bit integer from its
    first 16 hex digits. Who creates or removes the digest's blob, or settles its processing,
    holds it (repository.py)."""
    return int(sha256[:16], 16) - (1 << 63)


# What the repository's SQL modules are handed: a pool checkout, as a context manager.
Connect = Callable[[], AbstractContextManager[DeadlineConnection]]


class Database:
    """Opens its pool on construction; build it per process, after the fork (see services.py)."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 8,
        timeout_seconds: float = 2.0,
        transaction_pooling: bool = False,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        client_deadline = timeout_seconds + _CLIENT_MARGIN_SECONDS

        def configure(conn: DeadlineConnection) -> None:
            conn.deadline_seconds = client_deadline

        self._pool: psycopg_pool.ConnectionPool[DeadlineConnection] = psycopg_pool.ConnectionPool(
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
            connection_class=DeadlineConnection,
            configure=configure,
            kwargs={
                "autocommit": True,
                # A cluster created with SQL_ASCII would otherwise hand back bytes for text.
                "client_encoding": "utf8",
                "row_factory": dict_row,
                "application_name": "media",
                # libpq counts the whole connection set-up, TLS and authentication included.
                "connect_timeout": max(2, round(timeout_seconds)),
                **(_THROUGH_TRANSACTION_POOLER if transaction_pooling else _server_timeout(timeout_seconds)),
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
    def connection(self) -> Iterator[DeadlineConnection]:
        """A pooled connection for the block; every failure leaves as a domain error."""
        if not self._breaker.allow():
            raise DatabaseUnavailable("PostgreSQL did not answer just now; retry in a moment")
        try:
            with (
                translate_errors(),
                self._pool.connection(timeout=self.timeout_seconds) as conn,
            ):
                yield conn
        except DatabaseUnavailable as exc:
            metrics.system(metrics.DB_ERRORS)
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
        finally:
            stats = self._pool.get_stats()
            metrics.pool_state(
                stats.get("pool_size", 0), stats.get("pool_available", 0), stats.get("requests_waiting", 0)
            )

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

    def close(self) -> None:
        self._pool.close()
