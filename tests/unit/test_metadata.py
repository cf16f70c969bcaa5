"""Merge patches, attachment parts, the metadata ETag and the change feed's cursors: pure."""

from __future__ import annotations

from typing import Any

import pytest

from common import changes, metadata
from common.problems import BadRequest, PreconditionFailed, UnprocessableContent


def test_a_merge_patch_sets_removes_and_leaves_alone() -> None:
    assert metadata.merge_patch({}) == {}
    assert metadata.merge_patch({"alt": "  Soup\u0000 ", "caption": None}) == {"alt": "Soup", "caption": None}
    assert metadata.merge_patch({"alt": "   "}) == {"alt": None}  # blank is no text
    assert metadata.merge_patch({"tags": [" Vegan", "soup", "VEGAN"]}) == {"tags": ["vegan", "soup"]}
    assert metadata.merge_patch({"tags": None}) == {"tags": []}
    assert metadata.merge_patch({"filename": "C:\\fakepath\\soup.jpg"}) == {"filename": "soup.jpg"}


@pytest.mark.parametrize(
    "patch",
    [
        [],
        "alt",
        {"status": "ready"},
        {"alt": 5},
        {"alt": "x" * 1001},
        {"caption": "x" * 2001},
        {"tags": "soup"},
        {"tags": [1]},
        {"tags": [""]},
        {"tags": ["x" * 65]},
        {"tags": [f"t{i}" for i in range(33)]},
        {"filename": ""},
        {"filename": None},
    ],
)
def test_what_a_merge_patch_may_not_say(patch: Any) -> None:
    with pytest.raises(UnprocessableContent):
        metadata.merge_patch(patch)


def test_thirty_two_distinct_tags_after_normalising_are_enough() -> None:
    tags = [f"T{i}" for i in range(32)] + [f"t{i}" for i in range(32)]
    assert len(metadata.merge_patch({"tags": tags})["tags"]) == 32


def test_if_match_names_a_version() -> None:
    assert metadata.etag(3) == '"v3"'
    assert metadata.expected_version(None) is None
    assert metadata.expected_version("*") is None
    assert metadata.expected_version('"v3"') == 3
    assert metadata.expected_version('W/"v12"') == 12
    for bad in ('"3"', "v3", '"abc"', '"v3", "v4"'):
        with pytest.raises(PreconditionFailed):
            metadata.expected_version(bad)


def test_attachment_parts() -> None:
    assert metadata.attachment_target("recipe", "123") == ("recipe", "123")
    assert metadata.attachment_target("step", "r-9:2.a~b") == ("step", "r-9:2.a~b")
    for kind, ref in (("Recipe", "1"), ("9x", "1"), ("recipe", ""), ("recipe", "a/b"), ("recipe", "x" * 129)):
        with pytest.raises(BadRequest):
            metadata.attachment_target(kind, ref)
    assert metadata.placement(None) == metadata.Placement(None, None)
    assert metadata.placement({"role": "cover", "position": 2.0}) == metadata.Placement("cover", 2)
    for bad in ({"role": "hero"}, {"position": -1}, {"position": True}, {"position": "1"}, {"x": 1}, [1]):
        with pytest.raises(UnprocessableContent):
            metadata.placement(bad)
    assert metadata.attached_to("recipe:12:3") == ("recipe", "12:3")
    assert metadata.attached_to(None) is None
    with pytest.raises(BadRequest):
        metadata.attached_to("recipe")


def test_flags() -> None:
    assert [metadata.flag("f", v) for v in (None, True, "true", "1", False, "false", "0")] == [
        None,
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(UnprocessableContent):
        metadata.flag("f", "yes")


def test_change_cursors_round_trip_and_refuse_anything_else() -> None:
    cursor = changes.encode_cursor(123456789, 42)
    assert changes.decode_cursor(cursor) == (123456789, 42)
    for bad in ("", "!!", "bm90LWEtY3Vyc29y", changes.encode_cursor(1, 2) + "x"):
        with pytest.raises(BadRequest):
            changes.decode_cursor(bad)
    assert changes.limit_of(None) == changes.DEFAULT_LIMIT
    for bad in ("0", "1001", "-1", "x"):
        with pytest.raises(BadRequest):
            changes.limit_of(bad)


def test_a_cursor_is_expired_only_before_the_purge_horizon() -> None:
    assert not changes.expired(None, (5, 5))  # from the oldest kept
    assert not changes.expired((5, 5), None)
    assert changes.expired((5, 4), (5, 5))
    assert not changes.expired((5, 5), (5, 5))
    assert not changes.expired((6, 1), (5, 5))
