"""CORS decisions (pure): which headers a response carries for a browser on another origin.

Only exact origins from `MEDIA_CORS_ORIGINS` are allowed; there is no wildcard and no
credentials mode (the API authenticates with bearer tokens and signed URLs, never cookies).
Preflights are answered without authentication or signature checks: browsers send no
credentials on OPTIONS.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.problems import Forbidden

# What browser code may read from our responses (Uppy reads ETag and Location after a PUT).
EXPOSE = (
    "Location",
    "ETag",
    "Content-Range",
    "Content-Length",
    "Content-Disposition",
    "Accept-Ranges",
    "X-Request-ID",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
)
MAX_AGE_SECONDS = 600


def response_headers(allowed: frozenset[str], origin: str | None) -> dict[str, str]:
    """Headers for an actual (non-preflight) response; none unless the origin is allowed."""
    if not origin or origin not in allowed:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": ", ".join(EXPOSE),
        "Vary": "Origin",
    }


def preflight_headers(
    allowed: frozenset[str], origin: str | None, methods: Iterable[str], request_headers: Iterable[str]
) -> dict[str, str]:
    """The answer to `OPTIONS` for a resource supporting `methods` and accepting `request_headers`.

    Without an Origin it is a plain OPTIONS (just `Allow`); an origin that is not allowed is refused
    with 403 so that the browser blocks the request and a human reading the response sees why.
    """
    methods = sorted(set(methods) | {"OPTIONS"})
    headers = {"Allow": ", ".join(methods)}
    if not origin:
        return headers
    if origin not in allowed:
        raise Forbidden(f"The origin {origin} is not allowed (MEDIA_CORS_ORIGINS)")
    headers.update(
        {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ", ".join(request_headers),
            "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
            "Vary": "Origin",
        }
    )
    return headers
