"""Fault drills against the rehearsal topology: each function its own process (two upload
replicas, two download replicas), nginx as the ingress, one CAS directory, one database."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from localdev.rehearsal import Rehearsal
from tests.factories import PRESIGN_SECRET, TEST_SECRET
from tests.support import RunningPostgres

MiB = 1024 * 1024


@pytest.fixture(scope="session", autouse=True)
def nginx_available() -> None:
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return
    reason = "REHEARSAL DRILLS NOT RUN: nginx is missing (make test-deps installs it as root)"
    if os.environ.get("MEDIA_TEST_REQUIRE_REHEARSAL") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def drill_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {
        "MEDIA_DATABASE_URL": database_url,
        "MEDIA_JWT_SECRET": TEST_SECRET,
        "MEDIA_PRESIGN_SECRET": PRESIGN_SECRET,
        "MEDIA_MAX_UPLOAD_BYTES": str(512 * MiB),
        # Drill-sized housekeeping: a temp file untouched for 3 s is abandoned, swept every second.
        "MEDIA_TEMP_MAX_AGE_SECONDS": "3",
        "MEDIA_TEMP_SWEEP_INTERVAL_SECONDS": "1",
        "MEDIA_DB_TIMEOUT_SECONDS": "1",
        # A body idle longer than this is a 408 (the sweep drill's client pauses 5 s: shorter).
        "MEDIA_BODY_IDLE_TIMEOUT_SECONDS": "8",
        "MEDIA_HEADER_TIMEOUT_SECONDS": "3",
        # The drills load one user from one address far beyond any sane limit, on purpose.
        "MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE": "0",
        "MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP": "0",
        "MEDIA_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


@contextmanager
def rehearsal_on(data_dir: Path, database_url: str, **extra: str) -> Iterator[Rehearsal]:
    running = Rehearsal(data_dir=data_dir, env=drill_env(database_url, **extra)).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def rehearsal(pg: RunningPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    with rehearsal_on(tmp_path_factory.mktemp("rehearsal"), pg.url) as running:
        yield running


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Callable[[Path, int], None]]:
    """Mount a size-limited tmpfs (needs root); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(where: Path, size_mib: int) -> None:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            reason = f"VOLUME-FULL DRILL NOT RUN: cannot mount a tmpfs here ({done.stderr.strip()})"
            if os.environ.get("MEDIA_TEST_REQUIRE_REHEARSAL") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(where)

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)
