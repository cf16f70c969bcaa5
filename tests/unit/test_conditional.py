from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.conditional import Decision, Representation, evaluate, parse_etags, parse_range
from common.problems import PreconditionFailed, RangeNotSatisfiable

TAG = "a" * 64
MODIFIED = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
REP = Representation(etag=TAG, last_modified=MODIFIED, size=1000)
LM = REP.last_modified_header


def decide(headers: dict[str, str], method: str = "GET", rep: Representation = REP) -> Decision:
    return evaluate(method, headers, rep)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Decision(200, 0, 1000)),
        ({"Range": "bytes=0-99"}, Decision(206, 0, 100)),
        ({"Range": "bytes=500-599"}, Decision(206, 500, 100)),
        ({"Range": "bytes=900-"}, Decision(206, 900, 100)),
        ({"Range": "bytes=0-"}, Decision(206, 0, 1000)),  # Safari's probe gets 206 too
        ({"Range": "bytes=-100"}, Decision(206, 900, 100)),
        ({"Range": "bytes=-5000"}, Decision(206, 0, 1000)),  # suffix longer than the file
        ({"Range": "bytes=990-5000"}, Decision(206, 990, 10)),  # last clamped to the end
        ({"Range": "bytes=0-0"}, Decision(206, 0, 1)),
        ({"Range": "BYTES = 1-2"}, Decision(206, 1, 2)),
        ({"Range": "bytes=0-1,5-6"}, Decision(200, 0, 1000)),  # several ranges: whole body
        ({"Range": "bytes=2000-3000,0-1"}, Decision(200, 0, 1000)),
        ({"Range": "items=0-1"}, Decision(200, 0, 1000)),  # unknown unit ignored
        ({"Range": "bytes=abc"}, Decision(200, 0, 1000)),  # malformed ignored
        ({"Range": "bytes=5-1"}, Decision(200, 0, 1000)),  # invalid spec ignored
        ({"Range": "bytes="}, Decision(200, 0, 1000)),
    ],
)
def test_range_decisions(headers: dict[str, str], expected: Decision) -> None:
    assert decide(headers) == expected


@pytest.mark.parametrize("value", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-1000,2000-"])
def test_unsatisfiable_ranges_give_416_with_the_size(value: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        decide({"Range": value})
    assert info.value.status == 416
    assert info.value.headers() == {"Content-Range": "bytes */1000"}


def test_content_range_end_is_inclusive() -> None:
    assert decide({"Range": "bytes=10-19"}).end == 19


@pytest.mark.parametrize("inm", [f'"{TAG}"', f'W/"{TAG}"', f'"other", "{TAG}"', "*", f' "x" ,W/"{TAG}" '])
def test_if_none_match_gives_304_before_range_is_looked_at(inm: str) -> None:
    assert decide({"If-None-Match": inm, "Range": "bytes=0-1"}) == Decision(304)
    assert decide({"If-None-Match": inm}, method="HEAD") == Decision(304)


def test_if_none_match_that_differs_serves_the_range() -> None:
    assert decide({"If-None-Match": '"nope"', "Range": "bytes=0-1"}) == Decision(206, 0, 2)


def test_if_none_match_wins_over_if_modified_since() -> None:
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert decide({"If-None-Match": '"nope"', "If-Modified-Since": LM}).status == 200
    assert decide({"If-Modified-Since": LM}).status == 304
    assert decide({"If-Modified-Since": old}).status == 200
    assert decide({"If-Modified-Since": "garbage"}).status == 200


def test_if_match_and_if_unmodified_since() -> None:
    assert decide({"If-Match": f'"{TAG}"'}).status == 200
    assert decide({"If-Match": "*"}).status == 200
    with pytest.raises(PreconditionFailed):
        decide({"If-Match": '"other"'})
    with pytest.raises(PreconditionFailed):
        decide({"If-Match": f'W/"{TAG}"'})  # If-Match needs a strong match
    earlier = (MODIFIED - timedelta(days=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    with pytest.raises(PreconditionFailed):
        decide({"If-Unmodified-Since": earlier})
    assert decide({"If-Unmodified-Since": LM}).status == 200


def test_if_range_with_matching_validator_serves_the_range_else_the_whole() -> None:
    assert decide({"Range": "bytes=0-9", "If-Range": f'"{TAG}"'}) == Decision(206, 0, 10)
    assert decide({"Range": "bytes=0-9", "If-Range": LM}) == Decision(206, 0, 10)
    assert decide({"Range": "bytes=0-9", "If-Range": '"stale"'}) == Decision(200, 0, 1000)
    assert decide({"Range": "bytes=0-9", "If-Range": f'W/"{TAG}"'}) == Decision(200, 0, 1000)
    assert decide({"Range": "bytes=0-9", "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"}).status == 200


def test_ranges_apply_to_head_like_get_and_not_to_other_methods() -> None:
    assert decide({"Range": "bytes=0-9"}, method="HEAD") == Decision(206, 0, 10)
    assert decide({"Range": "bytes=0-9"}, method="DELETE") == Decision(200, 0, 1000)


def test_empty_representation_cannot_satisfy_a_range() -> None:
    empty = Representation(etag=TAG, last_modified=MODIFIED, size=0)
    with pytest.raises(RangeNotSatisfiable):
        decide({"Range": "bytes=0-"}, rep=empty)


def test_parsers() -> None:
    assert parse_etags('"a", W/"b"') == [(False, "a"), (True, "b")]
    assert parse_etags("*") is None
    assert parse_range("bytes=0-1, 4-", 10) == [(0, 2), (4, 6)]
    assert parse_range("bytes=20-", 10) == []
    assert parse_range("pages=1-2", 10) is None


def test_last_modified_header_is_http_date_in_gmt() -> None:
    assert LM == "Fri, 02 Jan 2026 03:04:05 GMT"
