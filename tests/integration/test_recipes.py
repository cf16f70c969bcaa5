"""The recipe application's calls through the local router, in process, against real PostgreSQL and
a real store: describing, attaching, expiry of what nobody attached, the change feed, thumbnails
in listings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.test import Client, TestResponse

from common import maintenance, processing
from common.config import Config
from common.services import build_services
from common.tokens import ADMIN, READ, WRITE, issue_hs256
from tests import support
from tests.factories import TEST_SECRET, bearer, photo, png, token, upload_body

MERGE = "application/merge-patch+json"


def post(api: Client, tok: str, data: bytes, query: str = "") -> dict[str, Any]:
    body, ctype = upload_body(data, "dish.jpg")
    resp = api.post("/media" + query, data=body, content_type=ctype, headers=bearer(tok))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    doc: dict[str, Any] = resp.get_json()
    return doc


def patch(api: Client, tok: str, media_id: str, doc: Any, **headers: str) -> TestResponse:
    return api.patch(f"/media/{media_id}", json=doc, headers={**bearer(tok), **headers}, content_type=MERGE)


def problem(resp: TestResponse, status: int, slug: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = resp.get_json()
    if slug:
        assert doc["type"].endswith("/" + slug), doc
    return doc


def backend_token() -> str:
    """A service client: client credentials, acting for every user."""
    name = f"recipe-backend-{time.time_ns()}"
    return issue_hs256(TEST_SECRET, name, (READ, WRITE), extra={"client_id": name})


def test_describing_is_a_merge_patch_on_a_version(api: Client) -> None:
    tok = token()
    doc = post(api, tok, png(20, 20))
    got = api.get(f"/media/{doc['id']}", headers=bearer(tok))
    assert got.headers["ETag"] == '"v1"' and got.get_json()["tags"] == [] and got.get_json()["alt"] is None

    first = patch(
        api,
        tok,
        doc["id"],
        {"alt": " A bowl of soup ", "tags": ["Soup", "vegan", "soup"]},
        **{"If-Match": '"v1"'},
    )
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.headers["ETag"] == '"v2"'
    body = first.get_json()
    assert (body["alt"], body["tags"], body["version"]) == ("A bowl of soup", ["soup", "vegan"], 2)

    stale = patch(api, tok, doc["id"], {"caption": "lost update"}, **{"If-Match": '"v1"'})
    problem(stale, 412, "precondition-failed")
    second = patch(api, tok, doc["id"], {"caption": "Grandma's", "alt": None, "filename": "../soup.jpg"})
    assert second.status_code == 200
    body = second.get_json()
    assert (body["alt"], body["caption"], body["tags"], body["filename"]) == (
        None,
        "Grandma's",
        ["soup", "vegan"],
        "soup.jpg",
    )
    assert api.get(f"/media/{doc['id']}", headers=bearer(tok)).get_json()["caption"] == "Grandma's"


@pytest.mark.parametrize(
    ("doc", "status"),
    [
        ({"owner": "mallory"}, 422),
        ({"alt": "x" * 1001}, 422),
        ({"caption": "x" * 2001}, 422),
        ({"tags": [f"t{i}" for i in range(33)]}, 422),
        ({"tags": ["x" * 65]}, 422),
        ({"tags": "soup"}, 422),
        ({"filename": ""}, 422),
        (["alt"], 422),
    ],
)
def test_bad_patches_are_clear_422s_and_change_nothing(api: Client, doc: Any, status: int) -> None:
    tok = token()
    media_id = post(api, tok, png(20, 20))["id"]
    problem(patch(api, tok, media_id, doc), status, "unprocessable-content")
    assert api.get(f"/media/{media_id}", headers=bearer(tok)).headers["ETag"] == '"v1"'


def test_patch_needs_the_owner_the_type_and_a_version_that_exists(api: Client) -> None:
    tok = token()
    media_id = post(api, tok, png(20, 20))["id"]
    problem(patch(api, token(), media_id, {"alt": "mine now"}), 404)
    problem(patch(api, tok, media_id, {"alt": "x"}, **{"If-Match": "W/nonsense"}), 412)
    resp = api.patch(f"/media/{media_id}", data="alt=x", headers=bearer(tok), content_type="text/plain")
    problem(resp, 415)
    admin = patch(api, token(scopes=(ADMIN,)), media_id, {"alt": "by the admin"})
    assert admin.status_code == 200


def attach(
    api: Client, tok: str, media_id: str, ref: str, body: Any = None, kind: str = "recipe"
) -> TestResponse:
    path = f"/media/{media_id}/attachments/{kind}/{ref}"
    if body is None:
        return api.put(path, headers=bearer(tok))
    return api.put(path, json=body, headers=bearer(tok))


def test_attachments_order_a_recipes_photos_and_are_idempotent(api: Client) -> None:
    user, backend = token(), backend_token()
    ref = f"r{time.time_ns()}"
    photos = [post(api, user, png(20 + i, 20))["id"] for i in range(3)]
    first = attach(api, user, photos[0], ref, {"role": "cover"})
    assert first.status_code == 201 and first.get_json()["position"] == 0
    again = attach(api, user, photos[0], ref, {"role": "cover"})
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert attach(api, backend, photos[1], ref).get_json()["position"] == 1  # the backend: anyone's
    assert attach(api, backend, photos[2], ref, {"role": "step", "position": 0}).status_code == 201
    problem(attach(api, token(), photos[0], ref), 404)  # another user: not theirs to attach

    listed = api.get(f"/media?attached_to=recipe:{ref}", headers=bearer(backend)).get_json()["items"]
    # position order; equal positions by id
    assert [i["id"] for i in listed] == [*sorted([photos[0], photos[2]]), photos[1]]
    assert [i["attachment"]["position"] for i in listed] == [0, 0, 1]
    reordered = attach(api, backend, photos[1], ref, {"position": 0, "role": "gallery"})
    assert reordered.status_code == 200 and reordered.get_json()["role"] == "gallery"
    assert api.get(f"/media/{photos[1]}", headers=bearer(user)).get_json()["attachments"] == [
        {"kind": "recipe", "ref": ref, "role": "gallery", "position": 0}
    ]

    assert api.delete(f"/media/{photos[2]}/attachments/recipe/{ref}", headers=bearer(user)).status_code == 204
    assert api.delete(f"/media/{photos[2]}/attachments/recipe/{ref}", headers=bearer(user)).status_code == 204
    gone = api.delete(f"/attachments/recipe/{ref}", headers=bearer(backend))
    assert gone.status_code == 200 and gone.get_json() == {"detached": 2}
    assert api.get(f"/media?attached_to=recipe:{ref}", headers=bearer(backend)).get_json()["items"] == []
    problem(api.get("/media?attached_to=recipe", headers=bearer(user)), 400)
    problem(attach(api, user, photos[0], ref, kind="Recipe"), 400)
    problem(attach(api, user, photos[0], ref, {"role": "hero"}), 422)


def test_the_attachment_limits_are_a_clear_409(config_for: Callable[..., Config]) -> None:
    services = build_services(
        config_for(MEDIA_MAX_ATTACHMENTS_PER_MEDIA="2", MEDIA_MAX_ATTACHMENTS_PER_REF="3"), background=False
    )
    try:
        api = support.api_client(services)
        tok = token()
        one = post(api, tok, png(20, 20))["id"]
        assert attach(api, tok, one, "a").status_code == 201
        assert attach(api, tok, one, "b").status_code == 201
        doc = problem(attach(api, tok, one, "c"), 409, "attachment-limit")
        assert doc["limit"] == 2 and doc["counted"] == "media"
        assert attach(api, tok, one, "b", {"position": 5}).status_code == 200  # updating is not adding
        others = [post(api, tok, png(21 + i, 20))["id"] for i in range(3)]
        assert [attach(api, tok, m, "shared").status_code for m in others[:2]] == [201, 201]
        assert attach(api, tok, one, "shared").status_code == 409  # the item's own limit first
        assert attach(api, tok, others[2], "shared").status_code == 201
        fourth = post(api, tok, png(30, 20))["id"]
        assert problem(attach(api, tok, fourth, "shared"), 409, "attachment-limit")["counted"] == "reference"
    finally:
        services.repo.close()


def test_what_nobody_attaches_expires_and_attaching_saves_it(
    config_for: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="media.audit")
    services = build_services(config_for(MEDIA_UNATTACHED_TTL_HOURS="0.0001"), background=False)  # 0.36 s
    try:
        api = support.api_client(services)
        tok = token()
        kept = post(api, tok, png(20, 20))
        saved = post(api, tok, png(21, 21), "?expires_unattached=true")
        doomed = post(api, tok, png(22, 22), "?expires_unattached=true")
        assert kept["expires_at"] is None and saved["expires_at"] and doomed["expires_at"]
        signed = api.post(
            "/media/uploads",
            json={"filename": "d.png", "content_type": "image/png", "size": 10, "expires_unattached": True},
            headers=bearer(tok),
        )
        assert signed.status_code == 201
        ref = f"draft{time.time_ns()}"
        assert attach(api, tok, saved["id"], ref).status_code == 201
        assert api.get(f"/media/{saved['id']}", headers=bearer(tok)).get_json()["expires_at"] is None
        time.sleep(0.5)
        maintenance.maintain(services.config, services.store, services.repo)
        assert api.get(f"/media/{doomed['id']}", headers=bearer(tok)).status_code == 404
        assert api.get(f"/media/{signed.get_json()['media_id']}", headers=bearer(tok)).status_code == 404
        assert api.get(f"/media/{kept['id']}", headers=bearer(tok)).status_code == 200
        assert api.get(f"/media/{saved['id']}", headers=bearer(tok)).status_code == 200
        assert doomed["sha256"] not in support.stored_blobs(services.store)
        expired = [r.__dict__["audit"] for r in caplog.records if r.name == "media.audit"]
        assert {e["media_id"] for e in expired if e["event"] == "expired_unattached"} >= {doomed["id"]}

        # Detaching the last attachment starts the clock again.
        assert (
            api.delete(f"/media/{saved['id']}/attachments/recipe/{ref}", headers=bearer(tok)).status_code
            == 204
        )
        assert api.get(f"/media/{saved['id']}", headers=bearer(tok)).get_json()["expires_at"] is not None
        time.sleep(0.5)
        maintenance.maintain(services.config, services.store, services.repo)
        assert api.get(f"/media/{saved['id']}", headers=bearer(tok)).status_code == 404
    finally:
        services.repo.close()


def feed(api: Client, admin: str, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
    query = f"?limit=1000&after={after}" if after else "?limit=1000"
    resp = api.get("/media/changes" + query, headers=bearer(admin))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    doc = resp.get_json()
    return doc["items"], doc["next_cursor"]


def test_the_change_feed_has_every_change_in_order(api: Client) -> None:
    admin = token(scopes=(ADMIN,))
    _, start = feed(api, admin, None)
    while True:  # to the end of what is there now
        items, nxt = feed(api, admin, start)
        if not items:
            break
        start = nxt
    tok = token()
    doc = post(api, tok, png(20, 20))
    patch(api, tok, doc["id"], {"alt": "soup"})
    ref = f"r{time.time_ns()}"
    attach(api, tok, doc["id"], ref)
    api.delete(f"/media/{doc['id']}/attachments/recipe/{ref}", headers=bearer(tok))
    api.delete(f"/media/{doc['id']}", headers=bearer(tok))
    items, cursor = feed(api, admin, start)
    mine = [(i["type"].rsplit(".", 1)[1], i["data"]) for i in items if i["subject"] == doc["id"]]
    assert [t for t, _ in mine] == ["created", "updated", "attached", "detached", "deleted"]
    updated = next(d for t, d in mine if t == "updated")
    assert updated["alt"] == "soup" and updated["version"] == 2
    attached = next(d for t, d in mine if t == "attached")
    assert attached["attachments"] == [{"kind": "recipe", "ref": ref, "role": None, "position": 0}]
    assert mine[-1][1] == {"id": doc["id"], "owner": doc["owner"]}
    assert feed(api, admin, cursor)[0] == [] and feed(api, admin, cursor)[1] == cursor  # the same cursor
    problem(api.get("/media/changes?after=bm90LWEtY3Vyc29y", headers=bearer(admin)), 400)
    problem(api.get("/media/changes", headers=bearer(tok)), 403)


def test_a_cursor_older_than_the_retention_is_410(config_for: Callable[..., Config]) -> None:
    services = build_services(config_for(MEDIA_CHANGES_RETENTION_DAYS="0.000001"), background=False)
    try:
        api = support.api_client(services)
        admin = token(scopes=(ADMIN,))
        post(api, token(), png(20, 20))
        items, _ = feed(api, admin, None)
        assert items
        old = items[0]["cursor"]
        time.sleep(0.2)
        maintenance.maintain(services.config, services.store, services.repo)
        problem(api.get(f"/media/changes?after={old}", headers=bearer(admin)), 410, "cursor-expired")
        assert api.get("/media/changes", headers=bearer(admin)).status_code == 200  # from the oldest kept
    finally:
        services.repo.close()


def test_a_listing_with_include_variants_carries_each_grid_thumbnail(
    own_database: str, tmp_path: Any
) -> None:
    services = build_services(support.make_config(tmp_path / "data", own_database), background=False)
    try:
        api = support.api_client(services)
        tok = token()
        images = [post(api, tok, photo(700 + 10 * i, 500))["id"] for i in range(2)]
        pdf_free = post(api, tok, png(20, 20))["id"]
        processing.drain(services)
        plain = api.get("/media", headers=bearer(tok)).get_json()["items"]
        assert all("srcset" not in i for i in plain)
        rich = {
            i["id"]: i for i in api.get("/media?include=variants", headers=bearer(tok)).get_json()["items"]
        }
        for media_id in images:
            one = api.get(f"/media/{media_id}", headers=bearer(tok)).get_json()
            assert rich[media_id]["srcset"] == one["srcset"] and rich[media_id]["srcset"]["webp"]
            assert rich[media_id]["blurhash"] == one["blurhash"] and rich[media_id]["width"] == one["width"]
            assert "variants" not in rich[media_id]  # the list is GET /media/{id}'s; srcset says it
            first = urlsplit(rich[media_id]["srcset"]["webp"].split(", ")[0].split(" ")[0])
            assert api.get(f"{first.path}?{first.query}").status_code == 200
        assert rich[pdf_free]["processing"] in ("done", "pending", None)
        events, _ = feed(api, token(scopes=(ADMIN,)), None)
        assert {e["subject"] for e in events if e["type"] == "com.recipes.media.processed"} >= set(images)
        problem(api.get("/media?include=everything", headers=bearer(tok)), 400)
    finally:
        services.repo.close()
