"""The HTTP API through the local router, in process, against real PostgreSQL and a real CAS."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from common.services import Services
from common.tokens import READ, WRITE
from tests.factories import PUBLIC_BASE, bearer, elf, jpeg, multipart, pdf, png, token, upload_body
from tests.support import stored_blobs, temp_leftovers


def post_file(api: Client, tok: str | None, data: bytes, name: str = "photo.png") -> TestResponse:
    body, ctype = upload_body(data, name)
    headers = bearer(tok) if tok else {}
    return api.post("/media", data=body, content_type=ctype, headers=headers)


def blobs(services: Services) -> list[str]:
    return stored_blobs(services.store)


def assert_problem(resp: TestResponse, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = json.loads(resp.get_data())
    assert doc["status"] == status and doc["title"] and doc["type"] and doc["request_id"]
    return doc


@pytest.mark.parametrize(
    ("make", "kind"), [(png, "image/png"), (jpeg, "image/jpeg"), (pdf, "application/pdf")]
)
def test_upload_png_jpeg_pdf(api: Client, services: Services, make: Any, kind: str) -> None:
    data = make()
    tok = token()
    resp = post_file(api, tok, data, "recipe-file")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    doc = resp.get_json()
    assert doc["content_type"] == kind
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["size"] == len(data)
    assert resp.headers["Location"] == doc["links"]["self"] == f"{PUBLIC_BASE}/media/{doc['id']}"
    assert doc["url"] == doc["links"]["content"]
    assert doc["url"].startswith(f"{PUBLIC_BASE}/media/{doc['id']}/content?expires=")
    with services.store.open(doc["sha256"]) as stored:
        assert stored.read() == data
    got = api.get(f"/media/{doc['id']}", headers=bearer(tok)).get_json()
    unsigned = {k: v for k, v in doc.items() if k not in ("url", "links")}
    assert {k: v for k, v in got.items() if k in unsigned} == unsigned
    # GET alone adds what the process function made: images start pending, a PDF is not processed
    assert got["processing"] == (None if kind == "application/pdf" else "pending")
    assert set(got) - set(doc) == {
        "processing",
        "processing_reason",
        "width",
        "height",
        "blurhash",
        "dominant_color",
        "variants",
        "srcset",
        "attachments",
    }


def test_identical_bytes_twice_keep_one_blob(api: Client, services: Services) -> None:
    data = png()
    first = post_file(api, token(), data).get_json()
    second = post_file(api, token(), data, "again.png").get_json()
    assert first["id"] != second["id"]
    assert first["sha256"] == second["sha256"]
    assert len(blobs(services)) == 1


def test_a_record_whose_blob_is_missing_answers_a_named_problem_and_is_logged(
    api: Client, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    tok = token()
    doc = post_file(api, tok, png()).get_json()
    (blob,) = blobs(services)
    services.store.delete(blob)  # what an operator's mistake or a damaged volume does
    for method in ("GET", "HEAD"):
        resp = api.open(f"/media/{doc['id']}/content", method=method, headers=bearer(tok))
        assert resp.status_code == 500
        assert resp.headers["Content-Type"] == "application/problem+json"
        if method == "GET":
            problem = resp.get_json()
            assert problem["type"].endswith("/blob-missing") and problem["sha256"] == doc["sha256"]
    logged = [r for r in caplog.records if r.levelname == "ERROR" and doc["sha256"] in r.getMessage()]
    assert logged and doc["id"] in logged[0].getMessage()
    assert api.get(f"/media/{doc['id']}", headers=bearer(tok)).status_code == 200  # metadata still there


def test_an_executable_named_png_is_415(api: Client, services: Services) -> None:
    doc = assert_problem(post_file(api, token(), elf(), "x.png"), 415)
    assert "image/png" not in doc["detected_type"]
    assert blobs(services) == []


def test_over_the_limit_is_413_and_leaves_nothing(api: Client, services: Services) -> None:
    limit = services.config.max_upload_bytes
    data = png(1024, 1024)  # random pixels barely compress: about 3 MiB
    assert len(data) > limit
    doc = assert_problem(post_file(api, token(), data), 413)
    assert doc["limit"] == limit
    assert blobs(services) == []
    assert temp_leftovers(services.store) == []


def test_not_multipart_is_415_and_a_form_without_file_is_400(api: Client) -> None:
    tok = token()
    assert_problem(api.post("/media", data=png(), content_type="image/png", headers=bearer(tok)), 415)
    body, ctype = multipart([("title", None, b"soup")])
    assert_problem(api.post("/media", data=body, content_type=ctype, headers=bearer(tok)), 400)


@pytest.mark.parametrize(
    ("make_header", "detail"),
    [
        (lambda: {}, "Authorization"),
        (lambda: bearer(token(secret="wrong-secret-" + "z" * 40)), "signature"),
        (lambda: bearer(token(now=time.time() - 7200, ttl_seconds=60)), "expired"),
        (lambda: {"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
    ],
)
def test_bad_credentials_are_401(api: Client, services: Services, make_header: Any, detail: str) -> None:
    body, ctype = upload_body(png())
    resp = api.post("/media", data=body, content_type=ctype, headers=make_header())
    doc = assert_problem(resp, 401)
    assert detail in doc["detail"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert blobs(services) == []
    assert_problem(api.get("/media", headers=make_header()), 401)


def test_missing_scope_is_403(api: Client) -> None:
    resp = post_file(api, token(scopes=[READ]), png())
    assert_problem(resp, 403)
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert_problem(api.get("/media", headers=bearer(token(scopes=[WRITE]))), 403)


def test_another_users_media_is_404_everywhere(api: Client, services: Services) -> None:
    alice, bob = token("alice-" + str(time.time_ns())), token("bob-" + str(time.time_ns()))
    doc = post_file(api, alice, png()).get_json()
    path = f"/media/{doc['id']}"
    missing = "/media/00000000-0000-4000-8000-000000000000"
    for url in (path, f"{path}/content"):
        theirs = assert_problem(api.get(url, headers=bearer(bob)), 404)
        absent = assert_problem(api.get(url.replace(path, missing), headers=bearer(bob)), 404)
        assert theirs["detail"] == absent["detail"]
    assert_problem(api.delete(path, headers=bearer(bob)), 404)
    assert api.get(path, headers=bearer(alice)).status_code == 200
    assert len(blobs(services)) == 1
    assert_problem(api.get("/media/not-a-uuid", headers=bearer(alice)), 404)


def test_admin_sees_and_deletes_anyones_media(api: Client, services: Services) -> None:
    doc = post_file(api, token(), png()).get_json()
    admin = token("admin", scopes=["media:admin"])
    assert api.get(f"/media/{doc['id']}", headers=bearer(admin)).status_code == 200
    assert api.delete(f"/media/{doc['id']}", headers=bearer(admin)).status_code == 204
    assert blobs(services) == []


def test_delete_keeps_a_shared_blob_and_removes_it_with_the_last_record(
    api: Client, services: Services
) -> None:
    data = png()
    a, b = token(), token()
    first = post_file(api, a, data).get_json()
    second = post_file(api, b, data).get_json()
    assert api.delete(f"/media/{first['id']}", headers=bearer(a)).status_code == 204
    assert len(blobs(services)) == 1
    content = api.get(f"/media/{second['id']}/content", headers=bearer(b))
    assert hashlib.sha256(content.get_data()).hexdigest() == second["sha256"]
    assert_problem(api.get(f"/media/{first['id']}", headers=bearer(a)), 404)
    assert_problem(api.delete(f"/media/{first['id']}", headers=bearer(a)), 404)
    assert api.delete(f"/media/{second['id']}", headers=bearer(b)).status_code == 204
    assert blobs(services) == []


class TestDownload:
    @pytest.fixture
    def stored(self, api: Client) -> tuple[str, bytes, dict[str, Any]]:
        data = png(64, 64)
        tok = token()
        doc = post_file(api, tok, data, "Crème brûlée.png").get_json()
        return tok, data, doc

    def get(self, api: Client, stored: tuple[str, bytes, dict[str, Any]], **headers: str) -> TestResponse:
        tok, _, doc = stored
        return api.get(f"/media/{doc['id']}/content", headers={**bearer(tok), **headers})

    def test_whole_download_with_its_headers(self, api: Client, stored: Any) -> None:
        _, data, doc = stored
        resp = self.get(api, stored)
        assert resp.status_code == 200
        assert hashlib.sha256(resp.get_data()).hexdigest() == doc["sha256"]
        h = resp.headers
        assert h["Content-Type"] == "image/png"
        assert h["Content-Length"] == str(len(data))
        assert h["ETag"] == f'"{doc["sha256"]}"'
        assert h["Accept-Ranges"] == "bytes"
        assert h["Cache-Control"] == "private, max-age=31536000, immutable"
        assert h["Last-Modified"].endswith("GMT")
        assert (
            h["Content-Disposition"]
            == "inline; filename=\"Creme brulee.png\"; filename*=UTF-8''Cr%C3%A8me%20br%C3%BBl%C3%A9e.png"
        )
        assert h["X-Content-Type-Options"] == "nosniff"

    @pytest.mark.parametrize(
        ("spec", "span"),
        [
            ("bytes=0-99", (0, 100)),
            ("bytes=100-299", (100, 300)),
            ("bytes=1000-", (1000, None)),
            ("bytes=-500", (-500, None)),
        ],
    )
    def test_ranges(self, api: Client, stored: Any, spec: str, span: tuple[int, int | None]) -> None:
        _, data, _ = stored
        resp = self.get(api, stored, Range=spec)
        assert resp.status_code == 206
        expected = data[span[0] : span[1]]
        assert resp.get_data() == expected
        start = span[0] % len(data)
        assert resp.headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
        assert resp.headers["Content-Length"] == str(len(expected))

    def test_unsatisfiable_range_is_416(self, api: Client, stored: Any) -> None:
        _, data, _ = stored
        resp = self.get(api, stored, Range=f"bytes={len(data)}-")
        assert_problem(resp, 416)
        assert resp.headers["Content-Range"] == f"bytes */{len(data)}"

    def test_multi_range_and_unknown_units_get_the_whole_body(self, api: Client, stored: Any) -> None:
        _, data, _ = stored
        for spec in ("bytes=0-1,5-9", "pages=1-2"):
            resp = self.get(api, stored, Range=spec)
            assert resp.status_code == 200 and resp.get_data() == data

    def test_if_none_match_gives_304_even_with_a_range(self, api: Client, stored: Any) -> None:
        _, _, doc = stored
        resp = self.get(api, stored, **{"If-None-Match": f'"{doc["sha256"]}"', "Range": "bytes=0-9"})
        assert resp.status_code == 304
        assert resp.get_data() == b""
        assert resp.headers["ETag"] == f'"{doc["sha256"]}"'

    def test_if_range_mismatch_gives_200(self, api: Client, stored: Any) -> None:
        _, data, _ = stored
        resp = self.get(api, stored, **{"If-Range": '"stale"', "Range": "bytes=0-9"})
        assert resp.status_code == 200 and resp.get_data() == data

    def test_head_sends_the_headers_of_get_without_a_body(self, api: Client, stored: Any) -> None:
        tok, data, doc = stored
        resp = api.head(f"/media/{doc['id']}/content", headers=bearer(tok))
        assert resp.status_code == 200
        assert resp.get_data() == b""
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["ETag"] == f'"{doc["sha256"]}"'
        ranged = api.head(f"/media/{doc['id']}/content", headers={**bearer(tok), "Range": "bytes=0-9"})
        assert ranged.status_code == 206 and ranged.headers["Content-Range"] == f"bytes 0-9/{len(data)}"


def test_listing_three_pages_with_uploads_arriving_between_pages(api: Client) -> None:
    tok = token()
    before = [post_file(api, tok, png()).get_json()["id"] for _ in range(9)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        url = "/media?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(url, headers=bearer(tok)).get_json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        post_file(api, tok, png())  # a newer upload lands between pages
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert seen == before[::-1]  # newest first, no duplicate, no gap
    everything = api.get("/media?limit=100", headers=bearer(tok)).get_json()
    assert len(everything["items"]) == 12 and everything["next_cursor"] is None


def test_listing_filters_and_bad_parameters(api: Client) -> None:
    tok = token()
    post_file(api, tok, png())
    post_file(api, tok, pdf(), "doc.pdf")
    images = api.get("/media?content_type=image/", headers=bearer(tok)).get_json()["items"]
    assert [i["content_type"] for i in images] == ["image/png"]
    assert len(api.get("/media?status=ready", headers=bearer(tok)).get_json()["items"]) == 2
    for query in ("limit=0", "limit=101", "cursor=nonsense", "status=lost"):
        assert_problem(api.get(f"/media?{query}", headers=bearer(tok)), 400)


def test_unknown_routes_and_methods_are_problem_json(api: Client) -> None:
    assert_problem(api.get("/nope"), 404)
    resp = api.put("/media", data=b"x")
    assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]
