"""The account-level use cases: a subject's usage and quota, and the erasure of all they own.
HTTP-free, like `media.py`; the erasure job itself is `erasure.py`."""

from __future__ import annotations

import time
import uuid
from typing import Any

from common import erasure
from common.admission import limits_of
from common.problems import BadRequest, NotFound
from common.quota import usage_json
from common.records import Erasure
from common.services import Services
from common.tokens import ADMIN, DELETE, READ, Principal, require_scope

ME = "me"
MAX_SUBJECT = 255
INLINE_SECONDS = 2.0  # what the erasure request itself spends before it answers 202


def subject_of(principal: Principal, subject: str, scope: str) -> str:
    """`me` is the caller; anyone else needs `media:admin` (and is refused as if absent otherwise)."""
    if subject == ME:
        require_scope(principal, scope)
        return principal.subject
    require_scope(principal, ADMIN)
    if not subject or len(subject) > MAX_SUBJECT:
        raise BadRequest(f"A subject is 1 to {MAX_SUBJECT} characters")
    return subject


def request_erasure(services: Services, principal: Principal, subject: str) -> Erasure:
    """Start (or join) the erasure of the subject and work on it for `INLINE_SECONDS`."""
    who = subject_of(principal, subject, DELETE)
    job = services.repo.start_erasure(who, principal.subject)
    if services.repo.claim_erasure(erasure.LEASE_SECONDS, job.id) is not None:
        finished = erasure.run(
            services.store,
            services.repo,
            job.id,
            time.monotonic() + INLINE_SECONDS,
            services.config.audit_log,
        )
        if not finished:
            services.repo.release_erasure(job.id)  # the maintenance goes on with it, in any process
    current = services.repo.erasure(job.id)
    assert current is not None
    return current


def erasure_status(services: Services, principal: Principal, erasure_id: str) -> Erasure:
    """The job and its receipt: for admins, and for the subject themselves."""
    require_scope(principal, READ)
    try:
        key = uuid.UUID(erasure_id)
    except ValueError:
        raise NotFound("No such erasure") from None
    job = services.repo.erasure(key)
    if job is None or not (principal.is_admin or job.subject == principal.subject):
        raise NotFound("No such erasure")
    return job


def usage(services: Services, principal: Principal, subject: str) -> dict[str, Any]:
    who = subject_of(principal, subject, READ)
    return usage_json(who, services.repo.usage(who), limits_of(services))
