"""The service through a real PgBouncer (Debian's 1.18) in transaction mode, as CloudNativePG's
`Pooler` runs it: every transaction may land on another server connection.

What needs care there, and is checked here: psycopg's prepared statements (off with
`MEDIA_DB_POOLING=transaction`), the `options` startup parameter (PgBouncer refuses it), and the
digest lock (transaction-scoped, so it cannot stay behind on a server connection).
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from common import listing, media
from common.migrate import set_role_statement_timeout
from common.problems import DatabaseUnavailable
from common.records import ListQuery
from common.services import Services, build_services
from common.tokens import DELETE, READ, WRITE, Principal
from tests.factories import png, upload_body
from tests.support import RunningPostgres, delete_racing_a_completion, free_port, make_config

SERVER_CONNECTIONS = 2  # far fewer than the clients' pools: transactions must share them


@dataclass
class Bouncer:
    url: str
    log: Path

    def server_connections(self) -> int:
        """The server connections PgBouncer holds (its admin console's SHOW SERVERS)."""
        admin = self.url.rsplit("/", 1)[0] + "/pgbouncer"
        with psycopg.connect(admin, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            return len(conn.execute("SHOW SERVERS").fetchall())


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer",) if os.access(p, os.X_OK)), None
    )


@pytest.fixture(scope="module")
def bouncer(pg: RunningPostgres) -> Iterator[Bouncer]:
    binary = _binary()
    if binary is None:
        message = "PgBouncer is not installed (apt-get install pgbouncer; `make test-deps` does it)"
        if os.environ.get("MEDIA_TEST_REQUIRE_REHEARSAL"):
            pytest.fail(message)
        pytest.skip(f"NOT TESTED: {message}")
    target = conninfo_to_dict(pg.url)
    server = " ".join(
        f"{key}={target[name]}"
        for key, name in (("host", "host"), ("port", "port"), ("user", "user"), ("password", "password"))
        if target.get(name)
    )
    # Not under pytest's tmp_path: its parents are private to root, and PgBouncer runs as nobody.
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as tmp:
        yield from _run(binary, server, target, Path(tmp), _run_as(pg))


def _run_as(pg: RunningPostgres) -> str:
    """PgBouncer refuses to run as root: nobody, or the embedded server's own user (pgserver, as
    root, keeps its Unix socket's directory to that user)."""
    if pg.mode != "docker":
        with contextlib.suppress(KeyError):
            return pwd.getpwnam("pgserver").pw_name
    return "nobody"


def _run(binary: str, server: str, target: Mapping[str, object], home: Path, user: str) -> Iterator[Bouncer]:
    port = free_port()
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"media = {server} dbname={target.get('dbname', 'postgres')}"
        " application_name=pgbouncer-under-test\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = trust\nadmin_users = media\n"
        f"auth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_CONNECTIONS}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
        "max_client_conn = 200\n"
        "server_reset_query =\n"
        "application_name_add_host = 0\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {home / 'pgbouncer.log'}\npidfile = {home / 'pgbouncer.pid'}\n"
    )
    (home / "users.txt").write_text('"media" ""\n')
    command = [binary, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        account = pwd.getpwnam(user)
        for path in (home, *home.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        command[1:1] = ["-u", user]
    output = open(home / "output.log", "wb")  # noqa: SIM115 - the child's, closed below
    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"postgresql://media@127.0.0.1:{port}/media"
    deadline = time.monotonic() + 15
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2, autocommit=True, prepare_threshold=None) as c:
                c.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"PgBouncer did not start: {(home / 'output.log').read_text()}") from None
            time.sleep(0.1)
    try:
        yield Bouncer(url, home / "pgbouncer.log")
    finally:
        proc.terminate()
        proc.wait(10)
        output.close()


@pytest.fixture
def pooled(bouncer: Bouncer, tmp_path: Path) -> Iterator[Services]:
    config = make_config(
        tmp_path / "data",
        bouncer.url,
        MEDIA_DB_POOLING="transaction",
        MEDIA_DB_POOL_MAX="8",
        MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0",
    )
    services = build_services(config, background=False)
    yield services
    services.repo.close()


def principal() -> Principal:
    return Principal("bouncer-" + uuid.uuid4().hex[:10], frozenset({READ, WRITE, DELETE}))


def test_every_operation_works_through_a_transaction_pooler(pooled: Services, bouncer: Bouncer) -> None:
    alice = principal()
    body, ctype = upload_body(png())

    def round_trip(_: int) -> None:
        record = media.upload_multipart(pooled, alice, io.BytesIO(body), ctype)
        assert media.get(pooled, alice, str(record.id)).record == record
        listing.list_media(pooled, alice, {"limit": "5"})
        pooled.repo.rate_take(f"bouncer:{alice.subject}", 0.001, 60)

    # 16 threads × 10 rounds: each query runs far more often than psycopg's prepare threshold (5),
    # on 8 client connections sharing 2 server connections.
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(round_trip, range(160)))
    assert 0 < bouncer.server_connections() <= SERVER_CONNECTIONS
    listed = pooled.repo.list_media(ListQuery(owner=alice.subject, limit=500))
    assert len(listed) == 160
    digest = listed[0].sha256
    assert digest is not None and pooled.store.exists(digest)
    for record in listed:
        media.delete(pooled, alice, str(record.id))
    assert not pooled.store.exists(digest)  # the last delete unlinked the shared blob


def test_the_digest_lock_holds_and_is_released_through_the_pooler(pooled: Services) -> None:
    digest = uuid.uuid4().hex * 2
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pooled.repo.digest_scope(digest):
            inside.set()
            release.wait(10)

    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(hold)
        assert inside.wait(10)
        with pooled.repo.try_digest_scope(digest) as scope:
            assert scope is None  # taken, whichever server connection each side is on
        release.set()
        held.result(10)
    # Released with its transaction: every later attempt gets it, on any server connection.
    for _ in range(2 * SERVER_CONNECTIONS + 1):
        with pooled.repo.try_digest_scope(digest) as scope:
            assert scope is not None


def test_races_on_one_digest_stay_consistent_through_the_pooler(pooled: Services) -> None:
    alice = principal()
    body, ctype = upload_body(png())
    for _ in range(5):
        victim = media.upload_multipart(pooled, alice, io.BytesIO(body), ctype)
        with ThreadPoolExecutor(2) as pool:
            deleted = pool.submit(media.delete, pooled, alice, str(victim.id))
            uploaded = pool.submit(media.upload_multipart, pooled, alice, io.BytesIO(body), ctype)
            deleted.result(10)
            survivor = uploaded.result(10)
        assert survivor.sha256 is not None and pooled.store.exists(survivor.sha256)
        media.delete(pooled, alice, str(survivor.id))
    digest = delete_racing_a_completion(pooled, alice, png(24, 24))
    assert not pooled.store.exists(digest)


def test_the_session_setting_through_a_transaction_pooler_fails_clearly(
    bouncer: Bouncer, tmp_path: Path
) -> None:
    """What the setting is for: without it PgBouncer refuses the connection (startup `options`)."""
    config = make_config(
        tmp_path / "data", bouncer.url, MEDIA_DB_POOLING="session", MEDIA_DB_TIMEOUT_SECONDS="1"
    )
    services = build_services(config, background=False)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            services.repo.ping()
        assert time.monotonic() - started < 5
    finally:
        services.repo.close()
    assert "unsupported startup parameter: options" in bouncer.log.read_text()


def test_the_migration_gives_the_role_its_statement_timeout(pg: RunningPostgres) -> None:
    """Through PgBouncer the functions cannot send statement_timeout; `python -m common.migrate`
    with MEDIA_DB_POOLING=transaction sets it on the role instead (here a role of the test's own)."""
    role = "timeout_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
    try:
        params = conninfo_to_dict(pg.url) | {"user": role, "password": "pw"}
        own = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
        set_role_statement_timeout(own, 1.5)
        with psycopg.connect(own, autocommit=True, client_encoding="utf8") as conn:
            row = conn.execute("SHOW statement_timeout").fetchone()
        assert row is not None and row[0] == "1500ms"
    finally:
        with psycopg.connect(pg.url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
