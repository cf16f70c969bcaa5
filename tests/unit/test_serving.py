"""Serving stored bytes, without a server: the disposition of user content and the 307 to an
object store (ranges and preconditions themselves are conditional.py's, tested in
test_conditional.py; the bytes over HTTP in tests/integration/test_api.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from common.conditional import Content, Decision, Representation
from common.serving import content_disposition, content_response


def test_content_disposition_is_rfc_6266_with_a_utf8_filename() -> None:
    value = content_disposition('Crème "brûlée".jpg', "image/jpeg")
    assert (
        value
        == "inline; filename=\"Creme _brulee_.jpg\"; filename*=UTF-8''Cr%C3%A8me%20%22br%C3%BBl%C3%A9e%22.jpg"
    )


def test_only_passive_types_are_inline() -> None:
    assert content_disposition("a.pdf", "application/pdf").startswith("attachment;")
    assert content_disposition("a.svg", "image/svg+xml").startswith("attachment;")
    assert content_disposition("a.png", "image/png").startswith("inline;")


def test_a_redirect_store_answers_307_after_the_preconditions() -> None:
    rep = Representation(etag="ab" * 32, last_modified=datetime(2026, 1, 1, tzinfo=UTC), size=10)
    asked: list[tuple[str, str, str]] = []

    def redirect(content_type: str, disposition: str, cache_control: str) -> str:
        asked.append((content_type, disposition, cache_control))
        return "https://bucket.example/key?X-Amz-Signature=s"

    request = Request(EnvironBuilder(path="/media/x/content").get_environ())
    moved = content_response(Content(rep, Decision(206, 2, 4), None, "image/png", "a.png", redirect), request)
    assert moved.status_code == 307 and moved.headers["Location"].startswith("https://bucket.example/")
    assert moved.headers["Cache-Control"] == "no-store" and moved.get_data() == b""
    assert asked == [
        ("image/png", content_disposition("a.png", "image/png"), "private, max-age=31536000, immutable")
    ]
    cached = content_response(Content(rep, Decision(304), None, "image/png", "a.png", redirect), request)
    assert cached.status_code == 304 and len(asked) == 1  # a 304 is ours, no URL made
