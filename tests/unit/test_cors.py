from __future__ import annotations

import pytest

from common.cors import preflight_headers, response_headers
from common.problems import Forbidden

ALLOWED = frozenset({"https://recipes.example", "http://127.0.0.1:3000"})


def test_actual_responses_carry_cors_headers_only_for_allowed_origins() -> None:
    headers = response_headers(ALLOWED, "https://recipes.example")
    assert headers["Access-Control-Allow-Origin"] == "https://recipes.example"
    assert {"Location", "ETag", "Content-Range"} <= set(headers["Access-Control-Expose-Headers"].split(", "))
    assert headers["Vary"] == "Origin"
    assert response_headers(ALLOWED, "https://evil.example") == {}
    assert response_headers(ALLOWED, None) == {}
    assert response_headers(frozenset(), "https://recipes.example") == {}


def test_preflight_for_an_allowed_origin() -> None:
    headers = preflight_headers(ALLOWED, "http://127.0.0.1:3000", ["PUT"], ["Content-Type"])
    assert headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:3000"
    assert headers["Access-Control-Allow-Methods"] == "OPTIONS, PUT"
    assert headers["Access-Control-Allow-Headers"] == "Content-Type"
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "*" not in headers.values()


def test_preflight_refuses_other_origins_and_answers_plain_options() -> None:
    with pytest.raises(Forbidden, match="not allowed"):
        preflight_headers(ALLOWED, "https://evil.example", ["POST"], ["Authorization"])
    with pytest.raises(Forbidden):
        preflight_headers(frozenset(), "https://recipes.example", ["POST"], ["Authorization"])
    assert preflight_headers(ALLOWED, None, ["GET", "POST"], ["Authorization"]) == {
        "Allow": "GET, OPTIONS, POST"
    }
