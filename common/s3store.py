"""Content-addressable storage in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2...), the
same contract as the volume (`cas.BlobStore`), through boto3.

Keys: `<prefix>sha256/ab/cd/<64 hex>` for blobs, `<prefix>tmp/<label>--<uuid>` for uploads in
flight. Write path: `S3BlobWriter` counts, hashes and keeps the sniff prefix as the volume's writer
does, buffering one part (`MEDIA_S3_PART_BYTES`, at least 8 MiB) at a time: memory stays bounded
whatever the size. The first full part starts a multipart upload to the temp key; a body smaller
than a part is one PutObject. `commit`, called under the digest's lock (see `media.py`), copies the
temp object server-side to its address unless the address already holds an object of the same
size (dedup), then deletes the temp object. Unlike the volume, dedup keeps the existing object (a
copy would cost a server-side rewrite of every deduplicated upload): its bytes are checked by the
integrity scrub (`scrub.py`), which moves an object that no longer matches its digest to
`<prefix>quarantine/<64 hex>`.

Consistency: S3 (and the compatible stores we target) is strongly consistent for reads after
writes and for listings since December 2020, so a HeadObject right after a CopyObject sees the new
key, and a delete is seen by the next HeadObject: the digest lock is all the coordination needed.

Every call has a connect and a read timeout (`MEDIA_S3_TIMEOUT_SECONDS`) and at most two attempts;
a store that does not answer, or answers with a server error, is `StorageUnavailable` (503), and
after a silent failure a circuit breaker refuses at once for the timeout, as for PostgreSQL.
Readiness asks with a client of its own: one attempt, PROBE_TIMEOUT_SECONDS to connect and to
answer. Multipart uploads nobody finishes (the process died, the store went away mid-upload) are
aborted by the maintenance's sweep once their newest part is older than the temp age; a bucket
lifecycle rule (`AbortIncompleteMultipartUpload`, README) is the backstop. A live upload of another
process that slow loses its parts: its writer answers 503 (NoSuchUpload), to be sent again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from common import metrics
from common.breaker import CircuitBreaker
from common.cas import BlobWriter, Hashing, StagedBlob, Verification, check_digest, check_label, rehash
from common.config import Config
from common.problems import BlobMissing, StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

log = logging.getLogger("media.s3")
T = TypeVar("T")

MAX_COPY_BYTES = 5 * 1024**3  # one CopyObject; larger blobs are copied in parts (s3transfer)
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
# Server-side failures worth a 503 (the rest of a 4xx is a bug or a misconfiguration: logged, 503).
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}


# Readiness asks the bucket once, with at most this for the connect and this for the answer: with
# the database's own bound (MEDIA_DB_TIMEOUT_SECONDS, 2 s) it stays inside the probe's 3 s.
PROBE_TIMEOUT_SECONDS = 0.5


def s3_client(
    config: Config,
    read_timeout: float | None = None,
    *,
    timeout: float | None = None,
    attempts: int = 2,
    session: boto3.session.Session,
) -> S3Client:
    """A client with bounded waits; credentials the standard boto3 way (environment, profile,
    web identity / IRSA, instance metadata), never only from our own variables. `read_timeout`:
    for the calls whose time grows with the object (MEDIA_S3_LONG_TIMEOUT_SECONDS); `timeout` and
    `attempts`: the readiness probe's client (`probe_client`). Clients made from one `session`
    share its loaded service model (boto3 sessions are not thread-safe: `store_for` makes them in
    one thread)."""
    connect = timeout or config.s3_timeout_seconds
    boto = BotoConfig(
        connect_timeout=connect,
        read_timeout=read_timeout or connect,
        # total_max_attempts counts the first try; botocore's max_attempts counts only the retries.
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=max(10, config.threads + 4),
        signature_version="s3v4",
        s3={"addressing_style": "path" if config.s3_endpoint_url else "auto"},
    )
    client: S3Client = session.client(
        "s3", endpoint_url=config.s3_endpoint_url, region_name=config.s3_region, config=boto
    )
    _count_requests(client)
    return client


def probe_client(config: Config, session: boto3.session.Session) -> S3Client:
    """The readiness probe's client: one attempt, PROBE_TIMEOUT_SECONDS to connect and to answer."""
    timeout = min(config.s3_timeout_seconds, PROBE_TIMEOUT_SECONDS)
    return s3_client(config, timeout=timeout, attempts=1, session=session)


def store_for(config: Config) -> S3BlobStore:
    """The bucket MEDIA_S3_* names, with its three clients (calls, long calls, the probe) made from
    one boto3 session: each fresh session reads and parses the S3 service model again, ~80 ms a
    client here, which a cold start would pay three times."""
    session = boto3.session.Session()
    return S3BlobStore(
        s3_client(config, session=session),
        config.require_s3_bucket(),
        config.s3_prefix,
        part_bytes=config.s3_part_bytes,
        timeout_seconds=config.s3_timeout_seconds,
        redirect_ttl_seconds=config.s3_redirect_ttl_seconds,
        slow_client=s3_client(config, read_timeout=config.s3_long_timeout_seconds, session=session),
        probe_client=probe_client(config, session),
    )


# A 404 from these is how the store says "no such blob" (a dedup check, a lookup), not a failure.
_LOOKUPS = frozenset({"HeadObject", "GetObject"})


def failed_call(operation: str, status: int) -> bool:
    """An answer counted in media_s3_errors_total: any 4xx or 5xx but a lookup's 404."""
    return status >= 400 and not (status == 404 and operation in _LOOKUPS)


def _count_requests(client: S3Client) -> None:
    """media_s3_requests_total / media_s3_errors_total by operation, from botocore's events."""

    def after_call(http_response: Any, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        metrics.s3_call(operation, failed=failed_call(operation, http_response.status_code))

    def after_error(event_name: str, **_: Any) -> None:  # no answer at all (timeout, refused)
        metrics.s3_call(event_name.rsplit(".", 1)[-1], failed=True)

    client.meta.events.register("after-call.s3", after_call)
    client.meta.events.register("after-call-error.s3", after_error)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3BlobStore:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        part_bytes: int = 8 * 1024 * 1024,
        timeout_seconds: float = 5.0,
        redirect_ttl_seconds: int = 60,
        slow_client: S3Client | None = None,
        probe_client: S3Client | None = None,
    ) -> None:
        self.client = client
        self.probe_client = probe_client or client
        # CompleteMultipartUpload and CopyObject take time in proportion to the object (S3 may
        # take minutes for gigabytes): the same client with a longer read timeout.
        self.slow_client = slow_client or client
        self.bucket = bucket
        self.prefix = prefix
        self.part_bytes = part_bytes
        self.redirect_ttl_seconds = redirect_ttl_seconds
        self._breaker = CircuitBreaker(timeout_seconds)
        self._live: set[str] = set()  # this process's uploads in flight (their temp keys)
        self._live_lock = threading.Lock()

    # --- keys and calls -----------------------------------------------------------------------

    def key_for(self, sha256: str) -> str:
        check_digest(sha256)
        return f"{self.prefix}sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    @property
    def temp_prefix(self) -> str:
        return f"{self.prefix}tmp/"

    def call(self, op: Callable[[], T]) -> T:
        """One S3 call: a silent store or a server error leaves as StorageUnavailable."""
        if not self._breaker.allow():
            raise StorageUnavailable("the object store did not answer just now; retry in a moment")
        try:
            result = op()
        except ClientError as exc:
            code = _code(exc)
            self._breaker.released()
            if code in _MISSING:
                raise
            if code not in _UNAVAILABLE:
                log.error("the object store refused a call: %s", exc)
            raise StorageUnavailable(f"the object store answered {code or 'an error'}") from exc
        except BotoCoreError as exc:  # no answer: connect/read timeout, refused, reset
            self._breaker.failed()
            log.warning("the object store did not answer: %s", exc)
            raise StorageUnavailable(f"the object store did not answer: {exc}") from exc
        except BaseException:
            self._breaker.released()
            raise
        self._breaker.succeeded()
        return result

    def _head(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            head = self.call(lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ClientError:
            return None
        return int(head["ContentLength"])

    # --- the BlobStore contract ---------------------------------------------------------------

    @contextmanager
    def writer(self, max_bytes: int, label: str = "upload") -> Iterator[S3BlobWriter]:
        """Parts to a temp key; aborted or deleted on the way out unless `commit` took them."""
        key = f"{self.temp_prefix}{check_label(label)}--{uuid.uuid4().hex}"
        with self._live_lock:
            self._live.add(key)
        writer = S3BlobWriter(self, key, max_bytes)
        try:
            yield writer
        finally:
            try:
                writer.discard()
            except StorageUnavailable:
                log.warning("could not remove %s now; the sweep will", key)
            finally:
                with self._live_lock:
                    self._live.discard(key)

    def commit(self, writer: BlobWriter) -> bool:
        """Copy the temp object to its address; True (dedup) when an object of the same size is
        there already, which is kept as it is: the scrub, not the upload, checks its bytes."""
        assert isinstance(writer, S3BlobWriter)
        staged = writer.finish()
        final = self.key_for(staged.sha256)
        size = self._head(final)
        if size == staged.size:
            writer.discard()  # dedup: the address already holds these bytes
            return True
        if size is not None:
            log.warning(
                "blob %s had %d bytes instead of %d; replaced by a new upload", final, size, staged.size
            )
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": writer.key}
        if staged.size <= MAX_COPY_BYTES:
            self.call(partial(self.slow_client.copy_object, Bucket=self.bucket, Key=final, CopySource=source))
        else:
            self.call(partial(self.slow_client.copy, source, self.bucket, final))
        writer.discard()
        return False

    def open(self, sha256: str, start: int = 0, length: int | None = None) -> BinaryIO:
        """The bytes from `start` (`length` of them, or to the end): one ranged GetObject."""
        key = self.key_for(sha256)
        if length == 0:
            return io.BytesIO(b"")
        end = "" if length is None else str(start + length - 1)
        get = partial(self.client.get_object, Bucket=self.bucket, Key=key)
        if start or length is not None:
            get = partial(get, Range=f"bytes={start}-{end}")
        try:
            got = self.call(get)
        except ClientError:
            raise BlobMissing(sha256) from None
        return cast(BinaryIO, _Body(got["Body"]))

    def exists(self, sha256: str) -> bool:
        return self._head(self.key_for(sha256)) is not None

    def size(self, sha256: str) -> int | None:
        return self._head(self.key_for(sha256))

    def delete(self, sha256: str) -> None:
        key = self.key_for(sha256)
        self.call(lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def verify(self, sha256: str, pace: Callable[[int], None] | None = None) -> Verification | None:
        """One GetObject of the whole blob, hashed as it streams in `cas.CHUNK` reads."""
        key = self.key_for(sha256)
        try:
            got = self.call(lambda: self.slow_client.get_object(Bucket=self.bucket, Key=key))
        except ClientError:
            return None
        with _Body(got["Body"]) as body:
            return rehash(cast(BinaryIO, body), pace)

    def quarantine(self, sha256: str) -> None:
        """Copy the object to `<prefix>quarantine/<64 hex>`, then delete it from its address."""
        key = self.key_for(sha256)
        size = self._head(key)
        if size is None:
            return
        target = f"{self.prefix}quarantine/{sha256}"
        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": key}
        if size <= MAX_COPY_BYTES:
            self.call(
                partial(self.slow_client.copy_object, Bucket=self.bucket, Key=target, CopySource=source)
            )
        else:
            self.call(partial(self.slow_client.copy, source, self.bucket, target))
        self.call(lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def free_bytes(self) -> int | None:
        return None

    def blobs_older_than(self, seconds: float) -> Iterator[str]:
        # LastModified is listed in whole seconds: a blob may look up to a second older than it is,
        # which the orphan grace (minutes) absorbs.
        cutoff = time.time() - seconds
        for item in self._list(f"{self.prefix}sha256/"):
            name = item["Key"].rsplit("/", 1)[-1]
            if item["LastModified"].timestamp() <= cutoff:
                with contextlib.suppress(ValueError):
                    yield check_digest(name)

    def sweep_temp(self, max_age_seconds: float) -> int:
        """Abort the multipart uploads and remove the temp objects nobody has touched for
        `max_age_seconds` (an upload's age is that of its newest part), except this process's own."""
        return self._remove_temp(self.temp_prefix, time.time() - max_age_seconds)

    def remove_temp(self, label: str) -> int:
        return self._remove_temp(f"{self.temp_prefix}{check_label(label)}--", None)

    def check_writable(self) -> None:
        """A cheap HeadBucket (readiness): the bucket is there and these credentials reach it."""
        try:
            self.call(lambda: self.probe_client.head_bucket(Bucket=self.bucket))
        except ClientError as exc:
            raise StorageUnavailable(f"bucket {self.bucket!r}: {_code(exc) or exc}") from None

    def download_url(
        self, sha256: str, content_type: str, disposition: str, cache_control: str
    ) -> str | None:
        """A presigned GET of the blob that answers with our headers (MEDIA_S3_DOWNLOAD=redirect)."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key_for(sha256),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
                "ResponseCacheControl": cache_control,
            },
            ExpiresIn=self.redirect_ttl_seconds,
        )

    # --- what the sweep and the writer use ----------------------------------------------------

    def _list(self, prefix: str) -> Iterator[Any]:
        token: str | None = None
        while True:
            listing = partial(self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix)
            page = self.call(partial(listing, ContinuationToken=token) if token else listing)
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _uploads(self, prefix: str) -> Iterator[Any]:
        listing = partial(self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=prefix)
        while True:
            page = self.call(listing)
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            listing = partial(
                self.client.list_multipart_uploads,
                Bucket=self.bucket,
                Prefix=prefix,
                KeyMarker=page["NextKeyMarker"],
                UploadIdMarker=page["NextUploadIdMarker"],
            )

    def _last_touched(self, upload: Any) -> float:
        newest: datetime = upload["Initiated"]
        try:
            parts = self.call(
                lambda: self.client.list_parts(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            )
        except ClientError:
            return newest.timestamp()
        for part in parts.get("Parts", []):
            newest = max(newest, part["LastModified"])
        return newest.timestamp()

    def _remove_temp(self, prefix: str, cutoff: float | None) -> int:
        removed = 0
        with self._live_lock:
            live = set(self._live)
        for upload in self._uploads(prefix):
            if upload["Key"] in live or (cutoff is not None and self._last_touched(upload) > cutoff):
                continue
            with contextlib.suppress(ClientError):  # finished or aborted by someone else meanwhile
                self.call(
                    partial(
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                )
                removed += 1
        for item in self._list(prefix):
            if item["Key"] in live or (cutoff is not None and item["LastModified"].timestamp() > cutoff):
                continue
            self.call(partial(self.client.delete_object, Bucket=self.bucket, Key=item["Key"]))
            removed += 1
        return removed


class S3BlobWriter(Hashing):
    """One part in memory at a time; the multipart upload starts with the first full part."""

    def __init__(self, store: S3BlobStore, key: str, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.store = store
        self.key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.staged: StagedBlob | None = None
        self._stored = False  # an object exists at `key` (to delete)

    def write(self, chunk: bytes) -> None:
        self._take(chunk)
        self._buffer += chunk
        while len(self._buffer) >= self.store.part_bytes:
            part = bytes(self._buffer[: self.store.part_bytes])
            del self._buffer[: self.store.part_bytes]
            self._send_part(part)

    def _send_part(self, data: bytes) -> None:
        s, bucket, key = self.store, self.store.bucket, self.key
        if self._upload_id is None:
            created = s.call(lambda: s.client.create_multipart_upload(Bucket=bucket, Key=key))
            self._upload_id = created["UploadId"]
        upload_id, number = self._upload_id, len(self._parts) + 1
        with self._still_there():
            sent = s.call(
                lambda: s.client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                )
            )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    @contextmanager
    def _still_there(self) -> Iterator[None]:
        """The multipart upload is gone (NoSuchUpload): another process's sweep took it for
        abandoned, its newest part older than MEDIA_TEMP_MAX_AGE_SECONDS (a body slower than one
        part in that time), or someone aborted it. The upload cannot go on: 503, to be retried."""
        try:
            yield
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                raise
            self._upload_id = None
            raise StorageUnavailable(
                "the object store no longer has this upload's parts (abandoned: no part for "
                "longer than the temp age); send it again"
            ) from None

    def finish(self) -> StagedBlob:
        """The last part, then the object exists at the temp key (not yet at its address)."""
        if self.staged is None:
            s, bucket, key = self.store, self.store.bucket, self.key
            if self._upload_id is None:
                body = bytes(self._buffer)
                s.call(lambda: s.client.put_object(Bucket=bucket, Key=key, Body=body))
            else:
                if self._buffer or not self._parts:
                    self._send_part(bytes(self._buffer))
                upload_id, parts = self._upload_id, list(self._parts)
                with self._still_there():
                    s.call(
                        lambda: s.slow_client.complete_multipart_upload(
                            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                        )
                    )
                self._upload_id = None
            self._buffer = bytearray()
            self._stored = True
            self.staged = self._staged()
        return self.staged

    def discard(self) -> None:
        """Abort the multipart upload in flight, or delete the finished temp object."""
        s, bucket, key = self.store, self.store.bucket, self.key
        self._buffer = bytearray()
        if self._upload_id is not None:
            upload_id = self._upload_id
            with contextlib.suppress(ClientError):
                s.call(lambda: s.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
            self._upload_id = None
        if self._stored:
            s.call(lambda: s.client.delete_object(Bucket=bucket, Key=key))
            self._stored = False


class _Body(io.RawIOBase):
    """A GetObject body as a read-only file: read in chunks, no fileno (so no sendfile)."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read(None if size < 0 else size)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
        super().close()
