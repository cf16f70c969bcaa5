"""Text PostgreSQL cannot store (NUL, lone surrogates), through every operation of the routing
table, in every place a client can put it: 4xx problem+json, never 500, nothing stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import pytest
from werkzeug.test import Client

from common import routing
from common.services import Services
from tests.factories import bearer, multipart, png, token, upload_body

NUL = "\x00"
SURROGATE = "\ud800"


@dataclass(frozen=True)
class Attempt:
    operation: str
    where: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True)
class World:
    """What a hostile client of this service has: a token, its own media, a presigned URL."""

    auth: dict[str, str]
    media_id: str
    upload_path: str


@pytest.fixture
def world(api: Client) -> World:
    tok = token()
    body, ctype = upload_body(png())
    media_id = api.post("/media", data=body, content_type=ctype, headers=bearer(tok)).get_json()["id"]
    signed = api.post(
        "/media/uploads",
        json={"filename": "a.png", "content_type": "image/png", "size": 10},
        headers=bearer(tok),
    ).get_json()
    return World(bearer(tok), media_id, urlsplit(signed["url"]).path)


def path_for(route: routing.Route, world: World) -> str:
    if "{token}" in route.path:
        return world.upload_path
    return route.path.replace("{id}", world.media_id)


def query_parameters(route: routing.Route) -> list[str]:
    op = routing.openapi_document()["paths"][route.path][route.method.lower()]
    item = routing.openapi_document()["paths"][route.path]
    params = [*item.get("parameters", []), *op.get("parameters", [])]
    return [p["name"] for p in params if p["in"] == "query"] + ["unknown"]


def attempts(world: World) -> Iterator[Attempt]:
    for route in routing.routes():
        op, method, path = route.operation_id, route.method, path_for(route, world)
        # Query parameters: the declared ones and one nobody declared.
        for name in query_parameters(route):
            yield Attempt(op, f"query {name}", method, f"{path}?{name}={quote(NUL)}", world.auth)
            yield Attempt(op, f"query name {name}", method, f"{path}?{quote(NUL)}{name}=1", world.auth)
        # Path parameters.
        if "{" in route.path:
            yield Attempt(op, "path", method, route.path.split("{")[0] + quote(NUL), world.auth)
        # The token's subject becomes a record's owner.
        for bad in (NUL, SURROGATE):
            yield Attempt(op, f"token subject {bad!r}", method, path, bearer(token(f"user{bad}")))
        # Headers that reach our code.
        for header in ("X-Request-ID", "If-None-Match", "Range", "If-Range", "Origin", "Authorization"):
            yield Attempt(op, f"header {header}", method, path, {**world.auth, header: f"a{NUL}b"})
    # Bodies: JSON string fields (and a key) of the presign request...
    fields = {"filename": "a.png", "content_type": "image/png", "size": 10, "sha256": "0" * 64}
    for name in ("filename", "content_type", "sha256"):
        for bad in ("\\u0000", "\\ud800"):
            doc = json.dumps(fields).replace(f'"{name}": "', f'"{name}": "{bad}')
            yield Attempt(
                "presignUpload",
                f"json {name} {bad}",
                "POST",
                "/media/uploads",
                world.auth,
                doc.encode(),
                "application/json",
            )
    yield Attempt(
        "presignUpload",
        "json key",
        "POST",
        "/media/uploads",
        world.auth,
        b'{"\\ud800": 1}',
        "application/json",
    )
    # ...and the multipart filename, as raw bytes and as RFC 5987 `filename*`.
    for name in ("dish\x00.png", "dish\udfff.png"):
        body, ctype = multipart([("file", name.encode("utf-8", "surrogatepass").decode("latin-1"), png())])
        yield Attempt(
            "uploadMedia", f"multipart filename {name!r}", "POST", "/media", world.auth, body, ctype
        )
    body, ctype = upload_body(png())
    star = body.replace(b'filename="photo.png"', b"filename*=UTF-8''dish%ED%A0%80%00.png")
    yield Attempt("uploadMedia", "multipart filename*", "POST", "/media", world.auth, star, ctype)


def test_unstorable_text_anywhere_is_a_4xx_problem_never_a_500(
    api: Client, services: Services, world: World
) -> None:
    before = api.get("/media?limit=100", headers=world.auth).get_json()["items"]
    seen: list[tuple[str, str, int]] = []
    for attempt in attempts(world):
        resp = api.open(
            attempt.path,
            method=attempt.method,
            headers=attempt.headers,
            data=attempt.body,
            content_type=attempt.content_type,
        )
        seen.append((attempt.operation, attempt.where, resp.status_code))
        assert resp.status_code < 500, f"{attempt}: {resp.status_code} {resp.get_data(as_text=True)[:300]}"
        if resp.status_code >= 400 and attempt.method != "HEAD":
            assert resp.headers["Content-Type"] == "application/problem+json", attempt
    covered = {op for op, _, _ in seen}
    assert covered == {r.operation_id for r in routing.routes()}
    by_case = {(op, where): status for op, where, status in seen}
    assert by_case[("listMedia", "query content_type")] == 400  # NUL reached PostgreSQL before
    assert by_case[("presignUpload", "json filename \\ud800")] == 422  # UnicodeEncodeError before
    assert by_case[("getMedia", f"token subject {SURROGATE!r}")] == 401
    uploads = [(w, s) for (op, w), s in by_case.items() if op == "uploadMedia" and w.startswith("multipart")]
    assert all(s in (201, 400) for _, s in uploads), uploads  # sanitised, or refused as malformed
    # Nothing stored carries such text.
    after = api.get("/media?limit=100", headers=world.auth).get_json()["items"]
    for item in after:
        assert NUL not in item["filename"] and SURROGATE not in json.loads(json.dumps(item["filename"]))
    assert len(after) >= len(before)
