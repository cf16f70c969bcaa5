"""HMAC-SHA256 capabilities: presigned upload tokens and signed download links. Pure functions.

Every signature names the key it was made with (`kid`, derived from the key itself), so a key can
be rotated: the current key signs, and the previous one (`MEDIA_PRESIGN_PREVIOUS_SECRET`) still
verifies until the longest-lived capability made with it has expired. Signatures are compared in
constant time.

Upload token: `v1.<kid>.<payload>.<signature>`, base64url parts, over the media id, owner, size,
content type, optional SHA-256 and expiry. Download link: `?expires=<unix>&sig=<kid>.<signature>`
over the media id and expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

from common.problems import Forbidden, Gone

_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(secret: str) -> str:
    """A short public name for a key (not reversible to it)."""
    return hashlib.sha256(b"media-key-id:" + secret.encode()).hexdigest()[:8]


class KeyRing:
    def __init__(self, current: str, previous: str | None = None) -> None:
        self._current = current
        self._keys = {key_id(current): current.encode()}
        if previous and previous != current:
            self._keys[key_id(previous)] = previous.encode()

    @property
    def current_kid(self) -> str:
        return key_id(self._current)

    def sign(self, message: bytes) -> tuple[str, str]:
        kid = self.current_kid
        return kid, _b64(hmac.new(self._keys[kid], message, hashlib.sha256).digest())

    def verify(self, kid: str, message: bytes, signature: str) -> bool:
        key = self._keys.get(kid)
        if key is None:
            return False
        expected = _b64(hmac.new(key, message, hashlib.sha256).digest())
        # compare_digest raises on non-ASCII text; compared as bytes, a client's odd
        # characters are just a wrong signature.
        return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class UploadGrant:
    media_id: uuid.UUID
    owner: str
    size: int
    content_type: str
    sha256: str | None
    expires: int  # unix seconds


def issue_upload_token(keys: KeyRing, grant: UploadGrant) -> str:
    payload = _b64(
        json.dumps(
            {
                "m": str(grant.media_id),
                "o": grant.owner,
                "s": grant.size,
                "t": grant.content_type,
                "h": grant.sha256,
                "e": grant.expires,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
    )
    kid = keys.current_kid
    _, signature = keys.sign(f"{_VERSION}.{kid}.{payload}".encode())
    return f"{_VERSION}.{kid}.{payload}.{signature}"


def read_upload_token(keys: KeyRing, token: str, now: float) -> UploadGrant:
    """The grant a token carries: 403 unless it is ours and untampered, 410 once expired."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION or not token.isascii():
        raise Forbidden("This upload URL is not valid")
    version, kid, payload, signature = parts
    if not keys.verify(kid, f"{version}.{kid}.{payload}".encode(), signature):
        raise Forbidden("This upload URL is not valid (unknown key or bad signature)")
    try:
        fields = json.loads(_unb64(payload))
        grant = UploadGrant(
            media_id=uuid.UUID(fields["m"]),
            owner=str(fields["o"]),
            size=int(fields["s"]),
            content_type=str(fields["t"]),
            sha256=fields["h"],
            expires=int(fields["e"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise Forbidden("This upload URL is not valid") from None
    if now >= grant.expires:
        raise Gone("This upload URL has expired; request a new one")
    return grant


def _download_message(media_id: uuid.UUID, expires: int) -> bytes:
    return f"download.{media_id}.{expires}".encode()


def sign_download(keys: KeyRing, media_id: uuid.UUID, expires: int) -> str:
    kid, signature = keys.sign(_download_message(media_id, expires))
    return f"{kid}.{signature}"


def check_download(keys: KeyRing, media_id: uuid.UUID, expires: str, sig: str, now: float) -> None:
    """Raise 403 unless `sig` signs this media id and expiry and the link has not expired."""
    try:
        when = int(expires)
    except ValueError:
        raise Forbidden("This download link is not valid") from None
    kid, _, signature = sig.partition(".")
    if not keys.verify(kid, _download_message(media_id, when), signature):
        raise Forbidden("This download link is not valid")
    if now >= when:
        raise Forbidden("This download link has expired")
