"""The functions' container image, built from infra/Dockerfile by `make images` and run the way
Knative runs it: PORT set, read-only root filesystem, the image's non-root user, no capabilities,
a tmpfs at /tmp, the CAS as a volume shared by the upload and download containers, and the
Testcontainers PostgreSQL as the database. Needs a Docker engine (and, with no registry, the base
image `../shared/ci/testcontainers-offline.sh` builds: MEDIA_TEST_BASE_IMAGE)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import PRESIGN_SECRET, TEST_SECRET, bearer, png, token
from tests.support import ROOT, RunningPostgres, docker_available

TAG = "ci-" + uuid.uuid4().hex[:8]
BASE_IMAGE = os.environ.get("MEDIA_TEST_BASE_IMAGE") or "python:3.11-slim-bookworm"
BUILD_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def docker() -> Iterator[Any]:
    if not docker_available():
        message = "no Docker engine answers: the container image was NOT built or run"
        if os.environ.get("MEDIA_TEST_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    import docker as docker_sdk

    client = docker_sdk.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(docker: Any) -> Iterator[dict[str, str]]:
    built = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "images",
            "FUNCTIONS=upload download",
            f"BASE_IMAGE={BASE_IMAGE}",
            f"IMAGE_TAG={TAG}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    names = {name: f"media-{name}:{TAG}" for name in ("upload", "download")}
    yield names
    for image in names.values():
        docker.images.remove(image, force=True)


@dataclass
class Running:
    name: str
    container: Any

    @property
    def base(self) -> str:
        self.container.reload()
        binding = self.container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]
        return f"http://127.0.0.1:{binding['HostPort']}"

    def logs(self) -> str:
        return str(self.container.logs().decode(errors="replace"))


@pytest.fixture(scope="module")
def deployed(docker: Any, images: dict[str, str], pg: RunningPostgres) -> Iterator[dict[str, Running]]:
    if pg.mode != "docker":
        pytest.fail("the image test needs the Testcontainers PostgreSQL")
    database = pg.handle.get_wrapped_container()
    database.reload()
    address = database.attrs["NetworkSettings"]["IPAddress"]
    url = f"postgresql://{pg.handle.username}:{pg.handle.password}@{address}:5432/{pg.handle.dbname}"
    volume = docker.volumes.create(f"media-cas-{TAG}")
    running: dict[str, Running] = {}
    try:
        for name, image in images.items():
            container = docker.containers.run(
                image,
                detach=True,
                name=f"media-{name}-{TAG}",
                read_only=True,
                tmpfs={"/tmp": "rw,size=64m"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                volumes={volume.name: {"bind": "/data", "mode": "rw"}},
                ports={"8080/tcp": ("127.0.0.1", None)},
                environment={
                    "PORT": "8080",
                    "MEDIA_DATABASE_URL": url,
                    "MEDIA_JWT_SECRET": TEST_SECRET,
                    "MEDIA_PRESIGN_SECRET": PRESIGN_SECRET,
                    "K_REVISION": f"{name}-00001",
                },
            )
            running[name] = Running(name, container)
        for fn in running.values():
            _wait_ready(fn)
        yield running
    finally:
        for fn in running.values():
            fn.container.remove(force=True)
        volume.remove(force=True)


def _wait_ready(fn: Running, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fn.container.reload()
        if fn.container.status == "exited":
            pytest.fail(f"{fn.name} exited:\n{fn.logs()}")
        try:
            if requests.get(fn.base + "/health/ready", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, KeyError, IndexError, TypeError):
            pass
        time.sleep(0.3)
    pytest.fail(f"{fn.name} was not ready within {timeout} s:\n{fn.logs()}")


def _sample(metrics_text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_the_images_run_as_knative_runs_them(
    deployed: dict[str, Running], images: dict[str, str], docker: Any
) -> None:
    for name, image in images.items():
        config = docker.images.get(image).attrs["Config"]
        assert config["User"] == "65532:65532", name
        fn = deployed[name]
        uid = fn.container.exec_run(["python", "-c", "import os; print(os.getuid(), os.getgid())"])
        assert uid.output.decode().split() == ["65532", "65532"]
        write = fn.container.exec_run(["python", "-c", "open('/srv/x', 'w')"])
        assert write.exit_code != 0 and b"Read-only file system" in write.output
        cas = fn.container.exec_run(["python", "-c", "open('/data/cas/probe', 'w').write('x')"])
        assert cas.exit_code == 0, cas.output  # the volume is writable by the image's user
        magic = fn.container.exec_run(["python", "-c", "import magic; print(magic.from_buffer(b'%PDF-1.4'))"])
        assert b"PDF" in magic.output, magic.output


def test_upload_in_one_container_and_a_range_from_the_other(deployed: dict[str, Running]) -> None:
    up, down = deployed["upload"], deployed["download"]
    tok = token()
    data = png(96, 96)
    created = requests.post(
        up.base + "/media", headers=bearer(tok), files={"file": ("soup.png", data, "image/png")}, timeout=30
    )
    assert created.status_code == 201, created.text
    doc = created.json()
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()

    part = requests.get(
        f"{down.base}/media/{doc['id']}/content", headers={**bearer(tok), "Range": "bytes=16-271"}, timeout=30
    )
    assert part.status_code == 206, part.text
    assert part.content == data[16:272]
    assert part.headers["Content-Range"] == f"bytes 16-271/{len(data)}"

    uploaded = requests.get(up.base + "/metrics", timeout=10).text
    served = requests.get(down.base + "/metrics", timeout=10).text
    assert _sample(uploaded, "media_uploads_total", kind="multipart", outcome="success") == 1
    assert (
        _sample(uploaded, "media_http_requests_total", function="upload", route="/media", status="201") == 1
    )
    assert _sample(served, "media_downloads_total", kind="range") == 1
    assert _sample(served, "media_storage_free_bytes") > 0
    for fn in deployed.values():
        log = fn.logs()
        assert "Control server error" not in log and "Traceback" not in log, log[-2000:]
        assert f'"revision": "{fn.name}-00001"' in log
