"""Presigned uploads against the in-memory repository and blob store."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import replace
from typing import Any

import pytest

from common import media, presigned
from common.problems import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    LengthRequired,
    MalformedUpload,
    PayloadTooLarge,
    UnprocessableContent,
    UnsupportedMediaType,
    UploadMismatch,
)
from common.records import ListQuery, MediaRecord
from common.services import Services
from common.signing import KeyRing
from common.tokens import DELETE, READ, WRITE, Principal
from tests.factories import elf, jpeg, memory_services, png

ALICE = Principal("alice", frozenset({READ, WRITE, DELETE}))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def svc() -> Services:
    return memory_services(
        clock=Clock(), MEDIA_MAX_UPLOAD_BYTES="1000000", MEDIA_PUBLIC_BASE_URL="https://m.example"
    )


def sign(svc: Services, data: bytes, kind: str = "image/png", **extra: Any) -> presigned.PresignedUpload:
    body = {"filename": "dish.png", "content_type": kind, "size": len(data), **extra}
    return presigned.presign(svc, ALICE, body)


def token_of(upload: presigned.PresignedUpload) -> str:
    return upload.url.rsplit("/", 1)[1]


def put(svc: Services, upload: presigned.PresignedUpload, data: bytes, **overrides: Any) -> MediaRecord:
    args: dict[str, Any] = {"content_type": upload.headers["Content-Type"], "content_length": len(data)}
    args.update(overrides)
    return presigned.complete_upload(
        svc, token_of(upload), args["content_type"], args["content_length"], io.BytesIO(data)
    )


def test_presign_creates_a_pending_record_and_a_put_url(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    assert upload.url.startswith("https://m.example/media/uploads/v1.")
    assert upload.headers == {"Content-Type": "image/png"}
    assert upload.record.status == "pending" and upload.record.sha256 is None
    assert upload.expires_at.timestamp() == svc.clock() + svc.config.presign_ttl_seconds
    doc = presigned.presigned_json(upload)
    assert doc["method"] == "PUT" and doc["fields"] == {} and doc["media_id"] == str(upload.record.id)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"filename": "a.svg", "content_type": "image/svg+xml", "size": 10}, UnsupportedMediaType),
        ({"filename": "a.png", "content_type": "image/png", "size": 1_000_001}, PayloadTooLarge),
        ({"filename": "a.png", "content_type": "image/png", "size": 0}, UnprocessableContent),
        ({"filename": "a.png", "content_type": "image/png", "size": "10"}, UnprocessableContent),
        ({"filename": "a.png", "content_type": "image/png", "size": True}, UnprocessableContent),
        ({"filename": "", "content_type": "image/png", "size": 10}, UnprocessableContent),
        ({"filename": "a.png", "content_type": "png", "size": 10}, UnprocessableContent),
        (
            {"filename": "a.png", "content_type": "image/png", "size": 10, "sha256": "xyz"},
            UnprocessableContent,
        ),
        ({"content_type": "image/png", "size": 10}, UnprocessableContent),
        (["not", "an", "object"], UnprocessableContent),
    ],
)
def test_presign_checks_the_policy_before_any_byte(
    svc: Services, body: Any, problem: type[Exception]
) -> None:
    with pytest.raises(problem):
        presigned.presign(svc, ALICE, body)
    assert svc.repo.list_media(ListQuery(owner=None, limit=10)) == []


def test_presign_needs_write_scope(svc: Services) -> None:
    with pytest.raises(Exception, match="media:write"):
        presigned.presign(
            svc, Principal("r", frozenset({READ})), {"filename": "a", "content_type": "image/png", "size": 1}
        )


def test_put_stores_the_bytes_and_makes_the_record_ready(svc: Services) -> None:
    data = png()
    upload = sign(svc, data, sha256=hashlib.sha256(data).hexdigest())
    record = put(svc, upload, data)
    assert record.status == "ready" and record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.id == upload.record.id and record.size == len(data)
    assert svc.store.open(record.sha256).read() == data


def test_a_replayed_put_is_409(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    put(svc, upload, data)
    with pytest.raises(Conflict, match="already complete"):
        put(svc, upload, data)


def test_an_expired_url_is_410(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    svc.clock.now += svc.config.presign_ttl_seconds  # type: ignore[attr-defined]
    with pytest.raises(Gone):
        put(svc, upload, data)


def test_a_url_for_a_removed_record_is_410(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    media.delete(svc, ALICE, str(upload.record.id))
    with pytest.raises(Gone):
        put(svc, upload, data)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"content_length": None}, LengthRequired),
        ({"content_length": 1}, BadRequest),
        ({"content_type": "image/jpeg"}, UnsupportedMediaType),
        ({"content_type": None}, UnsupportedMediaType),
    ],
)
def test_header_mismatches_store_nothing_and_leave_the_url_usable(
    svc: Services, overrides: dict[str, Any], problem: type[Exception]
) -> None:
    data = png()
    upload = sign(svc, data)
    with pytest.raises(problem):
        put(svc, upload, data, **overrides)
    assert svc.store.blobs == {}  # type: ignore[attr-defined]
    assert svc.repo.get(upload.record.id).status == "pending"  # type: ignore[union-attr]
    assert put(svc, upload, data).status == "ready"


def test_a_body_shorter_than_signed_is_400_and_retryable(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    with pytest.raises(MalformedUpload):
        presigned.complete_upload(svc, token_of(upload), "image/png", len(data), io.BytesIO(data[:-10]))
    assert svc.store.blobs == {}  # type: ignore[attr-defined]
    assert put(svc, upload, data).status == "ready"


@pytest.mark.parametrize(
    ("make_body", "declare_sha", "problem"),
    [
        (lambda good: elf()[: len(good)].ljust(len(good), b"\0"), False, UploadMismatch),  # magic says ELF
        (lambda good: jpeg()[: len(good)].ljust(len(good), b"\0"), False, UploadMismatch),  # magic says JPEG
        (lambda good: good[:-1] + bytes([good[-1] ^ 1]), True, UploadMismatch),  # digest differs
        (lambda good: good + b"extra", False, UploadMismatch),  # longer than signed
    ],
)
def test_bytes_that_contradict_the_signature_fail_the_record(
    svc: Services, make_body: Any, declare_sha: bool, problem: type[Exception]
) -> None:
    good = png()
    extra = {"sha256": hashlib.sha256(good).hexdigest()} if declare_sha else {}
    upload = sign(svc, good, **extra)
    bad = make_body(good)
    with pytest.raises(problem):
        presigned.complete_upload(svc, token_of(upload), "image/png", len(good), io.BytesIO(bad))
    record = svc.repo.get(upload.record.id)
    assert record is not None and record.status == "failed" and record.failure_reason
    assert svc.store.blobs == {}  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="failed"):
        put(svc, upload, good)


def test_a_token_for_someone_elses_record_is_refused(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    record = svc.repo.get(upload.record.id)
    assert record is not None
    svc.repo.rows[record.id] = replace(record, owner="bob")  # type: ignore[attr-defined]
    with pytest.raises(Gone):
        put(svc, upload, data)


def test_a_forged_token_is_403(svc: Services) -> None:
    data = png()
    upload = sign(svc, data)
    other = KeyRing("attacker-" + "a" * 40)
    from common.signing import UploadGrant, issue_upload_token

    forged = issue_upload_token(
        other, UploadGrant(upload.record.id, "alice", len(data), "image/png", None, 2**40)
    )
    with pytest.raises(Forbidden):
        presigned.complete_upload(svc, forged, "image/png", len(data), io.BytesIO(data))
    with pytest.raises(Forbidden):
        presigned.complete_upload(svc, "v1.x.y.z", "image/png", len(data), io.BytesIO(data))
    assert uuid.UUID(str(upload.record.id))
