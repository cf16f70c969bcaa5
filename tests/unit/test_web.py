from __future__ import annotations

import json

from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from common.problems import PayloadTooLarge, RangeNotSatisfiable
from common.web import content_disposition, problem_response


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


def test_a_problem_is_streamed_problem_json_and_closes_an_unread_upload() -> None:
    request = Request(
        EnvironBuilder(
            method="POST", path="/media", data=b"x" * 10, headers=[("X-Request-ID", "abc-1")]
        ).get_environ()
    )
    response = problem_response(PayloadTooLarge("too big", limit=5), request)
    assert response.is_streamed  # functions-framework's after-request hook skips streamed responses
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Connection"] == "close"
    body = json.loads(b"".join(response.response))  # type: ignore[arg-type]
    assert body["status"] == 413 and body["limit"] == 5 and body["request_id"] == "abc-1"
    assert body["type"].endswith("/payload-too-large")


def test_problem_headers_are_sent() -> None:
    request = Request(EnvironBuilder(method="GET", path="/x").get_environ())
    response = problem_response(RangeNotSatisfiable(42), request)
    assert response.headers["Content-Range"] == "bytes */42"
    assert "Connection" not in response.headers


def test_upload_tokens_are_kept_out_of_the_logs() -> None:
    from common.web import loggable_path

    assert loggable_path("/media/uploads/v1.abc.def.ghi") == "/media/uploads/<token>"
    assert loggable_path("/media/uploads") == "/media/uploads"
    assert loggable_path("/media/0b5c/content") == "/media/0b5c/content"
