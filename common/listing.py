"""Listings: `GET /media` (the caller's media newest first, keyset pagination; a record's
attachments in position order; with `include=variants`, each item's thumbnails from one batched
query) and the cursors they hand out. HTTP-free, like `media.py`, whose JSON it reuses."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common import imaging, metadata
from common.media import processing_json, to_json
from common.problems import BadRequest
from common.records import STATUSES, Attachment, ListQuery, MediaRecord, Processing
from common.services import Services
from common.tokens import READ, Principal, require_scope

DEFAULT_PAGE = 20
MAX_PAGE = 100
MAX_PREFIX = 255


@dataclass(frozen=True)
class Page:
    items: list[MediaRecord]
    next_cursor: str | None
    attached: dict[uuid.UUID, Attachment] = dataclasses.field(default_factory=dict)  # ?attached_to
    processing: dict[str, Processing] | None = None  # ?include=variants: by original's digest


def encode_cursor(record: MediaRecord) -> str:
    raw = json.dumps([record.created_at.isoformat(), str(record.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, ident = json.loads(raw)
        after = (datetime.fromisoformat(created), uuid.UUID(ident))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadRequest("`cursor` is not a cursor this service issued") from None
    if after[0].tzinfo is None:
        raise BadRequest("`cursor` is not a cursor this service issued")
    return after


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"`limit` must be an integer from 1 to {MAX_PAGE}") from None
    if not 1 <= value <= MAX_PAGE:
        raise BadRequest(f"`limit` must be an integer from 1 to {MAX_PAGE}")
    return value


def _prefix(raw: str | None) -> str | None:
    if raw is not None and len(raw) > MAX_PREFIX:
        raise BadRequest(f"`content_type` is at most {MAX_PREFIX} characters")
    return raw or None


def list_media(services: Services, principal: Principal, args: Mapping[str, str]) -> Page:
    require_scope(principal, READ)
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"`status` must be one of {', '.join(STATUSES)}")
    cursor = args.get("cursor")
    limit = _limit(args.get("limit"))
    include = _include(args.get("include"))
    target = metadata.attached_to(args.get("attached_to"))
    if target is not None:
        return _with_processing(services, _attached_page(services, principal, target, limit, cursor), include)
    query = ListQuery(
        owner=None if principal.is_admin else principal.subject,
        limit=limit + 1,  # one more tells whether there is a next page
        after=decode_cursor(cursor) if cursor else None,
        content_type_prefix=_prefix(args.get("content_type")),
        status=status,
    )
    rows = services.repo.list_media(query)
    items = rows[:limit]
    page = Page(items=items, next_cursor=encode_cursor(items[-1]) if len(rows) > limit else None)
    return _with_processing(services, page, include)


def _include(raw: str | None) -> bool:
    """`include=variants`: each item with its variants, srcset and placeholder (one query more)."""
    if raw is None or raw == "":
        return False
    if raw != "variants":
        raise BadRequest("`include` takes `variants`")
    return True


def _attached_page(
    services: Services, principal: Principal, target: tuple[str, str], limit: int, cursor: str | None
) -> Page:
    """What is attached to (kind, ref), in position order; a user sees their own items only, a
    service client or an admin everything (the recipe backend shows a recipe's photos)."""
    owner = None if principal.is_admin or principal.is_client else principal.subject
    after = _decode_attached_cursor(cursor) if cursor else None
    rows = services.repo.attached(*target, owner, limit + 1, after)
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = _encode_attached_cursor(page[-1][1].position, page[-1][0].id) if more else None
    return Page([r for r, _ in page], next_cursor, {r.id: a for r, a in page})


def _encode_attached_cursor(position: int, media_id: uuid.UUID) -> str:
    raw = json.dumps(["a", position, str(media_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_attached_cursor(cursor: str) -> tuple[int, uuid.UUID]:
    try:
        tag, position, ident = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if tag != "a" or not isinstance(position, int):
            raise ValueError(cursor)
        return position, uuid.UUID(ident)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadRequest("`cursor` is not a cursor this service issued") from None


def _with_processing(services: Services, page: Page, include: bool) -> Page:
    if not include:
        return page
    digests = [r.sha256 for r in page.items if r.sha256 and r.content_type in imaging.PROCESSABLE]
    return dataclasses.replace(page, processing=services.repo.processing_of_many(digests, imaging.RECIPE))


def page_json(services: Services, page: Page) -> dict[str, Any]:
    """`GET /media`: the items (with their attachment to `attached_to`, and with `include=variants`
    what the process function made of each) and the next page's cursor."""
    items = []
    for record in page.items:
        doc = to_json(services, record)
        if record.id in page.attached:
            a = page.attached[record.id]
            doc["attachment"] = {"kind": a.kind, "ref": a.ref, "role": a.role, "position": a.position}
        if page.processing is not None:  # what a grid needs: srcset and placeholder (not the list)
            state = page.processing.get(record.sha256 or "")
            thumbnails = processing_json(services, record, doc["url"], state, looked_up=True)
            del thumbnails["variants"]
            doc.update(thumbnails)
        items.append(doc)
    return {"items": items, "next_cursor": page.next_cursor}
