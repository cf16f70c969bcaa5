"""Usage counters, quotas and erasure against real PostgreSQL and a real store (volume and S3)."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from werkzeug.test import Client

from common import accounts, erasure, imaging, maintenance, media, presigned, processing
from common.config import Config
from common.problems import QuotaExceeded, UploadMismatch
from common.quota import Limits
from common.records import ListQuery
from common.services import Services, build_services
from common.tokens import ADMIN, DELETE, READ, WRITE, Principal
from tests import support
from tests.factories import PUBLIC_BASE, bearer, photo, png, token, upload_body
from tests.support import stored_blobs


def post(api: Client, tok: str, data: bytes) -> dict[str, Any]:
    body, ctype = upload_body(data)
    resp = api.post("/media", data=body, content_type=ctype, headers=bearer(tok))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    doc: dict[str, Any] = resp.get_json()
    return doc


def erase(api: Client, tok: str, subject: str = "me") -> dict[str, Any]:
    """DELETE /users/{subject}/media, then its status URL until done (bounded)."""
    resp = api.delete(f"/users/{subject}/media", headers=bearer(tok))
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job: dict[str, Any] = resp.get_json()
    assert resp.headers["Location"] == job["links"]["self"] == f"{PUBLIC_BASE}/erasures/{job['id']}"
    deadline = time.monotonic() + 30
    while job["state"] != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
        job = api.get(f"/erasures/{job['id']}", headers=bearer(tok)).get_json()
    assert job["state"] == "done", job
    return job


def test_erasing_a_user_keeps_what_another_user_also_uploaded(api: Client, services: Services) -> None:
    alice, bob = f"alice-{time.time_ns()}", f"bob-{time.time_ns()}"
    a_tok, b_tok = token(alice), token(bob)
    shared, own, other = png(30, 30), png(31, 31), png(32, 32)
    post(api, a_tok, shared)
    post(api, a_tok, own)
    post(api, a_tok, own)  # her own bytes twice: one blob, two records
    theirs = post(api, b_tok, shared)
    post(api, b_tok, other)
    signed = api.post(
        "/media/uploads",
        json={"filename": "p.png", "content_type": "image/png", "size": 99},
        headers=bearer(a_tok),
    )
    assert signed.status_code == 201
    assert api.get("/users/me/usage", headers=bearer(a_tok)).get_json()["files"] == 3

    job = erase(api, a_tok)

    receipt = job["receipt"]
    assert job["subject"] == alice and job["requested_by"] == alice
    assert (receipt["records_removed"], receipt["blobs_removed"]) == (4, 1)  # 3 ready, 1 pending
    assert receipt["bytes_freed"] == len(own) and receipt["finished_at"] >= receipt["requested_at"]
    assert api.get("/media", headers=bearer(a_tok)).get_json()["items"] == []
    usage = api.get("/users/me/usage", headers=bearer(a_tok)).get_json()
    assert (usage["bytes"], usage["files"]) == (0, 0)
    got = api.get(f"/media/{theirs['id']}/content", headers=bearer(b_tok))
    assert got.status_code == 200 and got.get_data() == shared  # theirs keeps working
    assert theirs["sha256"] in stored_blobs(services.store)
    own_digest = post(api, b_tok, own)["sha256"]  # the erased bytes can be uploaded again
    with services.store.open(own_digest) as f:
        assert f.read() == own


def test_only_the_subject_or_an_admin_erases_and_sees_the_receipt(api: Client, services: Services) -> None:
    victim = f"victim-{time.time_ns()}"
    post(api, token(victim), png(20, 20))
    stranger = token()
    resp = api.delete(f"/users/{victim}/media", headers=bearer(stranger))
    assert resp.status_code == 403 and resp.headers["Content-Type"] == "application/problem+json"
    assert (
        api.delete("/users/me/media", headers=bearer(token(victim, scopes=(READ, WRITE)))).status_code == 403
    )
    assert api.delete("/users/me/media").status_code == 401
    job = erase(api, token("root", scopes=(ADMIN,)), victim)
    assert job["requested_by"] == "root" and job["receipt"]["records_removed"] == 1
    assert api.get(f"/erasures/{job['id']}", headers=bearer(stranger)).status_code == 404
    assert api.get(f"/erasures/{job['id']}", headers=bearer(token(victim))).get_json()["id"] == job["id"]
    assert api.get(f"/users/{victim}/usage", headers=bearer(stranger)).status_code == 403


def _counted(url: str, owners: list[str]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """(the usage table, the same computed by a scan) for these owners."""
    with psycopg.connect(url, row_factory=dict_row, client_encoding="utf8") as conn:
        kept = conn.execute(
            "SELECT owner, bytes, files FROM usage WHERE owner = ANY(%s)", (owners,)
        ).fetchall()
        scanned = conn.execute(
            "SELECT owner, sum(size) AS bytes, count(*) AS files FROM media WHERE owner = ANY(%s)"
            " AND status IN ('ready', 'corrupt') GROUP BY owner",
            (owners,),
        ).fetchall()
    table = {r["owner"]: (int(r["bytes"]), int(r["files"])) for r in kept if r["files"] or r["bytes"]}
    return table, {r["owner"]: (int(r["bytes"]), int(r["files"])) for r in scanned}


def test_the_usage_counters_follow_every_kind_of_change(services: Services) -> None:
    owners = [f"count-{i}-{time.time_ns()}" for i in range(2)]
    alice, bob = (Principal(o, frozenset({READ, WRITE, DELETE})) for o in owners)
    url = services.config.require_database_url()

    def upload(who: Principal, data: bytes) -> Any:
        body, ctype = upload_body(data)
        return media.upload_multipart(services, who, io.BytesIO(body), ctype)

    data = png(25, 25)
    first = upload(alice, data)
    upload(alice, data)  # dedup: counted again
    upload(bob, data)
    signed = presigned.presign(
        services, alice, {"filename": "x.png", "content_type": "image/png", "size": len(data)}
    )
    assert _counted(url, owners)[0] == {owners[0]: (2 * len(data), 2), owners[1]: (len(data), 1)}
    tok = signed.url.rsplit("/", 1)[1]
    done = presigned.complete_upload(services, tok, "image/png", len(data), io.BytesIO(data))
    assert done.status == "ready"
    failing = presigned.presign(services, bob, {"filename": "y.png", "content_type": "image/png", "size": 5})
    with pytest.raises(UploadMismatch):  # the record fails: never counted
        presigned.complete_upload(
            services, failing.url.rsplit("/", 1)[1], "image/png", 5, io.BytesIO(b"GIF89")
        )
    media.delete(services, alice, str(first.id))
    table, scanned = _counted(url, owners)
    assert table == scanned == {owners[0]: (2 * len(data), 2), owners[1]: (len(data), 1)}


def test_ten_concurrent_uploads_near_the_quota_never_pass_it(config_for: Callable[..., Config]) -> None:
    files = [png(40, 40) for _ in range(10)]
    size = max(len(f) for f in files)
    quota = int(size * 5.5)
    services = build_services(config_for(MEDIA_QUOTA_BYTES_PER_USER=str(quota)), background=False)
    who = Principal(f"quota-{time.time_ns()}", frozenset({READ, WRITE}))
    start = threading.Barrier(len(files))
    outcomes: list[str] = []
    limits_seen: list[int | None] = []

    def send(data: bytes) -> None:
        body, ctype = upload_body(data)
        start.wait(10)
        try:
            media.upload_multipart(services, who, io.BytesIO(body), ctype, len(body))
            outcomes.append("stored")
        except QuotaExceeded as exc:
            limits_seen.append(exc.extra["limit"]["bytes"])
            outcomes.append("refused")

    try:
        threads = [threading.Thread(target=send, args=(f,)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        used = services.repo.usage(who.subject)
        kept = services.repo.list_media(ListQuery(owner=who.subject, limit=100))
        assert sorted(outcomes) == ["refused"] * 5 + ["stored"] * 5, outcomes
        assert limits_seen == [quota] * 5
        assert used.bytes == sum(r.size for r in kept) <= quota and used.files == 5
        with psycopg.connect(services.config.require_database_url()) as conn:
            left = conn.execute(
                "SELECT count(*) FROM quota_holds WHERE owner = %s", (who.subject,)
            ).fetchone()
        assert left == (0,)  # every hold settled or released
    finally:
        services.repo.close()


def test_a_lapsed_hold_is_purged_by_the_maintenance(services: Services) -> None:
    """A hold whose process died stops counting at its expiry, and the maintenance forgets it."""
    who = f"lapsed-{time.time_ns()}"
    limits = Limits(10, None)
    assert services.repo.reserve(uuid.uuid4(), who, limits, 1, 5, 5, 0.2).granted == 5
    assert services.repo.reserve(uuid.uuid4(), who, limits, 1, 6, 6, 60).granted is None  # 5 held
    time.sleep(0.3)
    maintenance.maintain(services.config, services.store, services.repo)
    with psycopg.connect(services.config.require_database_url()) as conn:
        left = conn.execute("SELECT count(*) FROM quota_holds WHERE owner = %s", (who,)).fetchone()
    assert left == (0,)
    assert services.repo.reserve(uuid.uuid4(), who, limits, 1, 10, 10, 60).granted == 10


def test_asking_again_joins_the_running_erasure_and_a_later_one_starts_afresh(services: Services) -> None:
    subject = f"again-{time.time_ns()}"
    first = services.repo.start_erasure(subject, subject)
    assert services.repo.start_erasure(subject, "root").id == first.id  # one running per subject
    assert services.repo.claim_erasure(60, first.id) is not None
    assert services.repo.claim_erasure(60, first.id) is None  # leased
    services.repo.release_erasure(first.id)
    assert erasure.run(services.store, services.repo, first.id, time.monotonic() + 10)
    later = services.repo.start_erasure(subject, subject)
    assert later.id != first.id and later.state == "running" and later.records_removed == 0


def test_an_erasure_frees_the_variants_of_the_images_it_removes(own_database: str, tmp_path: Path) -> None:
    services = build_services(support.make_config(tmp_path / "data", own_database), background=False)
    try:
        alice = Principal(f"cook-{time.time_ns()}", frozenset({READ, WRITE, DELETE}))
        body, ctype = upload_body(photo(900, 600), "dish.jpg")
        record = media.upload_multipart(services, alice, io.BytesIO(body), ctype)
        processing.drain(services)
        made = services.repo.processing_of(record.sha256 or "", imaging.RECIPE)
        assert made is not None and made.state == "done" and made.variants
        before = set(stored_blobs(services.store))
        assert {v.sha256 for v in made.variants} <= before

        job = accounts.request_erasure(services, alice, "me")

        assert job.state == "done" and job.records_removed == 1
        assert job.blobs_removed == 1 + len(made.variants)
        assert job.bytes_freed == record.size + sum(v.size for v in made.variants)
        assert stored_blobs(services.store) == []
        assert services.repo.processing_of(record.sha256 or "", imaging.RECIPE) is None
    finally:
        services.repo.close()
