"""Each operation needs exactly the scope the routing table's `security` names, and says which."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from werkzeug.test import Client

from common import routing
from common.tokens import ADMIN, ALL_SCOPES, issue_hs256
from tests.factories import TEST_SECRET, bearer, png, token, upload_body

GUARDED = [r for r in routing.routes() if r.scopes]


def test_every_operation_with_a_token_names_its_scope() -> None:
    for route in routing.routes():
        if (
            route.method == "OPTIONS"
            or route.probe
            or route.internal
            or route.operation_id == "completeUpload"
        ):
            assert route.scopes == (), route  # no token at all (internal: the cluster calls it)
        else:
            assert len(route.scopes) == 1, route


def call(api: Client, route: routing.Route, owner: str, scopes: tuple[str, ...]) -> int:
    """The operation on the caller's own media, with a token holding `scopes`."""
    mine = bearer(token(owner))
    body, ctype = upload_body(png())
    media_id = api.post("/media", data=body, content_type=ctype, headers=mine).get_json()["id"]
    if route.operation_id == "getErasure":  # an erasure's id, not a media's
        media_id = api.delete("/users/me/media", headers=mine).get_json()["id"]
    path = route.path.replace("{id}", media_id).replace("{subject}", "me")
    path = path.replace("{kind}", "recipe").replace("{ref}", "1")
    headers = bearer(token(owner, scopes=scopes))
    if route.operation_id == "patchMedia":
        return api.patch(path, json={"alt": "x"}, headers=headers).status_code
    if route.operation_id == "uploadMedia":
        return api.post(path, data=body, content_type=ctype, headers=headers).status_code
    if route.operation_id == "presignUpload":
        doc = {"filename": "a.png", "content_type": "image/png", "size": 10}
        return api.post(path, json=doc, headers=headers).status_code
    return api.open(path, method=route.method, headers=headers).status_code


@pytest.mark.parametrize("route", GUARDED, ids=[r.operation_id for r in GUARDED])
def test_the_documented_scope_is_needed_and_enough(api: Client, route: routing.Route) -> None:
    (needed,) = route.scopes
    owner = f"scoped-{route.operation_id}"
    others = tuple(s for s in ALL_SCOPES if s not in (needed, ADMIN))
    without = call(api, route, owner, others)
    assert without == 403, f"{route.operation_id} without {needed}"
    assert call(api, route, owner, (needed,)) < 400, f"{route.operation_id} with only {needed}"
    assert call(api, route, owner, (ADMIN,)) < 400, f"{route.operation_id} as admin"


def test_a_missing_scope_names_it_in_www_authenticate(api: Client) -> None:
    resp = api.get("/media", headers=bearer(token(scopes=("media:write",))))
    assert resp.status_code == 403
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="media", error="insufficient_scope", scope="media:read"'
    )
    missing = api.get("/media")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="media"'


def test_a_client_credentials_token_acts_as_the_client(api: Client) -> None:
    """No user: its uploads are owned by `client:<id>`, and it may do what its scopes allow."""
    scopes = ("media:read", "media:write")
    backend = f"recipe-backend-{uuid.uuid4().hex[:8]}"
    client = issue_hs256(TEST_SECRET, backend, scopes, extra={"client_id": backend})
    body, ctype = upload_body(png())
    created = api.post("/media", data=body, content_type=ctype, headers=bearer(client))
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["owner"] == f"client:{backend}"
    listed = api.get("/media", headers=bearer(client)).get_json()["items"]
    assert [i["id"] for i in listed] == [created.get_json()["id"]]
    # Only `azp`, no `sub` at all: another client, which owns nothing yet.
    indexer = jwt.encode(
        {"azp": f"indexer-{uuid.uuid4().hex[:8]}", "scope": "media:read", "exp": int(time.time()) + 60},
        TEST_SECRET,
        algorithm="HS256",
    )
    assert api.get("/media", headers=bearer(indexer)).get_json()["items"] == []
    assert api.delete(f"/media/{created.get_json()['id']}", headers=bearer(client)).status_code == 403
