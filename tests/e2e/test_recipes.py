"""A search indexer rebuilds an exact copy of the metadata from the pull feed alone
(`GET /media/changes`), over HTTP against `make run`'s stack, while uploads, edits, attachments and
deletes go on from several clients at once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from common.tokens import ADMIN, DELETE, READ, WRITE
from localdev.harness import LocalStack
from tests.factories import bearer, png, token, upload_body
from tests.support import service_env

FIELDS = ("id", "owner", "filename", "status", "alt", "caption", "tags", "version", "sha256")
WRITERS = 4
ROUNDS = 25  # per writer: bounded in count (and each request in time)


@pytest.fixture
def stack(own_database: str, tmp_path: Path) -> Iterator[LocalStack]:
    env = service_env(
        own_database,
        MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0",
        MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP="0",
        MEDIA_SCRUB_MIB_PER_SECOND="0",
    )
    running = LocalStack(data_dir=tmp_path / "v", env=env).start()
    yield running
    assert running.stop() == 0, running.log()


def writer(base: str, seed: int, failures: list[str]) -> None:
    """Uploads, merge patches, attachments, detachments and deletes in a random mix."""
    rng = random.Random(seed)
    tok = token(f"cook-{seed}", scopes=(READ, WRITE, DELETE))
    mine: list[str] = []
    with requests.Session() as http:
        for n in range(ROUNDS):
            action = (
                rng.choice(["upload", "upload", "patch", "attach", "detach", "delete"]) if mine else "upload"
            )
            try:
                if action == "upload":
                    body, ctype = upload_body(png(16 + rng.randrange(40), 16))
                    resp = http.post(
                        f"{base}/media", data=body, headers={**bearer(tok), "Content-Type": ctype}, timeout=30
                    )
                    mine.append(resp.json()["id"])
                elif action == "patch":
                    doc = {"alt": f"photo {n}", "tags": [f"t{rng.randrange(5)}"], "caption": None}
                    resp = http.patch(
                        f"{base}/media/{rng.choice(mine)}",
                        json=doc,
                        headers={**bearer(tok), "Content-Type": "application/merge-patch+json"},
                        timeout=30,
                    )
                elif action == "attach":
                    resp = http.put(
                        f"{base}/media/{rng.choice(mine)}/attachments/recipe/{seed}-{rng.randrange(3)}",
                        json={"position": rng.randrange(10)},
                        headers=bearer(tok),
                        timeout=30,
                    )
                elif action == "detach":
                    resp = http.delete(
                        f"{base}/media/{rng.choice(mine)}/attachments/recipe/{seed}-{rng.randrange(3)}",
                        headers=bearer(tok),
                        timeout=30,
                    )
                else:
                    victim = mine.pop(rng.randrange(len(mine)))
                    resp = http.delete(f"{base}/media/{victim}", headers=bearer(tok), timeout=30)
                if resp.status_code >= 300:
                    failures.append(f"{action}: {resp.status_code} {resp.text[:200]}")
            except requests.RequestException as exc:
                failures.append(f"{action}: {exc!r}")


class Indexer:
    """What a search indexer does: follow the feed, keep the latest document of each record."""

    def __init__(self, base: str, admin: str) -> None:
        self.base, self.admin = base, admin
        self.docs: dict[str, dict[str, Any]] = {}
        self.cursor: str | None = None
        self.events = 0

    def poll(self) -> int:
        params: dict[str, str | int] = {"limit": 50}
        if self.cursor:
            params["after"] = self.cursor
        resp = requests.get(
            f"{self.base}/media/changes", params=params, headers=bearer(self.admin), timeout=30
        )
        assert resp.status_code == 200, resp.text
        page = resp.json()
        for event in page["items"]:
            self.events += 1
            if event["type"] == "com.recipes.media.deleted":
                self.docs.pop(event["subject"], None)
            else:
                self.docs[event["subject"]] = event["data"]
        self.cursor = page["next_cursor"]
        return len(page["items"])


def truth(base: str, admin: str) -> dict[str, dict[str, Any]]:
    """Every record as the API says it is now (the admin's listing, then each one's attachments)."""
    out: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{base}/media", params=params, headers=bearer(admin), timeout=30).json()
        for item in page["items"]:
            one = requests.get(f"{base}/media/{item['id']}", headers=bearer(admin), timeout=30).json()
            out[item["id"]] = one
        cursor = page["next_cursor"]
        if not cursor:
            return out


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    attachments = sorted((a["kind"], a["ref"], a["role"], a["position"]) for a in doc.get("attachments", []))
    return {**{k: doc.get(k) for k in FIELDS}, "attachments": attachments}


def test_an_indexer_rebuilds_the_metadata_from_the_feed_alone_while_it_changes(stack: LocalStack) -> None:
    admin = token("indexer", scopes=(ADMIN,))
    indexer = Indexer(stack.base, admin)
    failures: list[str] = []
    threads = [threading.Thread(target=writer, args=(stack.base, seed, failures)) for seed in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        indexer.poll()  # following the feed while the writers write
        time.sleep(0.05)
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert failures == []
    while indexer.poll() and time.monotonic() < deadline:  # drain what is left
        pass
    expected = truth(stack.base, admin)
    assert len(expected) > WRITERS  # the writers left records behind (and deleted others)
    assert {k: comparable(v) for k, v in indexer.docs.items()} == {
        k: comparable(v) for k, v in expected.items()
    }
    assert indexer.events > len(expected)
