"""Descriptive metadata and attachments, as requests state them: the JSON Merge Patch (RFC 7396) of
`PATCH /media/{id}`, the metadata resource's ETag, and the parts of an attachment. Pure: every
check is here, tested without Flask or a database; the use cases are `recipes.py`."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from common.problems import BadRequest, PreconditionFailed, UnprocessableContent
from common.text import scrub
from common.uploads import safe_filename

MAX_ALT = 1000
MAX_CAPTION = 2000
MAX_TAGS = 32
MAX_TAG = 64
MAX_FILENAME_INPUT = 1000
ROLES = ("cover", "step", "gallery")
MAX_POSITION = 1_000_000
_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_REF = re.compile(r"^[A-Za-z0-9._:~-]{1,128}$")
_ETAG = re.compile(r'^(?:W/)?"v(\d{1,9})"$')
_FIELDS = ("alt", "caption", "tags", "filename")


def etag(version: int) -> str:
    """The metadata resource's ETag: its version (the content's ETag is its SHA-256)."""
    return f'"v{version}"'


def expected_version(if_match: str | None) -> int | None:
    """The version an `If-Match` asks for (None: no precondition); 412 for one no version has."""
    if if_match is None or not if_match.strip():
        return None
    value = if_match.strip()
    if value == "*":
        return None  # any current representation: the record exists (checked by the lookup)
    m = _ETAG.match(value)
    if m is None:
        raise PreconditionFailed("If-Match names no version of this record (send GET /media/{id}'s ETag)")
    return int(m.group(1))


def _text(name: str, value: Any, limit: int) -> str | None:
    if value is None:
        return None  # merge patch: null removes it
    if not isinstance(value, str):
        raise UnprocessableContent(f"`{name}` must be a string or null", field=name)
    text = unicodedata.normalize("NFC", scrub(value, "")).strip()
    if len(text) > limit:
        raise UnprocessableContent(f"`{name}` is at most {limit} characters", field=name, limit=limit)
    return text or None


def normalise_tags(value: Any) -> list[str]:
    """Lower case, trimmed, without duplicates, in the order given; null is no tags."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise UnprocessableContent("`tags` must be an array of strings or null", field="tags")
    tags: list[str] = []
    for raw in value:
        if not isinstance(raw, str):
            raise UnprocessableContent("`tags` must be an array of strings", field="tags")
        tag = unicodedata.normalize("NFC", scrub(raw, "")).strip().lower()
        if not tag:
            raise UnprocessableContent("a tag cannot be empty", field="tags")
        if len(tag) > MAX_TAG:
            raise UnprocessableContent(f"a tag is at most {MAX_TAG} characters: {tag[:20]}…", field="tags")
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise UnprocessableContent(f"at most {MAX_TAGS} tags", field="tags", limit=MAX_TAGS)
    return tags


def merge_patch(patch: Any) -> dict[str, Any]:
    """The columns a JSON Merge Patch of the metadata sets (a member null removes the value; a
    member absent leaves it). Only `alt`, `caption`, `tags` and `filename` may be patched."""
    if not isinstance(patch, dict):
        raise UnprocessableContent("Send a JSON object (a merge patch): {alt?, caption?, tags?, filename?}")
    unknown = sorted(set(patch) - set(_FIELDS))
    if unknown:
        raise UnprocessableContent(
            f"cannot be patched: {', '.join(unknown)} (only {', '.join(_FIELDS)})", fields=unknown
        )
    changes: dict[str, Any] = {}
    if "alt" in patch:
        changes["alt"] = _text("alt", patch["alt"], MAX_ALT)
    if "caption" in patch:
        changes["caption"] = _text("caption", patch["caption"], MAX_CAPTION)
    if "tags" in patch:
        changes["tags"] = normalise_tags(patch["tags"])
    if "filename" in patch:
        name = patch["filename"]
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_FILENAME_INPUT:
            raise UnprocessableContent(
                f"`filename` must be a non-empty string of at most {MAX_FILENAME_INPUT}", field="filename"
            )
        changes["filename"] = safe_filename(name)
    return changes


@dataclass(frozen=True)
class Placement:
    """Where an attachment goes: its role and position (None: last, or kept on an update)."""

    role: str | None
    position: int | None


def attachment_target(kind: str, ref: str) -> tuple[str, str]:
    """`kind` such as recipe or step, `ref` the recipe backend's id: checked, never normalised."""
    if not _KIND.match(kind):
        raise BadRequest("`kind` is 1 to 32 of a-z, 0-9, _ and -, starting with a letter")
    if not _REF.match(ref):
        raise BadRequest("`ref` is 1 to 128 of A-Z, a-z, 0-9 and . _ : ~ -")
    return kind, ref


def placement(body: Any) -> Placement:
    """The optional JSON body of `PUT .../attachments/{kind}/{ref}`: {role?, position?}."""
    if body is None:
        return Placement(None, None)
    if not isinstance(body, dict):
        raise UnprocessableContent("Send a JSON object: {role?, position?}, or no body")
    unknown = sorted(set(body) - {"role", "position"})
    if unknown:
        raise UnprocessableContent(f"unknown member(s): {', '.join(unknown)} (only role, position)")
    role = body.get("role")
    if role is not None and role not in ROLES:
        raise UnprocessableContent(f"`role` is one of {', '.join(ROLES)}, or null")
    position = body.get("position")
    if isinstance(position, float) and position.is_integer():
        position = int(position)
    if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
        raise UnprocessableContent("`position` is an integer from 0")
    if position is not None and not 0 <= position <= MAX_POSITION:
        raise UnprocessableContent(f"`position` is an integer from 0 to {MAX_POSITION}")
    return Placement(role, position)


def flag(name: str, value: Any) -> bool | None:
    """A boolean request option (`true`/`false` in a query, a JSON boolean in a body); None: absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise UnprocessableContent(f"`{name}` is true or false", field=name)


def attached_to(value: str | None) -> tuple[str, str] | None:
    """`?attached_to=recipe:123` as (kind, ref); None when absent."""
    if value is None:
        return None
    kind, sep, ref = value.partition(":")
    if not sep:
        raise BadRequest("`attached_to` is kind:ref, e.g. recipe:123")
    return attachment_target(kind, ref)
