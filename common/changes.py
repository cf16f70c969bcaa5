"""The change feed for search indexers: `GET /media/changes?after=&limit=` (pull), the same events
the outbox hands to K_SINK (push).

Every change to a record is written to the outbox by the database in the transaction that makes
it (migration 0008's triggers): created, ready, updated (metadata, status), attached, detached,
processed, deleted; `data` is the record's public document (`{id, owner}` for deleted). The pull
feed reads them in (transaction id, event id) order, and only the events of transactions older than
every transaction still running, so an event can never appear later before a cursor already handed
out: strictly ordered, no gaps, at least once (an indexer that crashes before saving its cursor
sees events again). A cursor stays valid for MEDIA_CHANGES_RETENTION_DAYS; one from before what
the retention purge deleted answers 410 `cursor-expired` (rebuild from the listing, then follow).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from common.problems import BadRequest, ChangesCursorExpired
from common.records import Change
from common.services import Services
from common.tokens import ADMIN, Principal, require_scope

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR = re.compile(r"^(\d{1,19})\.(\d{1,19})$")


def encode_cursor(xid: int, event_id: int) -> str:
    return base64.urlsafe_b64encode(f"{xid}.{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest("`after` is not a cursor of this feed") from None
    m = _CURSOR.match(raw)
    if m is None:
        raise BadRequest("`after` is not a cursor of this feed")
    return int(m.group(1)), int(m.group(2))


def limit_of(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"`limit` must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def expired(cursor: tuple[int, int] | None, horizon: tuple[int, int] | None) -> bool:
    """Whether events after `cursor` may have been purged (None: from the oldest kept, never)."""
    return cursor is not None and horizon is not None and cursor < horizon


def page(services: Services, principal: Principal, args: Mapping[str, str]) -> dict[str, Any]:
    """One page of the feed after `after` (absent: from the oldest kept)."""
    require_scope(principal, ADMIN)
    after = args.get("after") or None
    cursor = decode_cursor(after) if after else None
    limit = limit_of(args.get("limit"))
    if expired(cursor, services.repo.changes_horizon()):
        raise ChangesCursorExpired(
            "Events after this cursor were purged (MEDIA_CHANGES_RETENTION_DAYS): rebuild from"
            " GET /media, then follow the feed from a new cursor"
        )
    items = services.repo.changes_after(cursor, limit)
    last = encode_cursor(items[-1].xid, items[-1].id) if items else after
    return {"items": [event_json(c) for c in items], "next_cursor": last}


def event_json(change: Change) -> dict[str, Any]:
    return {
        "cursor": encode_cursor(change.xid, change.id),
        "id": str(change.id),
        "type": change.type,
        "subject": change.subject,
        "time": change.created_at.isoformat(),
        "data": change.data,
    }
