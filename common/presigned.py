"""Presigned uploads: sign a PUT URL for a browser (presign function), then take the bytes sent to
it (upload function) through the same streaming path and `media.commit_blob` as a direct upload.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from common import admission, processing, recipes
from common.maintenance import upload_label
from common.media import commit_blob, ready
from common.problems import (
    BadRequest,
    BlobTooLarge,
    Conflict,
    ContentRejected,
    Gone,
    LengthRequired,
    MalformedUpload,
    PayloadTooLarge,
    UnprocessableContent,
    UnsupportedMediaType,
    UploadMismatch,
)
from common.records import MediaRecord, NewPending
from common.repository import DigestScope
from common.services import Services
from common.signing import UploadGrant, issue_upload_token, read_upload_token
from common.sniff import detect
from common.tokens import WRITE, Principal, require_scope
from common.uploads import receive_body, safe_filename

_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_FILENAME_INPUT = 1000  # characters accepted; kept, sanitised, to uploads.MAX_FILENAME_CHARS


@dataclass(frozen=True)
class PresignedUpload:
    record: MediaRecord
    url: str
    headers: dict[str, str]
    expires_at: datetime


def normalise_type(value: str | None) -> str:
    """`Image/PNG; charset=x` -> `image/png` (parameters never matter for our types)."""
    return (value or "").split(";", 1)[0].strip().lower()


def presign(services: Services, principal: Principal, body: Any) -> PresignedUpload:
    """Check the upload against the policy before a byte is sent, then sign a PUT URL for it."""
    require_scope(principal, WRITE)
    config = services.config
    if not isinstance(body, dict):
        raise UnprocessableContent("Send a JSON object: {filename, content_type, size, sha256?}")
    filename, content_type, size, sha256 = (
        body.get(k) for k in ("filename", "content_type", "size", "sha256")
    )
    if not isinstance(filename, str) or not filename.strip() or len(filename) > MAX_FILENAME_INPUT:
        raise UnprocessableContent(f"`filename` must be a non-empty string of at most {MAX_FILENAME_INPUT}")
    if not isinstance(content_type, str) or not _MIME.match(normalise_type(content_type)):
        raise UnprocessableContent("`content_type` must be a MIME type such as image/png")
    if isinstance(size, float) and size.is_integer():
        size = int(size)  # JSON has one number type: 1024.0 is the integer 1024
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UnprocessableContent("`size` must be a positive integer (bytes)")
    if "expires_unattached" in body and not isinstance(body["expires_unattached"], bool):
        raise UnprocessableContent("`expires_unattached` is true or false")
    expire_after = recipes.expiry_of(services, body.get("expires_unattached"))  # a bool, or absent
    if "sha256" in body and (not isinstance(sha256, str) or not _HEX64.match(sha256.lower())):
        raise UnprocessableContent("`sha256` must be 64 hex digits when given")
    kind = normalise_type(content_type)
    if kind not in config.allowed_types:
        raise UnsupportedMediaType(
            f"{kind} is not accepted; allowed types are {', '.join(sorted(config.allowed_types))}"
        )
    if size > config.max_upload_bytes:
        raise PayloadTooLarge(f"{size} bytes is over the limit", limit=config.max_upload_bytes)

    services.limiter.take(services.limiter.uploads, principal.subject)  # a presigned URL is an upload
    admission.require_free_space(services)
    # The declared size is held of the quota until the PUT settles it (or the URL is long expired).
    hold = admission.Hold(services, principal.subject)
    hold.take(size, size, ttl_seconds=config.presign_ttl_seconds + config.pending_grace_seconds)
    expires = int(services.clock()) + config.presign_ttl_seconds
    expires_at = datetime.fromtimestamp(expires, UTC)
    declared = sha256.lower() if isinstance(sha256, str) else None
    try:
        record = services.repo.create_pending(
            NewPending(
                principal.subject,
                safe_filename(filename),
                kind,
                size,
                declared,
                expires_at,
                hold.id,
                expire_after,
            )
        )
    except BaseException:
        hold.release()
        raise
    grant = UploadGrant(record.id, principal.subject, size, kind, declared, expires)
    token = issue_upload_token(services.keys, grant)
    return PresignedUpload(
        record=record,
        url=f"{config.public_base_url}/media/uploads/{token}",
        headers={"Content-Type": kind},
        expires_at=expires_at,
    )


def complete_upload(
    services: Services, token: str, content_type: str | None, content_length: int | None, body: IO[bytes]
) -> MediaRecord:
    """The PUT to a presigned URL: the signature is the credential; the bytes must be what was signed.

    Header mismatches are refused before anything is read and leave the upload retryable; bytes
    that contradict the signature (type, digest) mark the record `failed` with the reason. Of two
    PUTs with one URL, the one that claims the record proceeds and the other gets 409.
    """
    grant = read_upload_token(services.keys, token, services.clock())
    record = services.repo.get(grant.media_id)
    if record is None or record.owner != grant.owner:
        raise Gone("This upload no longer exists; request a new URL")
    _refuse_finished(record)
    if content_length is None:
        raise LengthRequired(f"Send Content-Length: {grant.size}")
    if content_length != grant.size:
        raise BadRequest(f"Content-Length is {content_length}; this URL was signed for {grant.size} bytes")
    if normalise_type(content_type) != grant.content_type:
        raise UnsupportedMediaType(f"Send Content-Type: {grant.content_type}, as signed")
    admission.require_free_space(services)
    claimed = services.repo.claim(grant.media_id, services.config.temp_max_age_seconds)
    if claimed is None:
        current = services.repo.get(grant.media_id)
        if current is None:
            raise Gone("This upload no longer exists; request a new URL")
        _refuse_finished(current)
        raise Conflict("An upload with this URL is already in progress")

    def check_type(prefix: bytes) -> None:
        detected = detect(prefix)
        if detected != grant.content_type:
            raise UploadMismatch(
                f"the content is {detected}, not the signed {grant.content_type}", unsupported_type=True
            )

    # The presign's hold (same id as the record), taken again: a retry after a failed PUT, whose
    # hold was released, must still fit.
    hold = admission.Hold(services, grant.owner, grant.media_id)
    try:
        with (
            services.limiter.metered(body, grant.owner) as metered,
            services.store.writer(grant.size, label=upload_label(grant.media_id)) as writer,
            admission.guarded(services, writer, hold) as guard,
        ):
            hold.take(grant.size, grant.size)
            try:
                receive_body(metered, guard, check_type)
            except BlobTooLarge:
                raise UploadMismatch(f"the body is longer than the signed {grant.size} bytes") from None
            if writer.size != grant.size:
                raise MalformedUpload(f"the body ended after {writer.size} of {grant.size} bytes")
            staged = writer.finish()
            if grant.sha256 is not None and staged.sha256 != grant.sha256:
                raise UploadMismatch(
                    f"the content's SHA-256 is {staged.sha256}, not the signed {grant.sha256}"
                )
            guard.screening.verdict()
            record = commit_blob(
                services, writer, staged.sha256, _completer(hold, grant.media_id, staged.sha256, staged.size)
            )
        processing.published_after(services, record)
        return record
    except (UploadMismatch, ContentRejected) as exc:
        services.repo.fail(grant.media_id, str(exc))  # the URL is spent: its bytes were refused
        raise
    except BaseException:
        services.repo.release(grant.media_id)  # nothing contradicted the signature: retry with the same URL
        raise


def _completer(
    hold: admission.Hold, media_id: uuid.UUID, sha256: str, size: int
) -> Callable[[DigestScope], MediaRecord]:
    def write(scope: DigestScope) -> MediaRecord:
        hold.settle(scope)
        done = scope.complete(media_id, sha256, size)
        if done is None:
            raise Gone("This upload was removed while its bytes were arriving; request a new URL")
        return ready(scope, done)

    return write


def _refuse_finished(record: MediaRecord) -> None:
    if record.status == "ready":
        raise Conflict("This upload is already complete")
    if record.status == "failed":
        raise Conflict(f"This upload failed ({record.failure_reason}); request a new URL")


def presigned_json(upload: PresignedUpload) -> dict[str, Any]:
    """The shape Uppy's S3 uploader takes from `getUploadParameters` (plus the media id)."""
    return {
        "media_id": str(upload.record.id),
        "method": "PUT",
        "url": upload.url,
        "fields": {},
        "headers": upload.headers,
        "expires_at": upload.expires_at.isoformat(),
    }
