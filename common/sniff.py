"""What the bytes are, from their magic numbers (libmagic through python-magic).

libmagic needs more than a signature (an 8-byte PNG header reads as octet-stream), so callers pass
the first `cas.SNIFF_BYTES` of the content, captured while streaming. The answer says what the
content starts like, not that it is safe: downloads still send `nosniff` and a sandbox CSP.
"""

from __future__ import annotations

import magic

from common.problems import TypeNotAllowed

# libmagic spells a few types differently from what browsers and our allow-list expect.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/x-png": "image/png",
    "application/x-pdf": "application/pdf",
}


def detect(prefix: bytes) -> str:
    """The MIME type libmagic reads from the first bytes of a file (module-level calls are thread-safe)."""
    if not prefix:
        return "application/x-empty"
    detected = str(magic.from_buffer(prefix, mime=True)).strip().lower()
    return _ALIASES.get(detected, detected)


def require_allowed(prefix: bytes, allowed: frozenset[str]) -> str:
    detected = detect(prefix)
    if detected not in allowed:
        raise TypeNotAllowed(detected, allowed)
    return detected


def libmagic_version() -> int:
    return int(magic.version())  # type: ignore[no-untyped-call]
