"""Helpers shared by the test tiers: the PostgreSQL under test, function routes, config."""

from __future__ import annotations

import atexit
import importlib.util
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from common.config import Config
from common.services import Services
from common.tokens import Principal
from common.web import Routes
from localdev.harness import RunningS3, clamd_binary
from localdev.router import build_router
from tests.factories import PRESIGN_SECRET, PUBLIC_BASE, TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "postgres:16-alpine"


@cache
def load_routes(function: str) -> Routes:
    """A function's `routes`, loaded from its main.py under a unique module name.

    (`import main` would be ambiguous: functions-framework registers every function as `main`.)
    """
    path = ROOT / "functions" / function / "main.py"
    spec = importlib.util.spec_from_file_location(f"media_function_{function}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    routes = module.routes
    assert isinstance(routes, Routes)
    return routes


def function_names() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))


class BufferedClient(Client):
    """Reads every response whole and closes it, as a WSGI server does (file handles included)."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


_routers: dict[int, tuple[Services, Any]] = {}
_routers_lock = threading.Lock()


def api_client(services: Services) -> BufferedClient:
    """Every function's handlers behind the local router, in process, with these services. The
    router is built once per `services` (Werkzeug compiles each rule with `ast`, which CPython 3.11
    does not do safely from several threads at once: "AST constructor recursion depth mismatch")."""
    with _routers_lock:
        known = _routers.get(id(services))
        if known is None or known[0] is not services:
            apps = {name: load_routes(name).wsgi_app(lambda: services) for name in function_names()}
            known = _routers[id(services)] = (services, build_router(apps))
    return BufferedClient(known[1])


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    """The MEDIA_* environment of a service process under test: its database, the test secrets."""
    return {
        "MEDIA_DATABASE_URL": database_url,
        "MEDIA_JWT_SECRET": TEST_SECRET,
        "MEDIA_PRESIGN_SECRET": PRESIGN_SECRET,
        **extra,
    }


def make_config(data_dir: Path, database_url: str, **overrides: str) -> Config:
    env = {
        "MEDIA_DATA_DIR": str(data_dir),
        "MEDIA_DATABASE_URL": database_url,
        "MEDIA_JWT_SECRET": TEST_SECRET,
        "MEDIA_PRESIGN_SECRET": PRESIGN_SECRET,
        "MEDIA_PUBLIC_BASE_URL": PUBLIC_BASE,
        "MEDIA_DB_TIMEOUT_SECONDS": "2",
    }
    env.update(overrides)
    return Config.from_env(env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


@cache
def docker_available() -> bool:
    """Whether a Docker engine answers (asked once per session; every socket the probe opens is closed).

    A Unix socket is tried by hand first: docker-py leaks the socket of a failed connect, which
    `filterwarnings = error` turns into a test error on a machine without an engine.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not _unix_socket_answers(host.removeprefix("unix://")):
        return False
    try:
        import docker

        client = docker.from_env(timeout=5)
    except Exception:
        return False
    try:
        client.ping()
        return True
    except Exception:
        return False
    finally:
        client.close()


def postgres_mode() -> str:
    """'docker' (Testcontainers), or 'embedded' (pgserver) when there is no Docker engine."""
    if os.environ.get("MEDIA_TEST_POSTGRES") == "embedded":
        return "embedded"
    if docker_available():
        if os.environ.get("MEDIA_TEST_REQUIRE_EMBEDDED") == "1":
            raise RuntimeError(
                "MEDIA_TEST_REQUIRE_EMBEDDED=1, but a Docker engine answers (hide it: DOCKER_HOST)"
            )
        return "docker"
    if os.environ.get("MEDIA_TEST_REQUIRE_DOCKER") == "1":
        raise RuntimeError(
            "MEDIA_TEST_REQUIRE_DOCKER=1 but no Docker engine answers; "
            'run `eval "$(../shared/ci/testcontainers-offline.sh)"` first'
        )
    return "embedded"


@dataclass
class RunningPostgres:
    url: str
    handle: Any
    mode: str
    port: int | None = None
    frozen: bool = False

    def stop(self) -> None:
        if self.mode == "docker":
            self.handle.get_wrapped_container().stop(timeout=5)
        else:
            _stop_embedded(self.handle)

    def start(self) -> None:
        if self.mode == "docker":
            self.handle.get_wrapped_container().start()
        else:
            import pgserver

            self.handle = pgserver.get_server(self.handle.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]

    def freeze(self) -> None:
        """Stop the server's processes without closing a connection: what a failover in progress, a
        partition without resets or a stuck host look like (`docker pause`; SIGSTOP when embedded)."""
        if self.mode == "docker":
            self.handle.get_wrapped_container().pause()
        else:
            for pid in self._server_pids():  # the postmaster first: it cannot fork new backends then
                os.kill(pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if not self.frozen:
            return
        if self.mode == "docker":
            self.handle.get_wrapped_container().unpause()
        else:
            for pid in reversed(self._server_pids()):
                os.kill(pid, signal.SIGCONT)
        self.frozen = False

    def _server_pids(self) -> list[int]:
        """The postmaster and its descendants (backends, checkpointer, walwriter...)."""
        pids = [int(self.handle.get_pid())]
        for pid in pids:  # grows while it is walked: breadth first
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        return pids


@contextmanager
def postgres(fixed_port: bool = False) -> Iterator[RunningPostgres]:
    """A PostgreSQL for tests: a Testcontainers container, or an embedded one without Docker.

    `fixed_port` binds the container to a chosen host port so it keeps its address across
    stop/start (for the readiness drill).
    """
    mode = postgres_mode()
    if mode == "docker":
        from testcontainers.community.postgres import PostgresContainer

        image = os.environ.get("MEDIA_TEST_POSTGRES_IMAGE") or DEFAULT_IMAGE
        container = PostgresContainer(image, driver=None)
        port = None
        if fixed_port:
            port = free_port()
            container = container.with_bind_ports(5432, port)
        with container:
            yield RunningPostgres(container.get_connection_url(), container, mode, port)
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="mpg", dir="/tmp") as tmp:
        server = pgserver.get_server(tmp, cleanup_mode="stop")  # type: ignore[attr-defined]
        try:
            yield RunningPostgres(str(server.get_uri()), server, mode)
        finally:
            _stop_embedded(server)


def _stop_embedded(server: Any) -> None:
    """Stop a pgserver server now, and keep pgserver from trying again at exit (by then pytest has
    closed the stream its log handler writes to)."""
    server.cleanup()
    atexit.unregister(server._cleanup)


def delete_racing_a_completion(services: Services, owner: Principal, data: bytes) -> str:
    """Delete a pending upload whose bytes arrive between the delete's first read and its lock.

    The repository's `digest_scope` is wrapped so that the first scope the delete opens (the one
    for "no bytes yet") lets the upload complete first, as a concurrent PUT would. Returns the
    digest of the bytes; the caller checks what is left of them.
    """
    from datetime import UTC, datetime, timedelta

    from common import media
    from common.records import NewPending

    expires = datetime.now(UTC) + timedelta(minutes=5)
    pending = services.repo.create_pending(
        NewPending(owner.subject, "racing.png", "image/png", len(data), None, expires)
    )
    original = services.repo.digest_scope
    digest: list[str] = []

    def complete_first(sha256: str) -> Any:
        if not digest:
            with services.store.writer(len(data)) as writer:
                writer.write(data)
                staged = writer.finish()
                digest.append(staged.sha256)
                media.commit_blob(
                    services,
                    writer,
                    staged.sha256,
                    lambda scope: scope.complete(pending.id, staged.sha256, staged.size) or pending,
                )
        return original(sha256)

    services.repo.digest_scope = complete_first  # type: ignore[method-assign]
    try:
        media.delete(services, owner, str(pending.id))
    finally:
        services.repo.digest_scope = original  # type: ignore[method-assign]
    return digest[0]


# --- S3: moto's standalone server, and looking inside either store ------------------------------------


def needs_freezable(s3: RunningS3) -> None:
    """Skip, saying so, where the test must freeze the S3 server and cannot (an outside one)."""
    if not s3.freezable:
        import pytest

        pytest.skip("NOT TESTED: an outside S3 server (MEDIA_TEST_S3_ENDPOINT) cannot be frozen")


def stored_blobs(store: Any) -> list[str]:
    """The digests a store holds (the volume's files, or the bucket's keys)."""
    from common.localstore import LocalBlobStore
    from common.s3store import S3BlobStore

    if isinstance(store, LocalBlobStore):
        return sorted(p.name for p in store.blobs.rglob("*") if p.is_file())
    assert isinstance(store, S3BlobStore)
    listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}sha256/")
    return sorted(item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", []))


def temp_leftovers(store: Any) -> list[str]:
    """What uploads left behind: temp files, or temp objects and unfinished multipart uploads."""
    from common.localstore import LocalBlobStore
    from common.s3store import S3BlobStore

    if isinstance(store, LocalBlobStore):
        return sorted(p.name for p in store.tmp.iterdir())
    assert isinstance(store, S3BlobStore)
    objects = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.temp_prefix).get("Contents", [])
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.temp_prefix).get(
        "Uploads", []
    )
    return sorted([o["Key"] for o in objects] + [f"(multipart) {u['Key']}" for u in uploads])


def plant_temp(store: Any, label: str) -> None:
    """What a process that died mid-upload leaves: a temp file, or a temp object and a multipart
    upload with one part."""
    from common.localstore import LocalBlobStore
    from common.s3store import S3BlobStore

    if isinstance(store, LocalBlobStore):
        (store.tmp / f"{label}--deadbeef.part").write_bytes(b"half an upload")
        return
    assert isinstance(store, S3BlobStore)
    key = f"{store.temp_prefix}{label}--deadbeef"
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"half an upload")
    upload = store.client.create_multipart_upload(Bucket=store.bucket, Key=key + "-mp")
    store.client.upload_part(
        Bucket=store.bucket, Key=key + "-mp", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
    )


def require_clamd() -> None:
    if clamd_binary() is not None:
        return
    reason = "CLAMD TESTS NOT RUN: clamd is missing (apt-get install clamav-daemon, as root)"
    if os.environ.get("MEDIA_TEST_REQUIRE_CLAMD") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
