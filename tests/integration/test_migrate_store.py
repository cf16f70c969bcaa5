"""The online migration between the stores (`common.migrate_store`), with real PostgreSQL, the
volume on tmp_path and a bucket on moto's S3 server: uploads and deletes during the copy, an
interruption and a resume, a copy that does not verify, both directions, and the command."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import media, migrate_store
from common.cas import BlobStore, LocalBlobStore
from common.records import ListQuery, MediaRecord
from common.services import Services, build_services, build_store
from common.tokens import DELETE, READ, WRITE, Principal
from localdev.harness import RunningS3
from tests.conftest import s3_env
from tests.factories import png, upload_body
from tests.support import ROOT, make_config, service_env, stored_blobs


@pytest.fixture
def on_fs(own_database: str, tmp_path: Path, s3: RunningS3) -> Iterator[Services]:
    """The service on the volume, configured for a bucket too (the migration's destination)."""
    svc = build_services(
        make_config(
            tmp_path / "data",
            own_database,
            MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0",
            **{**s3_env(s3), "MEDIA_STORAGE": "fs"},
        ),
        background=False,
    )
    yield svc
    svc.repo.close()


def other(services: Services, kind: str) -> BlobStore:
    return build_store(dataclasses.replace(services.config, storage=kind))


def owner() -> Principal:
    return Principal("mig-" + uuid.uuid4().hex[:10], frozenset({READ, WRITE, DELETE}))


def upload(services: Services, who: Principal, n: int = 1) -> list[MediaRecord]:
    records = []
    for _ in range(n):
        body, ctype = upload_body(png(24, 24))
        records.append(media.upload_multipart(services, who, io.BytesIO(body), ctype))
    return records


def readable(store: BlobStore, sha256: str) -> bool:
    with store.open(sha256) as f:
        return hashlib.sha256(f.read()).hexdigest() == sha256


def test_uploads_and_deletes_during_the_migration_end_with_nothing_missing(on_fs: Services) -> None:
    s3 = other(on_fs, "s3")
    who = owner()
    before = upload(on_fs, who, 12)
    doomed = max(before, key=lambda r: r.sha256 or "")  # copied last: deleted before its turn
    during: list[MediaRecord] = []
    stop = threading.Event()

    def keep_uploading() -> None:  # a client of the running service, meanwhile
        while not stop.is_set() and len(during) < 40:
            during.extend(upload(on_fs, who))

    def report(event: str, progress: migrate_store.Progress) -> None:
        if event == "progress" and progress.done == 3 and not deleted:
            media.delete(on_fs, who, str(doomed.id))  # deleted before its turn came
            deleted.append(doomed)

    deleted: list[MediaRecord] = []

    uploader = threading.Thread(target=keep_uploading)
    uploader.start()
    try:
        first = migrate_store.migrate(on_fs.store, s3, on_fs.repo, report=report)
    finally:
        stop.set()
        uploader.join(60)
    assert not first.failed and first.copied >= 11 and first.gone >= 1
    # What arrived after the last comparison is copied by running it again (the documented step).
    final = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert final.missing == 0 and not final.failed
    assert during, "no upload happened during the migration"
    records = on_fs.repo.list_media(ListQuery(owner=who.subject, limit=500))
    digests = {r.sha256 for r in records if r.sha256}
    assert doomed.sha256 not in digests and doomed.sha256 not in stored_blobs(s3)  # never copied
    assert digests <= set(stored_blobs(s3))
    assert all(readable(s3, d) for d in digests)
    # Switched: the service on the bucket serves every record.
    switched = build_services(dataclasses.replace(on_fs.config, storage="s3"), background=False)
    try:
        for record in records:
            no_headers: dict[str, str] = {}
            content = media.read_content(switched, who, str(record.id), "GET", no_headers)
            assert content.file is not None
            with content.file as f:
                assert hashlib.sha256(f.read()).hexdigest() == record.sha256
    finally:
        switched.repo.close()


def test_an_interrupted_migration_resumes_where_it_stopped(on_fs: Services) -> None:
    s3 = other(on_fs, "s3")
    upload(on_fs, owner(), 6)
    total = len(list(migrate_store.referenced(on_fs.repo)))

    def interrupt(event: str, progress: migrate_store.Progress) -> None:
        if progress.copied == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate_store.migrate(on_fs.store, s3, on_fs.repo, report=interrupt)
    resumed = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert resumed.skipped >= 3 and resumed.copied == total - resumed.skipped
    assert resumed.missing == 0


def test_a_copy_that_does_not_verify_is_not_committed(on_fs: Services) -> None:
    s3 = other(on_fs, "s3")
    (record,) = upload(on_fs, owner())
    assert record.sha256 is not None and isinstance(on_fs.store, LocalBlobStore)
    on_fs.store.path_for(record.sha256).write_bytes(b"rotten bits")  # the source is damaged
    result = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert record.sha256 in result.failed and result.missing >= 1
    assert not s3.exists(record.sha256)


def test_the_reverse_direction(on_fs: Services) -> None:
    s3 = other(on_fs, "s3")
    who = owner()
    records = upload(on_fs, who, 3)
    assert migrate_store.migrate(on_fs.store, s3, on_fs.repo).missing == 0
    back = other(on_fs, "fs")
    for record in records:
        assert record.sha256 is not None
        back.delete(record.sha256)  # the volume lost them
    result = migrate_store.migrate(s3, back, on_fs.repo)
    assert result.missing == 0 and result.copied >= 3
    assert all(readable(back, r.sha256) for r in records if r.sha256)


def test_the_command_reports_json_lines_and_its_dry_run(on_fs: Services, tmp_path: Path) -> None:
    upload(on_fs, owner(), 2)
    config = on_fs.config
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    env.update(service_env(config.require_database_url()))
    env.update(
        {
            "MEDIA_DATA_DIR": str(config.data_dir),
            "MEDIA_S3_BUCKET": config.s3_bucket or "",
            "MEDIA_S3_ENDPOINT_URL": config.s3_endpoint_url or "",
            "MEDIA_S3_PREFIX": config.s3_prefix,
            "MEDIA_S3_REGION": "us-east-1",
        }
    )
    command = [sys.executable, "-m", "common.migrate_store", "--from", "fs", "--to", "s3"]
    dry = subprocess.run(
        [*command, "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    assert dry.returncode == 1 and lines[-1]["event"] == "compared" and lines[-1]["missing"] >= 2
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "compared" and events[-1]["missing"] == 0
    assert any(e["event"] == "progress" and e["copied"] >= 2 for e in events)
    again = subprocess.run(
        [*command, "--dry-run"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[-1])["missing"] == 0
    same = subprocess.run(
        [*command[:-1], "fs"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert same.returncode == 2 and "the same store" in same.stderr
