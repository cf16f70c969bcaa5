"""The online migration between the stores (`common.migrate_store`), with real PostgreSQL, the
volume on tmp_path and a bucket on moto's S3 server: uploads and deletes during the copy, an
interruption and a resume, copies that do not verify (a damaged source, a committed copy that reads
back wrong, a held copy of the wrong size), records the scrub quarantined, both directions, and the
command (its JSON lines, its dry run, its exit status when interrupted)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import media, migrate_store, scrub
from common.cas import BlobStore, BlobWriter
from common.localstore import LocalBlobStore
from common.records import ListQuery, MediaRecord, VariantRow
from common.repository import MediaRepository
from common.s3store import S3BlobStore
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
    during: list[tuple[float, MediaRecord]] = []  # (when it was committed, the record)
    events: list[tuple[float, str, int]] = []  # the migration's reports: (when, event, copied)
    deleted: list[MediaRecord] = []
    one_committed = threading.Event()
    stop = threading.Event()

    def keep_uploading() -> None:  # a client of the running service, meanwhile
        while not stop.is_set() and len(during) < 40:
            (record,) = upload(on_fs, who)
            during.append((time.monotonic(), record))
            one_committed.set()

    def report(event: str, progress: migrate_store.Progress) -> None:
        events.append((time.monotonic(), event, progress.copied))
        if event == "progress" and progress.done == 3 and not deleted:
            media.delete(on_fs, who, str(doomed.id))  # deleted before its turn came
            deleted.append(doomed)
            one_committed.wait(30)  # the copy goes on once an upload has landed meanwhile

    uploader = threading.Thread(target=keep_uploading)
    uploader.start()
    try:
        first = migrate_store.migrate(on_fs.store, s3, on_fs.repo, report=report)
    finally:
        stop.set()
        uploader.join(60)
    assert not first.failed and first.copied >= 11 and first.gone >= 1
    # The uploads overlapped the copy: some were committed after it started and before its first
    # comparison listed the digests, so that comparison found them and a round copied them.
    started = events[0][0]
    compared = next(at for at, event, _ in events if event == "compared")
    overlapping = [r for at, r in during if started < at < compared]
    assert overlapping, f"no upload landed during the copy: {[at for at, _ in during]}, {events[:2]}"
    copied_by_the_first = set(stored_blobs(s3))
    assert all(r.sha256 in copied_by_the_first for r in overlapping)
    assert first.copied >= len(before) - 1 + len(overlapping)  # none of those was listed at first
    # What arrived after the last comparison is copied by running it again (the documented step).
    final = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert final.missing == 0 and not final.failed
    records = on_fs.repo.list_media(ListQuery(owner=who.subject, limit=500))
    digests = {r.sha256 for r in records if r.sha256}
    assert {r.sha256 for _, r in during} <= digests
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
    total = len(migrate_store.referenced(on_fs.repo)[0])

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


class RottingS3(S3BlobStore):
    """The bucket, but the objects of `rotten` rot as soon as they are committed (one byte flipped,
    same size): only reading the committed copy back can tell."""

    def __init__(self, base: S3BlobStore, rotten: set[str]) -> None:
        super().__init__(base.client, base.bucket, base.prefix)
        self.rotten = rotten

    def commit(self, writer: BlobWriter) -> bool:
        sha256 = writer.finish().sha256
        dedup = super().commit(writer)
        if sha256 in self.rotten:
            key = self.key_for(sha256)
            data = bytearray(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            data[len(data) // 2] ^= 0xFF
            self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))
        return dedup


def test_a_committed_copy_that_reads_back_wrong_is_removed_and_failed(on_fs: Services) -> None:
    bucket = other(on_fs, "s3")
    assert isinstance(bucket, S3BlobStore)
    bad, good = upload(on_fs, owner(), 2)
    assert bad.sha256 is not None and good.sha256 is not None
    s3 = RottingS3(bucket, {bad.sha256})
    result = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert result.failed == [bad.sha256] and result.missing == 1
    assert not bucket.exists(bad.sha256)  # no bad copy left behind
    assert readable(on_fs.store, bad.sha256)  # the source's copy untouched
    assert readable(bucket, good.sha256)
    s3.rotten.clear()  # the fault has passed: the next run copies it
    again = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert again.copied == 1 and again.missing == 0 and not again.failed
    assert readable(bucket, bad.sha256)


def test_a_held_copy_of_the_wrong_size_fails_and_is_copied_again(on_fs: Services) -> None:
    s3 = other(on_fs, "s3")
    assert isinstance(s3, S3BlobStore)
    (record,) = upload(on_fs, owner())
    assert record.sha256 is not None
    with on_fs.store.open(record.sha256) as f:
        truncated = f.read()[:-100]  # a copy cut short (say by an earlier tool)
    s3.client.put_object(Bucket=s3.bucket, Key=s3.key_for(record.sha256), Body=truncated)
    result = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert result.failed == [record.sha256] and result.skipped == 0
    assert result.missing == 0 and readable(s3, record.sha256)  # removed, then copied afresh


def test_a_record_the_scrub_quarantined_does_not_keep_the_migration_from_ending(on_fs: Services) -> None:
    s3 = other(on_fs, "s3")
    rotten, fine = upload(on_fs, owner(), 2)
    assert rotten.sha256 is not None and fine.sha256 is not None
    assert isinstance(on_fs.store, LocalBlobStore)
    path = on_fs.store.path_for(rotten.sha256)
    path.write_bytes(path.read_bytes()[::-1])  # the bytes rotted on the volume
    assert scrub.full_pass(on_fs.store, on_fs.repo).mismatches == [rotten.sha256]
    assert on_fs.repo.statuses_of(rotten.sha256) == {"corrupt": 1} and not path.exists()
    result = migrate_store.migrate(on_fs.store, s3, on_fs.repo)
    assert result.missing == 0 and not result.failed and result.quarantined == 1
    assert stored_blobs(s3) == [fine.sha256]
    dry = migrate_store.migrate(on_fs.store, s3, on_fs.repo, dry_run=True)
    assert dry.missing == 0 and dry.quarantined == 1


def test_a_digest_is_quarantined_only_while_no_ready_record_or_variant_uses_it(on_fs: Services) -> None:
    alone, shared, variant = upload(on_fs, owner(), 3)
    assert alone.sha256 and shared.sha256 and variant.sha256
    for record in (alone, shared, variant):
        on_fs.repo.mark_corrupt(record.sha256 or "")
    with on_fs.store.open(shared.sha256) as f:
        body, ctype = upload_body(f.read())
    media.upload_multipart(on_fs, owner(), io.BytesIO(body), ctype)  # a ready record of those bytes
    with on_fs.repo.digest_scope(alone.sha256) as scope:  # a variant of `alone` has `variant`'s bytes
        scope.enqueue_processing(alone.sha256, 999, "image/png", alone.id)
        assert scope.add_variant(alone.sha256, 999, VariantRow("webp", 16, 16, 10, variant.sha256))
    digests = [alone.sha256, shared.sha256, variant.sha256, "f" * 64]
    assert on_fs.repo.corrupt_only(digests) == {alone.sha256}


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


def test_the_command_returns_130_when_interrupted(
    on_fs: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upload(on_fs, owner(), 3)
    config = on_fs.config
    for name in [k for k in os.environ if k.startswith("MEDIA_")]:
        monkeypatch.delenv(name)
    for name, value in {
        **service_env(config.require_database_url()),
        "MEDIA_DATA_DIR": str(config.data_dir),
        "MEDIA_S3_BUCKET": config.s3_bucket or "",
        "MEDIA_S3_ENDPOINT_URL": config.s3_endpoint_url or "",
        "MEDIA_S3_PREFIX": config.s3_prefix,
        "MEDIA_S3_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    real = migrate_store.copy_one
    calls: list[str] = []

    def copy_then_ctrl_c(
        source: BlobStore, destination: BlobStore, repo: MediaRepository, sha256: str
    ) -> tuple[migrate_store.Outcome, int]:
        calls.append(sha256)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second copy
        return real(source, destination, repo, sha256)

    monkeypatch.setattr(migrate_store, "copy_one", copy_then_ctrl_c)
    assert migrate_store.main(["--from", "fs", "--to", "s3"]) == 130
    out, err = capsys.readouterr()
    last = json.loads(out.splitlines()[-1])
    assert last["event"] == "interrupted" and last["copied"] == 1 and last["done"] == 1
    assert "interrupted after 1 copied" in err and "run the same command again to resume" in err
    assert stored_blobs(other(on_fs, "s3")) == [calls[0]]
