from __future__ import annotations

import pytest

from common.text import problem_in, scrub, unstorable_strings


@pytest.mark.parametrize("fine", ["", "Tarte Tatin", "crème brûlée 🍮", "\ufffd", "\U0001f600"])
def test_unicode_text_is_storable(fine: str) -> None:
    assert problem_in(fine) is None


def test_nul_and_lone_surrogates_are_named() -> None:
    assert problem_in("a\x00b") == "contains a NUL character"
    assert "lone surrogate (U+D800)" in (problem_in("\ud800") or "")
    assert "U+DFFF" in (problem_in("x\udfff") or "")


def test_scrub_replaces_what_cannot_be_stored() -> None:
    assert scrub("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    assert scrub("a\x00b", "_") == "a_b"


def test_every_bad_string_of_a_json_document_is_located() -> None:
    doc = {"filename": "ok", "tags": ["fine", "bad\x00"], "nested": {"x": "\udc00"}, "\ud800": 1, "n": 3}
    assert list(unstorable_strings(doc)) == [
        ("tags[1]", "contains a NUL character"),
        ("nested.x", "contains a lone surrogate (U+DC00), which is not Unicode text"),
        ("a key in the object", "contains a lone surrogate (U+D800), which is not Unicode text"),
    ]
    assert list(unstorable_strings("\x00")) == [("the value", "contains a NUL character")]
    assert list(unstorable_strings({"a": [1, 2.5, None, True]})) == []
