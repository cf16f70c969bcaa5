"""Fixtures shared by every tier. The tiers and what each may fake are described in tests/README.md."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from werkzeug.test import Client

from common.config import Config
from common.migrate import migrate
from common.services import Services, build_services
from localdev.harness import RunningClamd, RunningS3, clamd_server, s3_server
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
def own_database(pg: support.RunningPostgres) -> Iterator[str]:
    """A database of the test's own, migrated, for tests that walk every row (the store migration,
    the processing drain)."""
    name = "mig_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(pg.url, dbname=name)
    migrate(url)
    yield url
    with psycopg.connect(pg.url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def s3() -> Iterator[RunningS3]:
    """moto's S3 server on loopback, for the whole session (a bucket per test)."""
    with s3_server() as running:
        yield running


@pytest.fixture(params=["fs", "s3"])
def services(request: pytest.FixtureRequest, config_for: Callable[..., Config]) -> Iterator[Services]:
    """Real PostgreSQL and a real store: the volume on tmp_path, or a bucket on moto's S3 server
    (every test that takes it runs on both). Afterwards no temp file or upload may be left behind."""
    env = s3_env(request.getfixturevalue("s3")) if request.param == "s3" else {}
    svc = build_services(config_for(MEDIA_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024), **env), background=False)
    yield svc
    svc.repo.close()
    leftovers = support.temp_leftovers(svc.store)
    assert leftovers == [], f"temp files left behind: {leftovers}"


def s3_env(s3: RunningS3) -> dict[str, str]:
    """The configuration of a service on a new bucket of moto's server."""
    return {
        "MEDIA_STORAGE": "s3",
        "MEDIA_S3_BUCKET": s3.new_bucket(),
        "MEDIA_S3_ENDPOINT_URL": s3.endpoint,
        "MEDIA_S3_REGION": "us-east-1",
        "MEDIA_S3_PREFIX": "media",
        "MEDIA_S3_TIMEOUT_SECONDS": "2",
    }


@pytest.fixture
def api(services: Services) -> Client:
    """Every function's handlers behind the local router, in process, with these services."""
    return support.api_client(services)


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningClamd]:
    support.require_clamd()
    with clamd_server(tmp_path_factory.mktemp("clamd")) as running:
        yield running
