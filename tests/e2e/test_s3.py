"""The service with MEDIA_STORAGE=s3, through `make run`'s process over HTTP, against moto's S3
server on loopback: every operation, dedup across users, redirect downloads, and the object store
freezing in the middle of an upload."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from localdev.harness import MULTIPART_CONTENT_TYPE, GeneratedFile, LocalStack, RunningS3, multipart_stream
from tests.conftest import s3_env
from tests.factories import bearer, png, token
from tests.support import RunningPostgres, needs_freezable, service_env

MiB = 1024 * 1024


def _stack(pg: RunningPostgres, s3: RunningS3, tmp: Any, **extra: str) -> LocalStack:
    env = service_env(pg.url, **{**s3_env(s3), "MEDIA_MAX_UPLOAD_BYTES": str(64 * MiB), **extra})
    return LocalStack(data_dir=tmp, env=env).start()


@pytest.fixture(scope="module")
def on_s3(
    pg: RunningPostgres, s3: RunningS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    running = _stack(pg, s3, tmp_path_factory.mktemp("s3"))
    yield running
    assert running.stop() == 0, running.log()


def bucket_of(stack: LocalStack) -> str:
    return stack.env["MEDIA_S3_BUCKET"]


def blob_keys(s3: RunningS3, bucket: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="media/sha256/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_every_operation_on_s3_and_dedup_across_users(on_s3: LocalStack, s3: RunningS3) -> None:
    alice, bob = token("alice-s3"), token("bob-s3")
    data = png(300, 200)
    digest = hashlib.sha256(data).hexdigest()
    up = requests.post(
        on_s3.base + "/media",
        headers=bearer(alice),
        files={"file": ("soup.png", data, "image/png")},
        timeout=30,
    )
    assert up.status_code == 201, up.text
    doc = up.json()
    assert doc["sha256"] == digest

    # Bob uploads the same bytes through a presigned URL (what a browser does).
    grant = requests.post(
        on_s3.base + "/media/uploads",
        headers=bearer(bob),
        json={"filename": "same.png", "content_type": "image/png", "size": len(data), "sha256": digest},
        timeout=30,
    ).json()
    put = requests.put(grant["url"], data=data, headers=grant["headers"], timeout=30)
    assert put.status_code == 200, put.text
    assert blob_keys(s3, bucket_of(on_s3)) == [
        f"media/sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    ]  # one blob

    content = f"{on_s3.base}/media/{doc['id']}/content"
    part = requests.get(content, headers={**bearer(alice), "Range": "bytes=100-1099"}, timeout=30)
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    whole = requests.get(content, headers=bearer(alice), timeout=30)
    assert whole.status_code == 200 and whole.content == data
    again = requests.get(
        content, headers={**bearer(alice), "If-None-Match": whole.headers["ETag"]}, timeout=30
    )
    assert again.status_code == 304 and again.content == b""
    linked = requests.get(doc["url"], timeout=30)  # the signed link, no token
    assert linked.status_code == 200 and linked.content == data

    assert (
        requests.delete(f"{on_s3.base}/media/{doc['id']}", headers=bearer(alice), timeout=30).status_code
        == 204
    )
    assert blob_keys(s3, bucket_of(on_s3)) != []  # Bob's record still references the bytes
    bob_id = grant["media_id"]
    bob_got = requests.get(f"{on_s3.base}/media/{bob_id}/content", headers=bearer(bob), timeout=30)
    assert bob_got.status_code == 200 and bob_got.content == data
    assert requests.delete(f"{on_s3.base}/media/{bob_id}", headers=bearer(bob), timeout=30).status_code == 204
    assert blob_keys(s3, bucket_of(on_s3)) == []  # the last reference took the blob with it
    ready = requests.get(on_s3.base + "/health/ready", timeout=30).json()
    assert ready["status"] == "ready"


def test_redirect_downloads_check_access_first_and_hand_out_a_presigned_get(
    pg: RunningPostgres, s3: RunningS3, tmp_path: Any
) -> None:
    stack = _stack(pg, s3, tmp_path, MEDIA_S3_DOWNLOAD="redirect")
    try:
        tok = token("redirected")
        data = png(120, 90)
        doc = requests.post(
            stack.base + "/media",
            headers=bearer(tok),
            files={"file": ("a b.png", data, "image/png")},
            timeout=30,
        ).json()
        content = f"{stack.base}/media/{doc['id']}/content"
        moved = requests.get(content, headers=bearer(tok), allow_redirects=False, timeout=30)
        assert moved.status_code == 307
        location = moved.headers["Location"]
        assert location.startswith(s3.endpoint + "/") and "X-Amz-Signature=" in location
        assert "response-content-disposition=" in location and "response-content-type=image%2Fpng" in location
        assert "response-cache-control=private" in location
        assert moved.headers["Cache-Control"] == "no-store"
        fetched = requests.get(location, timeout=30)
        assert fetched.status_code == 200 and fetched.content == data
        # The bucket answers with the headers the function would have sent had it streamed.
        assert fetched.headers["Content-Type"] == "image/png"
        assert fetched.headers["Cache-Control"] == "private, max-age=31536000, immutable"
        assert (
            "a b.png" in fetched.headers["Content-Disposition"]
            or "a%20b.png" in fetched.headers["Content-Disposition"]
        )
        ranged = requests.get(location, headers={"Range": "bytes=0-99"}, timeout=30)
        assert ranged.status_code == 206 and ranged.content == data[:100]
        # The checks come first: no token, someone else's token, a 304, HEAD.
        assert requests.get(content, allow_redirects=False, timeout=30).status_code == 401
        other = requests.get(content, headers=bearer(token("stranger")), allow_redirects=False, timeout=30)
        assert other.status_code == 404
        etag = f'"{doc["sha256"]}"'
        cached = requests.get(
            content, headers={**bearer(tok), "If-None-Match": etag}, allow_redirects=False, timeout=30
        )
        assert cached.status_code == 304
        followed = requests.get(content, headers=bearer(tok), timeout=30)  # what a client does
        assert followed.status_code == 200 and followed.content == data
    finally:
        assert stack.stop() == 0, stack.log()


def _post_until_answered(
    base: str, tok: str, chunks: Iterator[bytes], length: int
) -> tuple[int, str, bytes, float]:
    """Stream a multipart upload; the service may answer (and close) before the body ends."""
    conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=60)
    started = time.monotonic()
    try:
        conn.putrequest("POST", "/media")
        for name, value in {
            **bearer(tok),
            "Content-Type": MULTIPART_CONTENT_TYPE,
            "Content-Length": str(length),
        }.items():
            conn.putheader(name, value)
        conn.endheaders()
        try:
            for chunk in chunks:
                conn.send(chunk)
        except OSError:
            pass  # answered early and closed: read the answer
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read(), time.monotonic() - started
    finally:
        conn.close()


def test_the_object_store_frozen_mid_upload_is_a_503_and_leaves_nothing(
    pg: RunningPostgres, s3: RunningS3, tmp_path: Any
) -> None:
    needs_freezable(s3)
    stack = _stack(
        pg,
        s3,
        tmp_path,
        MEDIA_S3_TIMEOUT_SECONDS="1",
        MEDIA_TEMP_MAX_AGE_SECONDS="2",
        MEDIA_TEMP_SWEEP_INTERVAL_SECONDS="1",
    )
    bucket = bucket_of(stack)
    try:
        tok = token("frozen-s3")
        big = GeneratedFile(40 * MiB)
        length = sum(len(c) for c in multipart_stream(GeneratedFile(big.size)))
        sent = 0

        def body() -> Iterator[bytes]:
            nonlocal sent
            for chunk in multipart_stream(big):
                if sent >= 12 * MiB and sent - len(chunk) < 12 * MiB:
                    # A part is in the store: the multipart upload exists. Now it stops answering.
                    deadline = time.monotonic() + 10
                    while not s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads"):
                        assert time.monotonic() < deadline, "no multipart upload began"
                        time.sleep(0.05)
                    s3.freeze()
                sent += len(chunk)
                yield chunk

        try:
            status, content_type, answer, seconds = _post_until_answered(stack.base, tok, body(), length)
        finally:
            s3.thaw()
        assert status == 503, answer[:300]
        assert content_type == "application/problem+json"
        assert json.loads(answer)["status"] == 503 and "object store" in json.loads(answer)["detail"]
        assert seconds < 30
        listed = requests.get(stack.base + "/media", headers=bearer(tok), timeout=30).json()
        assert listed["items"] == []  # no record
        deadline = time.monotonic() + 20
        while s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert time.monotonic() < deadline, "the maintenance left the multipart upload behind"
            time.sleep(0.3)
        leftovers = s3.client().list_objects_v2(Bucket=bucket, Prefix="media/").get("Contents", [])
        assert leftovers == []
        # And the service works again, once the circuit breaker's cooldown (the 1 s timeout) after
        # the last silent call has passed: until then an upload is a fast 503 "retry shortly".
        deadline = time.monotonic() + 10
        while True:
            again = requests.post(
                stack.base + "/media",
                headers=bearer(tok),
                files={"file": ("a.png", png(), "image/png")},
                timeout=30,
            )
            if again.status_code == 201:
                break
            assert again.status_code == 503, again.text
            assert again.headers["Content-Type"] == "application/problem+json"
            assert time.monotonic() < deadline, f"still refused: {again.text}"
            time.sleep(0.2)
    finally:
        assert stack.stop() == 0, stack.log()
