"""The use cases: upload (direct or presigned), read, delete (listings are `listing.py`).
HTTP-free; handlers call these with a `Services`.

Both upload flows share one path: the body streams into a CAS writer (size limit, SHA-256 and the
sniff prefix in one pass), the type is checked on the first 64 KiB, and `commit_blob` moves the
bytes to their address and writes the record in one step (`presigned.py` holds the PUT flow).
Only the record write differs: a direct upload inserts a `ready` record, a presigned PUT turns
its `pending` record `ready`.

Consistency between the CAS and the table rests on one rule: a blob's address is created or
removed only inside `repository.digest_scope(sha256)`, a lock held across processes.
- Upload: the bytes are streamed to a temp file first (no lock held while the client sends);
  then, under the lock, the temp file is renamed to its address (or dropped if the address
  exists: dedup) and the record is written. If that fails, the blob is removed again
  unless another record references it.
- Delete: under the same lock, the record is deleted (committed when the lock is released); then,
  under the lock again, the blob is unlinked if no record references the digest any more.
So a delete cannot unlink a blob between an upload's rename and its INSERT, nor unlink it before
its own DELETE is committed, and an upload that commits after a delete simply renames its own
copy into place again. (The lock is transaction-scoped: a scope's writes commit when it ends.)
A crash (or a database that stops answering) between the two steps leaves at worst an
unreferenced blob, never a record without bytes; the maintenance's reconciler removes such blobs
once they are older than `MEDIA_ORPHAN_GRACE_SECONDS` (see `services.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from common import admission, imaging, metrics, processing, quota, removal
from common.cas import BlobWriter
from common.conditional import Content, HeaderLookup, Representation, evaluate
from common.negotiation import Wanted, choose
from common.problems import (
    BadRequest,
    BlobMissing,
    Conflict,
    ContentCorrupt,
    Forbidden,
    NotFound,
)
from common.records import Detail, MediaRecord, NewMedia, Processing
from common.repository import DigestScope
from common.services import Services
from common.signing import check_download, sign_download
from common.sniff import require_allowed
from common.tokens import DELETE, READ, WRITE, Principal, require_scope
from common.uploads import receive_multipart

log = logging.getLogger("media")


def upload_multipart(
    services: Services,
    principal: Principal,
    body: IO[bytes],
    content_type: str | None,
    content_length: int | None = None,
    expire_unattached_after: float | None = None,
) -> MediaRecord:
    require_scope(principal, WRITE)
    config = services.config
    services.limiter.take(services.limiter.uploads, principal.subject)
    admission.require_free_space(services)
    detected: list[str] = []
    hold = admission.Hold(services, principal.subject)

    def check_type(prefix: bytes) -> None:
        detected.append(require_allowed(prefix, config.allowed_types))

    with (
        services.limiter.metered(body, principal.subject) as metered,
        services.store.writer(config.max_upload_bytes) as writer,
        admission.guarded(services, writer, hold) as guard,
    ):
        # The file, and what the body's length says its bytes can be at most (else a first slice):
        # concurrent uploads near the quota each hold about their own size.
        hold.take(0, min(content_length or quota.GROW_BYTES, config.max_upload_bytes))
        filename = receive_multipart(metered, content_type, guard, check_type)
        staged = writer.finish()
        guard.screening.verdict()  # before the commit: an infected file never gets an address
        new = NewMedia(
            owner=principal.subject,
            filename=filename,
            content_type=detected[0],
            size=staged.size,
            sha256=staged.sha256,
            expire_unattached_after=expire_unattached_after,
        )

        def write(scope: DigestScope) -> MediaRecord:
            hold.settle(scope)
            return ready(scope, scope.insert(new))

        record = commit_blob(services, writer, staged.sha256, write)
    processing.published_after(services, record)
    return record


def ready(scope: DigestScope, record: MediaRecord) -> MediaRecord:
    """A record just made ready, in its digest's transaction: an image also gets its processing
    job and outbox row there (processing.py), so its commit cannot lose them."""
    processing.enqueue_if_image(scope, record)
    return record


def commit_blob(
    services: Services, writer: BlobWriter, sha256: str, write: Callable[[DigestScope], MediaRecord]
) -> MediaRecord:
    """Move the finished temp file to its address and write the record, under the digest's lock."""
    with services.repo.digest_scope(sha256) as scope:
        if services.store.commit(writer):
            metrics.business(metrics.DEDUP_HITS)
        try:
            return write(scope)
        except BaseException:
            try:
                if scope.references(sha256) == 0:
                    services.store.delete(sha256)
            except Exception:
                log.warning("could not remove unreferenced blob %s; it is harmless", sha256)
            raise


def _key(media_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(media_id)
    except ValueError:
        raise NotFound("No such media") from None


def _may_see(principal: Principal, record: MediaRecord | None) -> MediaRecord:
    """Someone else's record answers exactly like a missing one."""
    if record is None or not (principal.is_admin or record.owner == principal.subject):
        raise NotFound("No such media")
    return record


def visible(services: Services, principal: Principal, media_id: str) -> MediaRecord:
    """The record if the caller may see it."""
    return _may_see(principal, services.repo.get(_key(media_id)))


def get(services: Services, principal: Principal, media_id: str) -> Detail:
    """`GET /media/{id}`: the record with its processing and attachments, in one round trip."""
    require_scope(principal, READ)
    detail = services.repo.detail(_key(media_id), imaging.RECIPE)
    if detail is None:
        raise NotFound("No such media")
    _may_see(principal, detail.record)
    return detail


def detail_of(services: Services, record: MediaRecord) -> Detail:
    """What `get` shows of a record already read (after a change): NotFound if it is gone since."""
    detail = services.repo.detail(record.id, imaging.RECIPE)
    if detail is None:
        raise NotFound("No such media")
    return detail


def delete(services: Services, principal: Principal, media_id: str) -> MediaRecord:
    """Delete the record and, with its last reference, its blob: both decided under the digest lock.

    The digest is known only from a read made before the lock is held, so the delete is conditional
    on it: a pending upload that completed meanwhile has a digest now, and the delete starts again
    under that digest's lock. A digest changes once at most (none, then the content's).
    """
    require_scope(principal, DELETE)
    record = visible(services, principal, media_id)
    for _ in range(3):
        deleted = removal.remove(services.store, services.repo, record)
        if deleted is not None:
            return deleted
        current = services.repo.get(record.id)
        if current is None:
            raise NotFound("No such media")  # a concurrent delete won
        record = current
    raise Conflict("The media changed while it was being deleted; try again")


def signed_link_of(args: Mapping[str, str]) -> tuple[str, str] | None:
    """The `expires` and `sig` of a signed download link, when the query carries one."""
    expires = args.get("expires")
    if expires is not None and not (expires.isascii() and expires.isdigit()):
        raise BadRequest("`expires` must be an integer (unix seconds)")
    if "sig" not in args:
        return None
    return expires or "", args["sig"]


def read_content(
    services: Services,
    principal: Principal,
    media_id: str,
    method: str,
    headers: HeaderLookup,
    want: Wanted = Wanted(),  # noqa: B008 - frozen
) -> Content:
    require_scope(principal, READ)
    return _content(services, visible(services, principal, media_id), method, headers, want)


def read_signed_content(
    services: Services,
    media_id: str,
    expires: str,
    sig: str,
    method: str,
    headers: HeaderLookup,
    want: Wanted = Wanted(),  # noqa: B008 - frozen
) -> Content:
    """Through a signed download link (`<img src>` cannot send a bearer token): no token needed."""
    try:
        key = uuid.UUID(media_id)
    except ValueError:
        raise Forbidden("This download link is not valid") from None
    check_download(services.keys, key, expires, sig, services.clock())
    record = services.repo.get(key)
    if record is None:
        raise NotFound("No such media")
    return _content(services, record, method, headers, want)


@dataclass(frozen=True)
class _Bytes:
    """What a content request is answered with: the original, or one of its variants."""

    sha256: str
    size: int
    content_type: str
    filename: str
    vary: str | None


def _representation(services: Services, record: MediaRecord, want: Wanted, accept: str | None) -> _Bytes:
    assert record.sha256 is not None
    original = _Bytes(record.sha256, record.size, record.content_type, record.filename, None)
    if not want.any or record.content_type not in imaging.PROCESSABLE:
        return original
    state = services.repo.processing_of(record.sha256, imaging.RECIPE)
    choice = choose(state.variants if state else (), record.content_type, want, accept)
    vary = "Accept" if choice.vary_accept else None
    v = choice.variant
    if v is None:
        return dataclasses.replace(original, vary=vary)
    stem = record.filename.rsplit(".", 1)[0] or "image"
    return _Bytes(v.sha256, v.size, imaging.FORMATS[v.format], f"{stem}-{v.width}.{v.format}", vary)


def _content(
    services: Services, record: MediaRecord, method: str, headers: HeaderLookup, want: Wanted
) -> Content:
    if record.status == "corrupt":
        raise ContentCorrupt("The stored bytes no longer match their SHA-256; they were quarantined")
    if record.status != "ready" or record.sha256 is None:
        raise NotFound(f"The content of this media is not available (status: {record.status})")
    chosen = _representation(services, record, want, headers.get("Accept"))
    # Each representation has its own strong ETag (its bytes' digest), so a 304 is per variant.
    rep = Representation(etag=chosen.sha256, last_modified=record.created_at, size=chosen.size)
    decision = evaluate(method, headers, rep)
    file = None
    sha256 = chosen.sha256
    if services.config.storage == "s3" and services.config.s3_download == "redirect":
        # The bytes bypass the function: the access checks are done, the client gets a short-lived
        # presigned GET (Range and all), which answers with the same headers as ours.
        def redirect(content_type: str, disposition: str, cache_control: str) -> str | None:
            return services.store.download_url(sha256, content_type, disposition, cache_control)

        return Content(rep, decision, None, chosen.content_type, chosen.filename, redirect, chosen.vary)
    try:
        if method == "GET" and decision.status in (200, 206):
            file = services.store.open(sha256, decision.start, decision.length)
        elif decision.status in (200, 206) and not services.store.exists(sha256):
            raise BlobMissing(sha256)  # HEAD must not promise bytes GET cannot send
    except BlobMissing:
        log.error(
            "media %s (owner %s) references blob %s, which the store does not have",
            record.id,
            record.owner,
            sha256,
        )
        raise
    return Content(rep, decision, file, chosen.content_type, chosen.filename, vary=chosen.vary)


def content_link(services: Services, media_id: uuid.UUID) -> str:
    """An absolute content URL signed for `download_url_ttl_seconds`, usable without a token."""
    expires = int(services.clock()) + services.config.download_url_ttl_seconds
    sig = sign_download(services.keys, media_id, expires)
    return f"{services.config.public_base_url}/media/{media_id}/content?expires={expires}&sig={sig}"


def to_json(services: Services, record: MediaRecord) -> dict[str, Any]:
    """The record as the API shows it (an item of a list, an upload's answer)."""
    self_link = f"{services.config.public_base_url}/media/{record.id}"
    content = content_link(services, record.id)
    doc = {
        "id": str(record.id),
        "filename": record.filename,
        "content_type": record.content_type,
        "size": record.size,
        "sha256": record.sha256,
        "status": record.status,
        "failure_reason": record.failure_reason,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "owner": record.owner,
        "alt": record.alt,
        "caption": record.caption,
        "tags": list(record.tags),
        "version": record.version,
        "expires_at": record.unattached_expires_at.isoformat() if record.unattached_expires_at else None,
        "url": content,
        "links": {"self": self_link, "content": content},
    }
    return doc


def detail_json(services: Services, detail: Detail) -> dict[str, Any]:
    """`GET /media/{id}`: the record with what the process function made of an image and where
    the recipe application attached it."""
    record = detail.record
    doc = to_json(services, record)
    processed = record.sha256 is not None and record.content_type in imaging.PROCESSABLE
    state = detail.processing if processed else None
    doc.update(processing_json(services, record, doc["url"], state, looked_up=True))
    doc["attachments"] = [
        {"kind": a.kind, "ref": a.ref, "role": a.role, "position": a.position} for a in detail.attachments
    ]
    return doc


def processing_json(
    services: Services,
    record: MediaRecord,
    link: str,
    state: Processing | None = None,
    *,
    looked_up: bool = False,
) -> dict[str, Any]:
    """`processing` (null for media that are not processed), the image's upright `width`/`height`,
    `blurhash`, `dominant_color` and its `variants` (empty until done); `looked_up`: `state` is
    what a batched lookup found (a listing), so no query is made here."""
    if not looked_up and record.sha256 is not None and record.content_type in imaging.PROCESSABLE:
        state = services.repo.processing_of(record.sha256, imaging.RECIPE)
    if state is None:
        empty: dict[str, Any] = {"processing": None, "processing_reason": None, "variants": [], "srcset": {}}
        return {**empty, "width": None, "height": None, "blurhash": None, "dominant_color": None}
    variants = [
        {
            "format": v.format,
            "width": v.width,
            "height": v.height,
            "size": v.size,
            "sha256": v.sha256,
            "url": f"{link}&w={v.width}&format={v.format}",
        }
        for v in state.variants
    ]
    srcset: dict[str, list[str]] = {}
    for row, doc in sorted(zip(state.variants, variants, strict=True), key=lambda pair: pair[0].width):
        srcset.setdefault(row.format, []).append(f"{doc['url']} {row.width}w")
    return {
        "processing": state.state,
        "processing_reason": state.reason,
        "width": state.width,
        "height": state.height,
        "blurhash": state.blurhash,
        "dominant_color": state.dominant_color,
        "variants": variants,
        "srcset": {fmt: ", ".join(entries) for fmt, entries in srcset.items()},
    }
