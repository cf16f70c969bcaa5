"""End-to-end: `make run`'s stack (python -m localdev) as a real process, over HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localdev.harness import LocalStack
from tests.support import RunningPostgres, service_env

SMALL_LIMIT = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(pg: RunningPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = LocalStack(
        data_dir=tmp_path_factory.mktemp("stack"),
        env=service_env(pg.url, MEDIA_MAX_UPLOAD_BYTES=str(SMALL_LIMIT)),
    ).start()
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    # pgserver's Unix socket lives here: keep the path short (about 100 bytes at most).
    return tmp_path
