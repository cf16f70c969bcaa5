"""The S3 store's own decisions, without a server: which answers count as errors, and what a
multipart upload that vanished under its writer becomes. botocore's Stubber stands in for the
wire; the behaviour against a real S3 protocol server is in tests/integration/test_store_contract.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from common.config import Config
from common.problems import StorageUnavailable
from common.s3store import PROBE_TIMEOUT_SECONDS, S3BlobStore, failed_call, store_for

PART = 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("operation", "status", "failed"),
    [
        ("PutObject", 200, False),
        ("HeadObject", 404, False),  # "no such blob": a dedup check or a lookup
        ("GetObject", 404, False),
        ("HeadBucket", 404, True),  # no such bucket: misconfigured
        ("PutObject", 403, True),  # AccessDenied
        ("UploadPart", 404, True),  # NoSuchUpload
        ("GetObject", 503, True),  # SlowDown
        ("GetObject", 206, False),
        ("GetObject", 304, False),
    ],
)
def test_which_answers_count_as_errors(operation: str, status: int, failed: bool) -> None:
    assert failed_call(operation, status) is failed


@pytest.fixture
def stubbed() -> Iterator[tuple[S3BlobStore, Stubber]]:
    client = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).client("s3")
    with Stubber(client) as stub:
        yield S3BlobStore(client, "media", part_bytes=PART), stub


def _no_such_upload(stub: Stubber, method: str) -> None:
    stub.add_client_error(method, service_error_code="NoSuchUpload", http_status_code=404)


def test_a_part_for_an_upload_that_was_swept_is_a_503_to_send_again(
    stubbed: tuple[S3BlobStore, Stubber],
) -> None:
    store, stub = stubbed
    stub.add_response("create_multipart_upload", {"UploadId": "u1"}, {"Bucket": "media", "Key": ANY})
    _no_such_upload(stub, "upload_part")
    # nothing follows: no object at the temp key, and no upload left to abort
    with pytest.raises(StorageUnavailable, match="send it again"), store.writer(2 * PART) as writer:
        writer.write(b"x" * PART)
    stub.assert_no_pending_responses()


def test_a_completion_for_an_upload_that_was_swept_is_a_503_to_send_again(
    stubbed: tuple[S3BlobStore, Stubber],
) -> None:
    store, stub = stubbed
    stub.add_response("create_multipart_upload", {"UploadId": "u1"}, {"Bucket": "media", "Key": ANY})
    stub.add_response("upload_part", {"ETag": '"e1"'})
    stub.add_response("upload_part", {"ETag": '"e2"'})
    _no_such_upload(stub, "complete_multipart_upload")
    with pytest.raises(StorageUnavailable, match="send it again"), store.writer(2 * PART) as writer:
        writer.write(b"x" * PART)
        writer.write(b"y")
        writer.finish()
    stub.assert_no_pending_responses()


def test_other_client_errors_are_not_taken_for_a_swept_upload(stubbed: tuple[S3BlobStore, Stubber]) -> None:
    store, stub = stubbed
    stub.add_response("create_multipart_upload", {"UploadId": "u1"}, {"Bucket": "media", "Key": ANY})
    stub.add_client_error("upload_part", service_error_code="AccessDenied", http_status_code=403)
    stub.add_response("abort_multipart_upload", {})
    with pytest.raises(StorageUnavailable, match="AccessDenied"), store.writer(2 * PART) as writer:
        writer.write(b"x" * PART)
    stub.assert_no_pending_responses()


def test_the_configured_store_has_bounded_clients_for_calls_long_calls_and_the_probe() -> None:
    config = Config.from_env(
        {
            "MEDIA_STORAGE": "s3",
            "MEDIA_S3_BUCKET": "media-bucket",
            "MEDIA_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "MEDIA_S3_REGION": "eu-west-1",
            "MEDIA_S3_PREFIX": "tenant",
            "MEDIA_S3_TIMEOUT_SECONDS": "3",
            "MEDIA_S3_LONG_TIMEOUT_SECONDS": "40",
        }
    )
    store = store_for(config)
    assert (store.bucket, store.prefix) == ("media-bucket", "tenant/")

    def bounds(client: Any) -> tuple[float, float, int]:
        meta = client.meta.config
        return meta.connect_timeout, meta.read_timeout, meta.retries["total_max_attempts"]

    assert bounds(store.client) == (3, 3, 2)
    assert bounds(store.slow_client) == (3, 40, 2)
    assert bounds(store.probe_client) == (PROBE_TIMEOUT_SECONDS, PROBE_TIMEOUT_SECONDS, 1)
    for client in (store.client, store.slow_client, store.probe_client):
        assert client.meta.endpoint_url == "http://127.0.0.1:9"
        assert client.meta.region_name == "eu-west-1"
