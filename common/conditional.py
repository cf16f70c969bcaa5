"""RFC 9110 decisions for GET/HEAD of stored content: preconditions, then Range. Pure functions.

Where Werkzeug's `send_file` differs from what we want (traps recorded in the core issue):
preconditions are evaluated before Range (a revalidating browser gets 304, not 206); a Range with
an unknown unit, or a malformed one, is ignored (200), not 416; several ranges get 200 with the
whole body rather than 416; `bytes=0-` is a 206 like any other single range.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import BinaryIO, Protocol

from common.problems import PreconditionFailed, RangeNotSatisfiable

_ETAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class HeaderLookup(Protocol):
    """What we need of request headers: a dict, or Werkzeug's case-insensitive `Headers`."""

    def get(self, key: str, /) -> str | None: ...


@dataclass(frozen=True)
class Representation:
    etag: str  # the opaque tag without quotes; always strong here
    last_modified: datetime  # timezone-aware
    size: int

    @property
    def etag_header(self) -> str:
        return f'"{self.etag}"'

    @property
    def last_modified_header(self) -> str:
        return format_datetime(_whole_seconds(self.last_modified).astimezone(UTC), usegmt=True)


@dataclass(frozen=True)
class Decision:
    status: int  # 200, 206 or 304
    start: int = 0
    length: int = 0  # bytes to send from `start`

    @property
    def end(self) -> int:
        """Inclusive last byte, as Content-Range spells it."""
        return self.start + self.length - 1


@dataclass
class Content:
    """What to send for a GET/HEAD of stored bytes: the decision and, when a body goes out, the
    open file positioned at its first byte."""

    representation: Representation
    decision: Decision
    file: BinaryIO | None
    content_type: str
    filename: str
    # Where the client may fetch the bytes itself instead (an object store's presigned GET, given
    # the Content-Type, Content-Disposition and Cache-Control it must answer with), or None.
    redirect: Callable[[str, str, str], str | None] | None = None
    vary: str | None = None  # the request headers the choice of representation depended on


def parse_etags(value: str) -> list[tuple[bool, str]] | None:
    """`If-Match`/`If-None-Match` as (weak, tag) pairs; None means `*` (any current representation)."""
    if value.strip() == "*":
        return None
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(value):
        m = _ETAG.match(value, pos)
        if not m:
            break  # stop at garbage; what was parsed so far still counts
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else None


def _whole_seconds(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


def parse_range(value: str, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable (start, length) spans of a `bytes=` Range; None when the header is to be ignored.

    An empty list means syntactically fine but unsatisfiable (416).
    """
    unit, sep, specs = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None  # RFC 9110 §14.2: a server ignores a range unit it does not understand
    spans: list[tuple[int, int]] = []
    parts = specs.split(",")
    for part in parts:
        m = _RANGE_SPEC.match(part)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            return None  # malformed: ignore the whole header
        first, last = m.group(1), m.group(2)
        if first == "":  # suffix: the last N bytes
            n = int(last)
            if n > 0 and size > 0:
                spans.append((max(0, size - n), min(n, size)))
            continue
        start = int(first)
        if last != "" and int(last) < start:
            return None  # invalid spec: ignore the header (RFC 9110 §14.1.1)
        if start >= size:
            continue  # this one is unsatisfiable; another may not be
        stop = size - 1 if last == "" else min(int(last), size - 1)
        spans.append((start, stop - start + 1))
    return spans


def _if_range_holds(value: str, rep: Representation) -> bool:
    tags = parse_etags(value) if value.lstrip().startswith(("W/", '"')) else []
    if tags:
        weak, tag = tags[0]
        return not weak and tag == rep.etag  # If-Range needs a strong match
    date = _http_date(value)
    return date is not None and date == _whole_seconds(rep.last_modified)


def evaluate(method: str, headers: HeaderLookup, rep: Representation) -> Decision:
    """RFC 9110 §13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, Range."""
    whole = Decision(200, 0, rep.size)
    get_or_head = method in ("GET", "HEAD")

    if_match = headers.get("If-Match")
    if if_match is not None:
        tags = parse_etags(if_match)
        if tags is not None and not any(not weak and tag == rep.etag for weak, tag in tags):
            raise PreconditionFailed("If-Match does not match the current ETag")
    else:
        since = _http_date(headers.get("If-Unmodified-Since"))
        if since is not None and _whole_seconds(rep.last_modified) > since:
            raise PreconditionFailed("The content was modified after If-Unmodified-Since")

    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = parse_etags(if_none_match)
        if tags is None or any(tag == rep.etag for _, tag in tags):  # weak comparison
            if get_or_head:
                return Decision(304)
            raise PreconditionFailed("If-None-Match matches the current ETag")
    elif get_or_head:
        since = _http_date(headers.get("If-Modified-Since"))
        if since is not None and _whole_seconds(rep.last_modified) <= since:
            return Decision(304)

    range_header = headers.get("Range")
    if not get_or_head or range_header is None:
        return whole
    if_range = headers.get("If-Range")
    if if_range is not None and not _if_range_holds(if_range, rep):
        return whole
    spans = parse_range(range_header, rep.size)
    if spans is None:
        return whole
    if not spans:
        raise RangeNotSatisfiable(rep.size)
    if len(range_header.partition("=")[2].split(",")) > 1:
        return whole  # several ranges: the whole body is a valid answer and never a surprise
    start, length = spans[0]
    return Decision(206, start, length)
