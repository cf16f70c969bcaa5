"""Quota decisions, pure: no database, no request."""

from __future__ import annotations

import pytest

from common.quota import GROW_BYTES, Limits, Usage, exceeded_body, grant, next_request, usage_json

NONE = Usage(0, 0)


def test_unlimited_grants_what_is_wanted() -> None:
    assert grant(Usage(10**12, 10**6), NONE, Limits(None, None), 1, 5, 50) == 50


@pytest.mark.parametrize(
    ("stored", "held", "need", "want", "expected"),
    [
        (Usage(0, 0), NONE, 10, 40, 40),  # room for all it wants
        (Usage(70, 1), NONE, 10, 40, 30),  # room for less than wanted, more than needed
        (Usage(70, 1), Usage(20, 1), 10, 40, 10),  # others' holds count: exactly what is needed
        (Usage(70, 1), Usage(21, 1), 10, 40, None),  # one byte short
        (Usage(100, 1), NONE, 0, 8, 0),  # full, but a hold of nothing yet still fits
        (Usage(101, 1), NONE, 0, 8, None),  # over (the limit was lowered): nothing fits
    ],
)
def test_bytes_are_granted_between_need_and_want(
    stored: Usage, held: Usage, need: int, want: int, expected: int | None
) -> None:
    assert grant(stored, held, Limits(100, None), 1, need, want) == expected


def test_the_file_count_is_checked_with_the_other_holds() -> None:
    limits = Limits(None, 3)
    assert grant(Usage(0, 2), NONE, limits, 1, 0, 10) == 10
    assert grant(Usage(0, 2), Usage(0, 1), limits, 1, 0, 10) is None
    assert grant(Usage(0, 3), NONE, limits, 1, 0, 10) is None


def test_a_streaming_upload_asks_ahead_only_when_its_hold_is_passed() -> None:
    assert next_request(100, 100) is None
    assert next_request(0, 0) is None
    assert next_request(101, 100) == (101, 101 + GROW_BYTES)


def test_the_refusal_and_the_usage_document_say_usage_and_limit() -> None:
    assert exceeded_body(Usage(5, 2), Limits(10, None)) == {
        "usage": {"bytes": 5, "files": 2},
        "limit": {"bytes": 10, "files": None},
    }
    doc = usage_json("alice", Usage(7, 2), Limits(10, 2))
    assert doc["remaining"] == {"bytes": 3, "files": 0}
    assert doc["quota"] == {"bytes": 10, "files": 2}
    assert usage_json("bob", Usage(7, 2), Limits(None, None))["remaining"] == {"bytes": None, "files": None}
