"""One error model: exceptions that carry their HTTP status and headers, rendered as RFC 9457.

Adapters (`localstore`, `s3store`, `repository`, `tokens`, `uploads`) raise the domain exceptions
at the bottom of this module; `to_problem` translates them at the edge, in one table.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

PROBLEM_BASE = "https://media.recipes.example/problems/"


class Problem(Exception):
    """An error with its HTTP status. Subclasses fix `status`, `slug` and `title`."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal server error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def headers(self) -> dict[str, str]:
        return {}

    def body(self, request_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        doc.update(self.extra)
        doc["request_id"] = request_id
        return doc


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, *, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        self.error = error

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3: no error code when the request carried no token at all.
        if self.error is None:
            return {"WWW-Authenticate": 'Bearer realm="media"'}
        return {"WWW-Authenticate": f'Bearer realm="media", error="{self.error}"'}


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"

    def __init__(self, detail: str | None = None, *, scope: str | None = None) -> None:
        super().__init__(detail)
        self.scope = scope

    def headers(self) -> dict[str, str]:
        if self.scope is None:
            return {}
        return {"WWW-Authenticate": f'Bearer realm="media", error="insufficient_scope", scope="{self.scope}"'}


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"Allowed: {', '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class RequestTimeout(Problem):
    status, slug, title = 408, "request-timeout", "Request timeout"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(Problem):
    status, slug, title = 410, "gone", "Gone"


class LengthRequired(Problem):
    status, slug, title = 411, "length-required", "Length required"


class PreconditionFailed(Problem):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UriTooLong(Problem):
    status, slug, title = 414, "uri-too-long", "URI too long"


class UnsupportedMediaType(Problem):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class UnprocessableContent(Problem):
    status, slug, title = 422, "unprocessable-content", "Unprocessable content"


class RangeNotSatisfiable(Problem):
    status, slug, title = 416, "range-not-satisfiable", "Range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"The representation has {size} bytes")
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class HttpProblem(Problem):
    """Any other HTTP status, raised by the serving stack rather than by our code (431, 501...)."""

    def __init__(self, status: int, detail: str | None = None, headers: dict[str, str] | None = None) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Bad request" if status < 500 else "Internal server error"
        self.status = status
        self.title = phrase[:1] + phrase[1:].lower()
        self.slug = re.sub(r"[^a-z0-9]+", "-", phrase.lower()).strip("-")
        super().__init__(detail)
        self._headers = headers or {}

    def headers(self) -> dict[str, str]:
        return dict(self._headers)


def problem_for_status(
    status: int, detail: str | None = None, headers: dict[str, str] | None = None
) -> Problem:
    """The problem for an HTTP status: our own class where there is one, so the type URI is the same
    whoever raised it (our handlers, the framework, the server)."""
    known = _BY_STATUS.get(status)
    if known is not None and not headers:
        return known(detail)
    return HttpProblem(status, detail, headers)


class TooManyRequests(Problem):
    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self._headers = headers or {"Retry-After": "1"}

    def headers(self) -> dict[str, str]:
        return dict(self._headers)


class InsufficientStorage(Problem):
    status, slug, title = 507, "insufficient-storage", "Insufficient storage"


class QuotaExceeded(Problem):
    """The subject's storage quota would be passed; the body says usage and limit."""

    status, slug, title = 413, "quota-exceeded", "Storage quota exceeded"


class ContentRejected(Problem):
    """The malware scanner found something; the body names the signature."""

    status, slug, title = 422, "content-rejected", "Content rejected by the malware scanner"


class ScannerUnavailable(Problem):
    """The malware scanner did not answer in time; nothing was stored (fail closed)."""

    status, slug, title = 503, "scanner-unavailable", "Malware scanner unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class ContentCorrupt(Problem):
    """The integrity scrub found the stored bytes no longer match their digest; they are quarantined."""

    status, slug, title = 410, "content-corrupt", "The stored content is corrupt"


class AttachmentLimitReached(Problem):
    status, slug, title = 409, "attachment-limit", "Too many attachments"


class ChangesCursorExpired(Problem):
    """The change feed's retention has deleted events after this cursor: start over (resync)."""

    status, slug, title = 410, "cursor-expired", "The cursor is older than the change feed's retention"


class StoredContentMissing(Problem):
    """A record whose bytes the store does not have: a fault on our side, named and logged."""

    status, slug, title = 500, "blob-missing", "The stored content is missing"


_SIMPLE: tuple[type[Problem], ...] = (
    BadRequest,
    NotFound,
    RequestTimeout,
    Conflict,
    Gone,
    LengthRequired,
    PreconditionFailed,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    UnprocessableContent,
    ServiceUnavailable,
    InsufficientStorage,
)
_BY_STATUS: dict[int, type[Problem]] = {cls.status: cls for cls in _SIMPLE}


# --- Domain exceptions raised by adapters; translated by `to_problem`. -------------------------------


class MediaError(Exception):
    """Base of the domain errors."""


class BlobTooLarge(MediaError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload exceeds the limit of {limit} bytes")
        self.limit = limit


class TypeNotAllowed(MediaError):
    def __init__(self, detected: str, allowed: frozenset[str]) -> None:
        super().__init__(f"the content is {detected}; allowed types are {', '.join(sorted(allowed))}")
        self.detected = detected


class MalformedUpload(MediaError):
    """The request body is not the multipart/form-data we documented."""


class BlobMissing(MediaError):
    """A record points at bytes the store does not have (never expected; logged loudly)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"no blob {sha256}")
        self.sha256 = sha256


class UploadMismatch(MediaError):
    """The bytes of a presigned upload contradict what was signed (size, type or digest)."""

    def __init__(self, reason: str, *, unsupported_type: bool = False) -> None:
        super().__init__(reason)
        self.unsupported_type = unsupported_type


class StorageFull(MediaError):
    """The storage volume ran out of space (ENOSPC / EDQUOT)."""


class BodyStalled(MediaError):
    """The request body stopped arriving for longer than the idle timeout."""

    def __init__(self) -> None:
        super().__init__("the request body stopped arriving; send it again")


class UnstorableInput(MediaError):
    """The database refused a value of the request (the edge checks should have caught it first)."""


class DatabaseUnavailable(MediaError):
    """PostgreSQL did not answer within the configured timeout."""


class StorageUnavailable(MediaError):
    """The object store did not answer in time, or answered with a server error."""


class AttachmentLimit(MediaError):
    """An item, or an external record, has as many attachments as it may have."""

    def __init__(self, which: str, limit: int) -> None:
        super().__init__(f"this {which} already has {limit} attachments, the most it may have")
        self.which = which
        self.limit = limit


class ScanFailed(MediaError):
    """The scanner could not be reached, timed out or answered something unexpected."""


def to_problem(exc: BaseException) -> Problem:
    """Translate any exception to the problem the client sees (unknown ones become a bare 500)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, BlobTooLarge):
        return PayloadTooLarge(str(exc), limit=exc.limit)
    if isinstance(exc, TypeNotAllowed):
        return UnsupportedMediaType(str(exc), detected_type=exc.detected)
    if isinstance(exc, UploadMismatch):
        return UnsupportedMediaType(str(exc)) if exc.unsupported_type else BadRequest(str(exc))
    if isinstance(exc, MalformedUpload):
        return BadRequest(str(exc))
    if isinstance(exc, BlobMissing):
        return StoredContentMissing(
            "This media's bytes are missing from the store; the operators have been told (logged)",
            sha256=exc.sha256,
        )
    if isinstance(exc, StorageFull):
        return InsufficientStorage("The storage volume is full; nothing was stored")
    if isinstance(exc, BodyStalled):
        return RequestTimeout(str(exc))
    if isinstance(exc, UnstorableInput):
        return BadRequest(f"The request holds a value that cannot be stored: {exc}")
    if isinstance(exc, DatabaseUnavailable):
        return ServiceUnavailable("The database is unavailable; retry shortly")
    if isinstance(exc, StorageUnavailable):
        return ServiceUnavailable("The object store is unavailable; retry shortly")
    if isinstance(exc, AttachmentLimit):
        return AttachmentLimitReached(str(exc), limit=exc.limit, counted=exc.which)
    if isinstance(exc, ScanFailed):
        return ScannerUnavailable(
            f"The malware scanner is unavailable ({exc}); nothing was stored, retry shortly"
        )
    return Problem()
