from __future__ import annotations

import os
import time
from pathlib import Path

from common.config import Config
from common.localstore import LocalBlobStore
from common.maintenance import start_maintenance
from common.memory_repository import InMemoryMediaRepository
from common.services import ServiceProvider, Services
from common.signing import KeyRing
from common.verifiers import JwtVerifier
from tests.factories import PRESIGN_SECRET, TEST_SECRET


def make_services(tmp_path: Path, **env: str) -> Services:
    return Services(
        config=Config.from_env(env),
        store=LocalBlobStore(tmp_path),
        repo=InMemoryMediaRepository(),
        verifier=JwtVerifier(secret=TEST_SECRET),
        keys=KeyRing(PRESIGN_SECRET),
    )


def test_the_sweeper_removes_stale_temp_files_at_start_and_then_periodically(tmp_path: Path) -> None:
    services = make_services(tmp_path, MEDIA_TEMP_MAX_AGE_SECONDS="60", MEDIA_TEMP_SWEEP_INTERVAL_SECONDS="1")
    stale = tmp_path / "tmp" / "upload-crashed.part"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    live = tmp_path / "tmp" / "upload-in-flight.part"
    live.write_bytes(b"y")
    stop = start_maintenance(services.config, services.store, services.repo)
    try:
        deadline = time.monotonic() + 5
        while stale.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not stale.exists()
        later = tmp_path / "tmp" / "upload-later.part"
        later.write_bytes(b"z")
        os.utime(later, (time.time() - 120, time.time() - 120))
        deadline = time.monotonic() + 5
        while later.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not later.exists()
        assert live.exists()
    finally:
        stop.set()


def test_the_provider_builds_once_per_process_and_again_after_a_fork() -> None:
    built: list[int] = []

    def factory() -> Services:
        built.append(os.getpid())
        return object()  # type: ignore[return-value]

    provider = ServiceProvider(factory)
    first = provider()
    assert provider() is first
    assert built == [os.getpid()]
    pid = os.fork()
    if pid == 0:  # the child: a fresh build, never the parent's object (its pool threads did not survive)
        os._exit(0 if provider() is not first and built[-1] == os.getpid() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert provider() is first
