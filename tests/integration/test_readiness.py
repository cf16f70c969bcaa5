"""Readiness follows PostgreSQL down and back up, in the same process, without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.test import Client

from common.migrate import migrate
from common.services import Services, build_services
from tests import support


@pytest.fixture
def own_postgres() -> Iterator[support.RunningPostgres]:
    with support.postgres(fixed_port=True) as running:
        migrate(running.url)
        yield running


def wait_for(client: Client, status: int, seconds: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while True:
        resp = client.get("/health/ready")
        if resp.status_code == status or time.monotonic() > deadline:
            assert resp.status_code == status, resp.get_data(as_text=True)
            doc: dict[str, object] = resp.get_json()
            return doc
        time.sleep(0.5)


def test_ready_goes_503_when_postgres_stops_and_200_when_it_returns(
    own_postgres: support.RunningPostgres, tmp_path: Path
) -> None:
    config = support.make_config(tmp_path, own_postgres.url, MEDIA_DB_TIMEOUT_SECONDS="1")
    services: Services = build_services(config, background=False)
    client = Client(support.load_routes("health").wsgi_app(lambda: services))
    try:
        up = wait_for(client, 200)
        assert up["status"] == "ready"
        assert isinstance(up["libmagic"], int) and up["libmagic"] >= 500
        assert client.get("/health/live").status_code == 200

        own_postgres.stop()
        started = time.monotonic()
        down = wait_for(client, 503)
        assert time.monotonic() - started < 15
        assert down["status"] == "unavailable"
        checks = down["checks"]
        assert isinstance(checks, dict)
        assert checks["database"]["status"] == "failed"
        assert checks["storage"]["status"] == "ok"
        assert client.get("/health/live").status_code == 200  # liveness never touches the database

        own_postgres.start()
        back = wait_for(client, 200, seconds=60)
        assert back["status"] == "ready"
    finally:
        services.repo.close()
