from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace

import pytest

from common.problems import Forbidden, Gone
from common.signing import (
    KeyRing,
    UploadGrant,
    check_download,
    issue_upload_token,
    key_id,
    read_upload_token,
    sign_download,
)

NOW = 1_800_000_000
KEYS = KeyRing("current-secret-" + "c" * 30)
GRANT = UploadGrant(uuid.uuid4(), "alice", 1234, "image/png", "ab" * 32, NOW + 900)


def test_a_token_carries_its_grant() -> None:
    assert read_upload_token(KEYS, issue_upload_token(KEYS, GRANT), NOW) == GRANT
    no_digest = replace(GRANT, sha256=None)
    assert read_upload_token(KEYS, issue_upload_token(KEYS, no_digest), NOW) == no_digest


def _reforge(token: str, **changes: object) -> str:
    """Change signed fields but keep the old signature, as an attacker would."""
    version, kid, payload, sig = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    return f"{version}.{kid}.{forged}.{sig}"


@pytest.mark.parametrize(
    "changes",
    [
        {"m": str(uuid.uuid4())},
        {"o": "mallory"},
        {"s": 999_999_999},
        {"t": "application/pdf"},
        {"h": "cd" * 32},
        {"h": None},
        {"e": NOW + 10**6},
    ],
)
def test_tampering_with_any_field_is_403(changes: dict[str, object]) -> None:
    with pytest.raises(Forbidden):
        read_upload_token(KEYS, _reforge(issue_upload_token(KEYS, GRANT), **changes), NOW)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature bytes
        lambda t: t.replace(t.split(".")[1], "deadbeef", 1),  # unknown key id
        lambda t: "v2" + t[2:],
        lambda t: t + ".extra",
        lambda t: "garbage",
        lambda t: "",
    ],
)
def test_mangled_or_unknown_tokens_are_403(mangle: object) -> None:
    with pytest.raises(Forbidden):
        read_upload_token(KEYS, mangle(issue_upload_token(KEYS, GRANT)), NOW)  # type: ignore[operator]


def test_an_expired_token_is_410() -> None:
    token = issue_upload_token(KEYS, GRANT)
    with pytest.raises(Gone):
        read_upload_token(KEYS, token, GRANT.expires)


def test_rotation_accepts_the_previous_key_only_while_configured() -> None:
    old = KeyRing("old-secret-" + "o" * 30)
    token = issue_upload_token(old, GRANT)
    rotated = KeyRing("new-secret-" + "n" * 30, previous="old-secret-" + "o" * 30)
    assert read_upload_token(rotated, token, NOW) == GRANT
    assert rotated.current_kid == key_id("new-secret-" + "n" * 30)
    assert issue_upload_token(rotated, GRANT).split(".")[1] == rotated.current_kid
    with pytest.raises(Forbidden):
        read_upload_token(KeyRing("new-secret-" + "n" * 30), token, NOW)


def test_download_links() -> None:
    media = uuid.uuid4()
    sig = sign_download(KEYS, media, NOW + 300)
    check_download(KEYS, media, str(NOW + 300), sig, NOW)
    for bad in (
        (uuid.uuid4(), str(NOW + 300), sig),  # another media id
        (media, str(NOW + 301), sig),  # another expiry
        (media, str(NOW + 300), sig[:-1] + ("A" if sig[-1] != "A" else "B")),
        (media, str(NOW + 300), "deadbeef." + sig.split(".", 1)[1]),
        (media, "soon", sig),
        (media, str(NOW + 300), ""),
    ):
        with pytest.raises(Forbidden):
            check_download(KEYS, *bad, now=NOW)
    with pytest.raises(Forbidden, match="expired"):
        check_download(KEYS, media, str(NOW + 300), sig, NOW + 300)
