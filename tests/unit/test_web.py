from __future__ import annotations

import json

import pytest
from werkzeug import exceptions as wz
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from common.problems import PayloadTooLarge, RangeNotSatisfiable
from common.web import problem_of, problem_response, render_http_exception
from tests.factories import bearer, memory_services, png, token, upload_body
from tests.support import load_routes


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


@pytest.mark.parametrize(
    ("exc", "status", "slug", "header"),
    [
        (wz.BadRequest(), 400, "bad-request", None),
        (wz.NotFound(), 404, "not-found", None),
        (
            wz.MethodNotAllowed(valid_methods=["GET", "HEAD"]),
            405,
            "method-not-allowed",
            ("Allow", "GET, HEAD"),
        ),
        (wz.RequestTimeout(), 408, "request-timeout", None),
        (wz.LengthRequired(), 411, "length-required", None),
        (wz.RequestEntityTooLarge(), 413, "payload-too-large", None),
        (wz.RequestURITooLarge(), 414, "uri-too-long", None),
        (wz.UnsupportedMediaType(), 415, "unsupported-media-type", None),
        (wz.RequestHeaderFieldsTooLarge(), 431, "request-header-fields-too-large", None),
        (wz.NotImplemented(), 501, "not-implemented", None),
        (wz.ServiceUnavailable(retry_after=7), 503, "service-unavailable", ("Retry-After", "7")),
    ],
)
def test_every_http_error_keeps_its_status_and_headers(
    exc: wz.HTTPException, status: int, slug: str, header: tuple[str, str] | None
) -> None:
    problem = problem_of(exc)
    assert problem.status == status
    assert problem.type.endswith("/" + slug)
    if header is not None:
        assert problem.headers()[header[0]] == header[1]
    request = Request(EnvironBuilder(method="GET", path="/x").get_environ())
    response = problem_response(problem, request)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"
    body = json.loads(b"".join(response.response))  # type: ignore[arg-type]
    assert body["status"] == status and body["title"]


def test_the_frameworks_own_errors_render_as_problems() -> None:
    from flask import Flask

    app = Flask("t")
    with app.test_request_context("/favicon.ico"):
        response = render_http_exception(wz.RequestEntityTooLarge())
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"


def test_every_response_is_streamed_so_the_framework_never_reads_an_unasked_body() -> None:
    """A non-streamed response makes functions-framework read the whole request body afterwards."""
    svc = memory_services()
    routes = load_routes("upload")
    auth = list(bearer(token("alice")).items())
    body, ctype = upload_body(png())
    created = routes.dispatch(
        Request(
            EnvironBuilder(
                method="POST",
                path="/media",
                data=body,
                content_type=ctype,
                headers=auth,
            ).get_environ()
        ),
        lambda: svc,
    )
    media_id = json.loads(b"".join(created.response))["id"]  # type: ignore[arg-type]
    deleted = routes.dispatch(
        Request(
            EnvironBuilder(
                method="DELETE",
                path=f"/media/{media_id}",
                data=b"x" * 1024,
                headers=auth,
            ).get_environ()
        ),
        lambda: svc,
    )
    assert deleted.status_code == 204
    assert deleted.is_streamed
