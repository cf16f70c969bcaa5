"""The integrity scrub against real PostgreSQL (a database of the test's own: the scrub walks every
row) and a real store, the volume on tmp_path or a bucket on moto's S3 server: a blob whose bytes
rotted is found, quarantined, its records marked corrupt and its content answers 410; the others
are untouched. And the command, as a process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from common import scrub
from common.cas import BlobStore
from common.localstore import LocalBlobStore
from common.records import CORRUPT_REASON, ScrubState
from common.s3store import S3BlobStore
from common.services import Services, build_services
from tests.conftest import s3_env
from tests.factories import bearer, png, token, upload_body
from tests.support import ROOT, api_client, make_config, service_env


@pytest.fixture(params=["fs", "s3"])
def svc(request: pytest.FixtureRequest, own_database: str, tmp_path: Path) -> Iterator[Services]:
    env = s3_env(request.getfixturevalue("s3")) if request.param == "s3" else {}
    services = build_services(
        make_config(tmp_path / "data", own_database, MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0", **env),
        background=False,
    )
    yield services
    services.repo.close()


def rot(store: BlobStore, sha256: str) -> bytes:
    """Flip one byte of the stored blob behind the store's back; return the rotten bytes."""
    with store.open(sha256) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    if isinstance(store, LocalBlobStore):
        with open(store.path_for(sha256), "r+b") as f:  # in place: the same inode, the same size
            f.seek(len(data) // 2)
            f.write(bytes([data[len(data) // 2]]))
    else:
        assert isinstance(store, S3BlobStore)
        store.client.put_object(Bucket=store.bucket, Key=store.key_for(sha256), Body=bytes(data))
    return bytes(data)


def upload_three(svc: Services, tok: str) -> list[dict[str, Any]]:
    api = api_client(svc)
    docs = []
    for _ in range(3):
        body, ctype = upload_body(png(48, 48))
        resp = api.post("/media", data=body, content_type=ctype, headers=bearer(tok))
        assert resp.status_code == 201, resp.get_data(as_text=True)
        docs.append(resp.get_json())
    return docs


def read(store: BlobStore, sha256: str) -> bytes:
    with store.open(sha256) as f:
        return f.read()


def test_a_rotten_variant_is_quarantined_and_made_again(svc: Services) -> None:
    """A variant can be made anew, unlike an original: its rows go, its job is pending again (the
    original is served meanwhile, never a missing blob), and the drain makes it again."""
    from common import imaging, processing
    from tests.factories import photo

    api = api_client(svc)
    tok = token()
    body, ctype = upload_body(photo(700, 500), "dish.jpg")
    doc = api.post("/media", data=body, content_type=ctype, headers=bearer(tok)).get_json()
    assert processing.drain(svc).done == 1
    made = svc.repo.processing_of(doc["sha256"], imaging.RECIPE)
    assert made is not None and made.state == "done"
    victim = next(v for v in made.variants if (v.format, v.width) == ("webp", 640))
    rot(svc.store, victim.sha256)

    assert scrub.check_blob(svc.store, svc.repo, victim.sha256)[0] == "mismatch"
    assert not svc.store.exists(victim.sha256)
    state = svc.repo.processing_of(doc["sha256"], imaging.RECIPE)
    assert state is not None and state.state == "pending"
    served = api.get(f"/media/{doc['id']}/content?w=640&format=webp", headers=bearer(tok))
    assert served.status_code == 200 and served.data == read(svc.store, doc["sha256"])  # the original
    meta = api.get(f"/media/{doc['id']}", headers=bearer(tok)).get_json()
    assert meta["status"] == "ready" and meta["processing"] == "pending"  # the record is not corrupt

    assert processing.drain(svc).done == 1
    again = svc.repo.processing_of(doc["sha256"], imaging.RECIPE)
    assert again is not None and again.state == "done"
    remade = next(v for v in again.variants if (v.format, v.width) == ("webp", 640))
    found = svc.store.verify(remade.sha256)
    assert found is not None and found.matches(remade.sha256)
    served = api.get(f"/media/{doc['id']}/content?w=640&format=webp", headers=bearer(tok))
    assert served.status_code == 200 and served.headers["Content-Type"] == "image/webp"


def test_a_rotten_blob_is_quarantined_and_its_content_answers_410(svc: Services) -> None:
    tok = token()
    docs = upload_three(svc, tok)
    victim, *others = docs
    kept = {d["sha256"]: read(svc.store, d["sha256"]) for d in others}
    rotten = rot(svc.store, victim["sha256"])
    before = REGISTRY.get_sample_value("media_scrub_mismatches_total") or 0.0

    report = scrub.scrub_round(svc.config, svc.store, svc.repo, budget=10**12)

    assert report.mismatches == [victim["sha256"]] and report.checked == 3 and report.pass_finished
    assert (REGISTRY.get_sample_value("media_scrub_mismatches_total") or 0.0) == before + 1
    assert not svc.store.exists(victim["sha256"])
    if isinstance(svc.store, LocalBlobStore):
        (quarantined,) = svc.store.quarantined.iterdir()
        assert quarantined.name.startswith(victim["sha256"] + ".") and quarantined.read_bytes() == rotten
    else:
        assert isinstance(svc.store, S3BlobStore)
        key = f"{svc.store.prefix}quarantine/{victim['sha256']}"
        assert svc.store.client.get_object(Bucket=svc.store.bucket, Key=key)["Body"].read() == rotten
    for sha256, data in kept.items():
        assert read(svc.store, sha256) == data

    api = api_client(svc)
    meta = api.get(f"/media/{victim['id']}", headers=bearer(tok)).get_json()
    assert (meta["status"], meta["failure_reason"]) == ("corrupt", CORRUPT_REASON)
    resp = api.get(f"/media/{victim['id']}/content", headers=bearer(tok))
    assert resp.status_code == 410 and resp.headers["Content-Type"] == "application/problem+json"
    assert json.loads(resp.get_data())["type"].endswith("/content-corrupt")
    for d in others:
        got = api.get(f"/media/{d['id']}/content", headers=bearer(tok))
        assert got.status_code == 200 and hashlib.sha256(got.get_data()).hexdigest() == d["sha256"]

    state = svc.repo.scrub_state()  # saved in PostgreSQL
    assert state.cursor == max(d["sha256"] for d in docs) and state.pass_mismatches == 1
    assert state.pass_started_at is not None and state.pass_finished_at is not None
    assert scrub.scrub_round(svc.config, svc.store, svc.repo, budget=10**12).idle

    # the right bytes again: a new, good copy for a new record; the corrupt one stays corrupt
    body, ctype = upload_body(kept_original(victim, rotten))
    again = api.post("/media", data=body, content_type=ctype, headers=bearer(tok))
    assert again.status_code == 201 and again.get_json()["sha256"] == victim["sha256"]
    assert hashlib.sha256(read(svc.store, victim["sha256"])).hexdigest() == victim["sha256"]
    assert svc.repo.mark_corrupt(victim["sha256"], "test") == 1  # only the new, ready record


def kept_original(victim: dict[str, Any], rotten: bytes) -> bytes:
    """The bytes before the flip (flip the same byte back)."""
    data = bytearray(rotten)
    data[len(data) // 2] ^= 0x01
    assert hashlib.sha256(data).hexdigest() == victim["sha256"]
    return bytes(data)


def test_the_state_round_trips_and_the_constraint_takes_corrupt(own_database: str) -> None:
    from common.repository import PgMediaRepository

    repo = PgMediaRepository(own_database, max_size=2)
    try:
        assert repo.scrub_state() == ScrubState()
        state = ScrubState("ab" * 32, None, None, 123, 2)
        repo.save_scrub_state(state)
        assert repo.scrub_state() == state
        assert repo.referenced_totals() == (0, 0)
    finally:
        repo.close()
    with psycopg.connect(own_database) as conn:
        row = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'media_status_check'"
        ).fetchone()
    assert row is not None
    assert "'corrupt'" in str(row[0])


def test_the_command_shows_a_bar_and_exits_1_on_a_mismatch(own_database: str, tmp_path: Path) -> None:
    svc = build_services(
        make_config(tmp_path / "data", own_database, MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0"),
        background=False,
    )
    try:
        docs = upload_three(svc, token())
        rot(svc.store, docs[2]["sha256"])
    finally:
        svc.repo.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    env.update(service_env(own_database, MEDIA_DATA_DIR=str(tmp_path / "data")))
    command = [sys.executable, "-m", "common.scrub_command"]
    done = subprocess.run(command, env=env, capture_output=True, timeout=120, cwd=ROOT)
    out, err = done.stdout.decode(), done.stderr.decode()  # bytes: keep the \r of the bar
    assert done.returncode == 1, out + err
    assert "\r[" in err and "/s" in err and "ETA" in err and "3/3 blobs" in err
    assert f"blob {docs[2]['sha256']} is corrupt" in err  # the log line, on a line of its own
    assert "blobs checked: 3" in out and "mismatches: 1" in out
    assert f"corrupt (quarantined): {docs[2]['sha256']}" in out
    clean = subprocess.run(
        [*command, "--mib-per-second", "50"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr  # quarantined: nothing left to find
    assert "blobs checked: 2" in clean.stdout and "mismatches: 0" in clean.stdout
