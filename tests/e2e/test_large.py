"""A 1 GiB upload and download stream through with the serving process's peak RSS under 150 MiB,
on the volume and on S3 (moto's server, which holds the bytes in its own memory)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from localdev.harness import (
    MULTIPART_CONTENT_TYPE,
    GeneratedFile,
    LocalStack,
    multipart_stream,
    peak_rss_bytes,
)
from tests.conftest import s3_env
from tests.factories import TEST_SECRET, bearer, token
from tests.support import RunningPostgres

MiB = 1024 * 1024
GiB = 1024 * MiB
RSS_LIMIT = 150 * MiB


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fs", "s3"])
def test_one_gib_up_and_down_in_bounded_memory(
    pg: RunningPostgres, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    storage = s3_env(request.getfixturevalue("s3")) if backend == "s3" else {}
    stack = LocalStack(
        data_dir=tmp_path / "big",
        env={
            "MEDIA_DATABASE_URL": pg.url,
            "MEDIA_JWT_SECRET": TEST_SECRET,
            "MEDIA_MAX_UPLOAD_BYTES": str(2 * GiB),
            **storage,
        },
    ).start()
    try:
        tok = token()
        big = GeneratedFile(GiB)
        up = requests.post(
            stack.base + "/media",
            headers={**bearer(tok), "Content-Type": MULTIPART_CONTENT_TYPE},
            data=multipart_stream(big),
            timeout=600,
        )
        assert up.status_code == 201, up.text
        doc = up.json()
        assert doc["size"] == GiB
        assert doc["sha256"] == big.sha256

        digest = hashlib.sha256()
        received = 0
        with requests.get(doc["url"], stream=True, timeout=600) as down:  # the signed link
            assert down.status_code == 200
            for chunk in down.iter_content(MiB):
                digest.update(chunk)
                received += len(chunk)
        assert received == GiB
        assert digest.hexdigest() == big.sha256

        assert stack.worker_pids()
        peaks = {pid: peak_rss_bytes(pid) for pid in stack.server_pids()}
        for pid, peak in peaks.items():  # the launcher (gunicorn's master) and every worker
            assert peak < RSS_LIMIT, f"process {pid} peaked at {peak / MiB:.0f} MiB"
    finally:
        stack.stop()
        if storage:  # moto keeps every byte in its memory for the rest of the session otherwise
            client = request.getfixturevalue("s3").client()
            for item in client.list_objects_v2(Bucket=storage["MEDIA_S3_BUCKET"]).get("Contents", []):
                client.delete_object(Bucket=storage["MEDIA_S3_BUCKET"], Key=item["Key"])
