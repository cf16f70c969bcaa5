"""Fixtures shared by every tier. The tiers and what each may fake are described in tests/README.md."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from werkzeug.test import Client

from common.config import Config
from common.migrate import migrate
from common.services import Services, build_services
from tests import support


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # its INFO lines drown a failure's output


def pytest_report_header(config: pytest.Config) -> str:
    mode = support.postgres_mode()
    if mode == "docker":
        import os

        image = os.environ.get("MEDIA_TEST_POSTGRES_IMAGE") or support.DEFAULT_IMAGE
        return f"PostgreSQL under test: Testcontainers, image {image}"
    return (
        "PostgreSQL under test: EMBEDDED (pgserver) -- no Docker engine answered, so the integration "
        "tests do NOT use Testcontainers; set MEDIA_TEST_REQUIRE_DOCKER=1 to fail instead"
    )


@pytest.fixture(scope="session")
def pg() -> Iterator[support.RunningPostgres]:
    with support.postgres() as running:
        migrate(running.url)
        yield running


@pytest.fixture
def config_for(pg: support.RunningPostgres, tmp_path: Path) -> Callable[..., Config]:
    def make(**overrides: str) -> Config:
        return support.make_config(tmp_path / "data", pg.url, **overrides)

    return make


@pytest.fixture
def services(config_for: Callable[..., Config]) -> Iterator[Services]:
    """Real PostgreSQL, real CAS on tmp_path. Afterwards no temp file may be left behind."""
    svc = build_services(config_for(MEDIA_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024)), background=False)
    yield svc
    svc.repo.close()
    leftovers = list((svc.config.cas_root / "tmp").iterdir())
    assert leftovers == [], f"temp files left behind: {leftovers}"


@pytest.fixture
def api(services: Services) -> Client:
    """Every function's handlers behind the local router, in process, with these services."""
    return support.api_client(services)
