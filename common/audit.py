"""The audit trail: one JSON event per security-relevant request, on the logger `media.audit`.

Events: `upload`, `presign`, `upload_completed` (the PUT to a presigned URL), `download`, `delete`,
`erasure_requested`, `erasure_completed` (from the job, with its receipt: `subject`,
`records_removed`, `blobs_removed`, `size` the bytes freed), `content_rejected` (the malware
scanner refused an upload), `expired_unattached` (the maintenance deleted an upload nobody
attached in time), `auth_failure` and `rate_limited`. Fields: `event`, `outcome`
(`success`, `denied`, `failure`), `status`, `actor` (the user, `client:<id>`, or the owner a
presigned URL was signed for), `client_ip`, `media_id`, `sha256`, `size`, `request_id` and
`function`. Never a token, a signature
or a secret: the fields are chosen here, not copied from the request. `MEDIA_AUDIT_LOG=off`
silences it. The dispatch (`web.py`) emits the events from what the request left behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("media.audit")

# The operations of the routing table that are audited, and the event each one is.
EVENT_OF_OPERATION = {
    "uploadMedia": "upload",
    "presignUpload": "presign",
    "completeUpload": "upload_completed",
    "getMediaContent": "download",
    "deleteMedia": "delete",
    "eraseUserMedia": "erasure_requested",
}


@dataclass(frozen=True)
class Event:
    event: str
    outcome: str
    status: int
    actor: str | None
    client_ip: str | None
    media_id: str | None
    sha256: str | None
    size: int | None
    request_id: str
    function: str


def outcome_of(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403, 404, 429):  # refused: not who they claim, not allowed, or not theirs
        return "denied"
    return "failure"


def events_for(operation: str | None, status: int) -> list[str]:
    """Which events a request with this operation and status gives (possibly none, possibly two:
    a refused upload is an `upload` and an `auth_failure`)."""
    events = []
    if operation in EVENT_OF_OPERATION:
        events.append(EVENT_OF_OPERATION[operation])
    if status == 422 and operation in ("uploadMedia", "completeUpload"):
        events.append("content_rejected")  # the only 422 of an upload's bytes
    if status == 401:
        events.append("auth_failure")
    elif status == 429:
        events.append("rate_limited")
    return events


def emit(event: Event, **details: str | int | None) -> None:
    """One event; `details` are further fields the event's kind defines (an erasure's receipt)."""
    if log.isEnabledFor(logging.INFO):
        # The fields as they are (all scalars): `dataclasses.asdict` deep-copies each one, which
        # cost a tenth of a small download's CPU.
        log.info(event.event, extra={"audit": {**vars(event), **details}})
