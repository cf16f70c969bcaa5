"""Which representation of an image a content request gets: pure, no Flask, no store.

`GET /media/{id}/content` sends the original, byte for byte, unless the request asks for a
display size or a format:
- `?w=640&format=webp`: that format at the nearest width at or above 640, capped at the largest;
- `?w=640` alone: the format is negotiated from `Accept`: AVIF, then WebP, each only when the
  client names it (`image/avif`, `image/webp`: browsers do; a wildcard does not count, or every
  `*/*` client would get AVIF), then the original's own type (the JPEG variant of a JPEG), then
  the original itself. Such answers carry `Vary: Accept`;
- `?format=webp` alone: the widest WebP.
A variant that was not made (yet, or ever) falls back to the original: never a 404, and never a
resize on the fly, which is how image services get brought down by resize requests. An original
most browsers cannot show (HEIC/HEIF, `imaging.UNDISPLAYABLE`) has its JPEG stand in for it
instead, whenever there is one: after AVIF and WebP in negotiation, unless `Accept` names the
original's own type; and for a `format` that was not made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.imaging import FORMATS, UNDISPLAYABLE
from common.problems import BadRequest
from common.records import VariantRow

MAX_WIDTH = 10_000
NEGOTIATED = ("avif", "webp")  # in order of preference


@dataclass(frozen=True)
class Wanted:
    width: int | None = None
    format: str | None = None

    @property
    def any(self) -> bool:
        return self.width is not None or self.format is not None


def wanted(args: Mapping[str, str]) -> Wanted:
    """`w` and `format` from the query; BadRequest for values no variant could ever match."""
    raw_width, raw_format = args.get("w"), args.get("format")
    width = None
    if raw_width is not None:
        if not raw_width.isdigit() or not 1 <= int(raw_width) <= MAX_WIDTH:
            raise BadRequest(f"w must be a width in pixels, 1 to {MAX_WIDTH}")
        width = int(raw_width)
    if raw_format is not None and raw_format not in FORMATS:
        raise BadRequest(f"format must be one of {', '.join(FORMATS)}")
    return Wanted(width, raw_format)


def named_types(accept: str | None) -> dict[str, float]:
    """The media types `Accept` names explicitly, with their q (wildcards left out)."""
    named: dict[str, float] = {}
    for item in (accept or "").split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        if not kind or "*" in kind:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        named[kind.lower()] = max(q, named.get(kind.lower(), 0.0))
    return named


@dataclass(frozen=True)
class Choice:
    variant: VariantRow | None  # None: the original
    vary_accept: bool  # the answer depended on Accept


def choose(variants: Sequence[VariantRow], original_type: str, want: Wanted, accept: str | None) -> Choice:
    if not want.any:
        return Choice(None, False)
    by_format: dict[str, list[VariantRow]] = {}
    for v in variants:
        by_format.setdefault(v.format, []).append(v)
    # What stands in for an original most browsers cannot show: its JPEG (None: the original).
    stand_in = _nearest(by_format.get("jpeg", []), want.width) if original_type in UNDISPLAYABLE else None
    if want.format is not None:
        return Choice(_nearest(by_format.get(want.format, []), want.width) or stand_in, False)
    named = named_types(accept)
    for fmt in NEGOTIATED:
        if named.get(FORMATS[fmt], 0.0) > 0 and fmt in by_format:
            return Choice(_nearest(by_format[fmt], want.width), True)
    own = next((fmt for fmt, kind in FORMATS.items() if kind == original_type), None)
    if own is not None and own in by_format:
        return Choice(_nearest(by_format[own], want.width), True)
    if named.get(original_type, 0.0) > 0:  # a client that shows HEIC itself gets the original
        return Choice(None, True)
    return Choice(stand_in, True)


def _nearest(candidates: Sequence[VariantRow], width: int | None) -> VariantRow | None:
    """The narrowest at or above `width`, else the widest (also when no width is asked)."""
    if not candidates:
        return None
    ordered = sorted(candidates, key=lambda v: v.width)
    if width is not None:
        for v in ordered:
            if v.width >= width:
                return v
    return ordered[-1]
