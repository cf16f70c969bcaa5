"""The recipe application's use cases: describe an item (alt text, caption, tags, filename), attach
it to the recipe backend's records and detach it. HTTP-free, like `media.py`; the checks of what
requests say are pure (`metadata.py`).

Who may do what: the owner (or `media:admin`) describes an item. Attaching and detaching need
`media:write`: a user attaches their own items; a service client (a client-credentials token: the
recipe backend acting for its users) attaches anyone's. Every change is written to the outbox in
its own transaction by the database (migration 0008), and handed to K_SINK right after when set.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from common import metadata, processing
from common.media import visible
from common.problems import NotFound, PreconditionFailed
from common.records import Attachment, MediaRecord
from common.services import Services
from common.tokens import WRITE, Principal, require_scope


def describe(
    services: Services,
    principal: Principal,
    media_id: str,
    if_match: str | None,
    read_patch: Callable[[], Any],
) -> MediaRecord:
    """`PATCH /media/{id}`: a JSON Merge Patch of the descriptive metadata, optionally conditional
    on the version (`If-Match`); 412 when someone else's change came first. The body is read
    (`read_patch`) only once the caller may change the record."""
    require_scope(principal, WRITE)
    record = visible(services, principal, media_id)
    expected = metadata.expected_version(if_match)
    changes = metadata.merge_patch(read_patch())
    if expected is not None and expected != record.version:
        raise PreconditionFailed(
            f"The record is at version {record.version}, not {expected}", etag=metadata.etag(record.version)
        )
    updated = services.repo.update_metadata(record.id, expected, changes) if changes else record
    if updated is None:
        current = services.repo.get(record.id)
        if current is None:
            raise NotFound("No such media")
        raise PreconditionFailed(f"The record is at version {current.version}, not {expected}")
    processing.publish(services)
    return updated


def _attachable(services: Services, principal: Principal, media_id: str) -> MediaRecord:
    """The item, if the caller may attach it: its owner, an admin, or a service client."""
    require_scope(principal, WRITE)
    if not principal.is_client:
        return visible(services, principal, media_id)
    try:
        key = uuid.UUID(media_id)
    except ValueError:
        raise NotFound("No such media") from None
    record = services.repo.get(key)
    if record is None:
        raise NotFound("No such media")
    return record


def attach(
    services: Services,
    principal: Principal,
    media_id: str,
    kind: str,
    ref: str,
    read_body: Callable[[], Any],
) -> tuple[Attachment, bool]:
    """`PUT /media/{id}/attachments/{kind}/{ref}`: idempotent; (the attachment, created?). The
    optional body (`read_body`: {role?, position?}) is read once the caller may attach the item."""
    kind, ref = metadata.attachment_target(kind, ref)
    record = _attachable(services, principal, media_id)
    where = metadata.placement(read_body())
    config = services.config
    wanted = Attachment(record.id, kind, ref, where.role, where.position or 0)
    try:
        stored, created = services.repo.attach(
            wanted,
            where.position is not None,
            config.max_attachments_per_media,
            config.max_attachments_per_ref,
        )
    except LookupError:
        raise NotFound("No such media") from None  # deleted meanwhile
    processing.publish(services)
    return stored, created


def detach(services: Services, principal: Principal, media_id: str, kind: str, ref: str) -> None:
    """`DELETE /media/{id}/attachments/{kind}/{ref}`: idempotent (204 whether it was attached)."""
    kind, ref = metadata.attachment_target(kind, ref)
    record = _attachable(services, principal, media_id)
    if services.repo.detach(record.id, kind, ref, ttl_seconds(services)):
        processing.publish(services)


def detach_everything(services: Services, principal: Principal, kind: str, ref: str) -> int:
    """`DELETE /attachments/{kind}/{ref}` (a recipe was deleted): everything attached to it, or
    for a user only their own items; how many were detached."""
    require_scope(principal, WRITE)
    kind, ref = metadata.attachment_target(kind, ref)
    owner = None if principal.is_admin or principal.is_client else principal.subject
    detached = services.repo.detach_all(kind, ref, owner, ttl_seconds(services))
    if detached:
        processing.publish(services)
    return detached


def ttl_seconds(services: Services) -> float:
    return services.config.unattached_ttl_hours * 3600


def expiry_of(services: Services, asked: Any) -> float | None:
    """An upload's `expires_unattached` (true, false, or absent: MEDIA_UNATTACHED_DEFAULT) as the
    seconds it may stay unattached, or None (kept until deleted)."""
    wanted = services.config.unattached_default if asked is None else asked
    return ttl_seconds(services) if wanted else None


def attachment_json(a: Attachment) -> dict[str, Any]:
    return {"media_id": str(a.media_id), "kind": a.kind, "ref": a.ref, "role": a.role, "position": a.position}
