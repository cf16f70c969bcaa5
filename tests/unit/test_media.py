"""The use cases against the in-memory repository and blob store (no database, no filesystem)."""

from __future__ import annotations

import hashlib
import io

import pytest

from common import listing, media
from common.problems import BadRequest, Forbidden, NotFound, TypeNotAllowed
from common.records import ListQuery, MediaRecord
from common.services import Services
from common.tokens import ADMIN, DELETE, READ, WRITE, Principal
from tests.factories import elf, jpeg, memory_services, pdf, png, upload_body
from tests.support import delete_racing_a_completion

ALICE = Principal("alice", frozenset({READ, WRITE, DELETE}))
BOB = Principal("bob", frozenset({READ, WRITE, DELETE}))
ADMIN_P = Principal("root", frozenset({ADMIN}))


@pytest.fixture
def svc() -> Services:
    return memory_services()


def upload(svc: Services, who: Principal, data: bytes, name: str = "a.png") -> MediaRecord:
    body, ctype = upload_body(data, name)
    return media.upload_multipart(svc, who, io.BytesIO(body), ctype)


@pytest.mark.parametrize(
    ("make", "kind"), [(png, "image/png"), (jpeg, "image/jpeg"), (pdf, "application/pdf")]
)
def test_upload_detects_the_type_and_hashes(svc: Services, make: object, kind: str) -> None:
    data = make()  # type: ignore[operator]
    record = upload(svc, ALICE, data, "whatever.bin")
    assert record.content_type == kind
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.size == len(data)
    assert (record.owner, record.status, record.filename) == ("alice", "ready", "whatever.bin")


def test_type_comes_from_the_bytes_not_the_name(svc: Services) -> None:
    with pytest.raises(TypeNotAllowed) as info:
        upload(svc, ALICE, elf(), "x.png")
    assert "image/png" not in info.value.detected
    assert svc.repo.list_media(ListQuery(owner=None, limit=10)) == []


def test_upload_needs_write_scope(svc: Services) -> None:
    with pytest.raises(Forbidden):
        upload(svc, Principal("r", frozenset({READ})), png())


def test_others_media_is_not_found_and_admin_sees_all(svc: Services) -> None:
    record = upload(svc, ALICE, png())
    with pytest.raises(NotFound):
        media.get(svc, BOB, str(record.id))
    with pytest.raises(NotFound):
        media.get(svc, ALICE, "not-a-uuid")
    assert media.get(svc, ADMIN_P, str(record.id)).record == record


def test_delete_keeps_shared_bytes_until_the_last_reference(svc: Services) -> None:
    data = png()
    first = upload(svc, ALICE, data)
    second = upload(svc, BOB, data)
    assert first.id != second.id and first.sha256 == second.sha256
    assert first.sha256 is not None
    media.delete(svc, ALICE, str(first.id))
    assert svc.store.exists(first.sha256)
    with pytest.raises(NotFound):
        media.delete(svc, ALICE, str(second.id))  # not Alice's
    media.delete(svc, BOB, str(second.id))
    assert not svc.store.exists(first.sha256)


def test_a_delete_racing_the_completion_of_its_upload_leaves_no_orphan(svc: Services) -> None:
    digest = delete_racing_a_completion(svc, ALICE, png())
    assert svc.repo.list_media(ListQuery(owner=None, limit=10)) == []
    assert not svc.store.exists(digest)


def test_listing_pages_newest_first_with_a_cursor(svc: Services) -> None:
    ids = [upload(svc, ALICE, png()).id for _ in range(5)]
    upload(svc, BOB, png())
    first = listing.list_media(svc, ALICE, {"limit": "2"})
    assert [r.id for r in first.items] == ids[::-1][:2]
    assert first.next_cursor
    second = listing.list_media(svc, ALICE, {"limit": "2", "cursor": first.next_cursor})
    third = listing.list_media(svc, ALICE, {"limit": "2", "cursor": second.next_cursor or ""})
    assert [r.id for r in second.items + third.items] == ids[::-1][2:]
    assert third.next_cursor is None
    assert len(listing.list_media(svc, ADMIN_P, {}).items) == 6


def test_listing_filters(svc: Services) -> None:
    upload(svc, ALICE, png())
    upload(svc, ALICE, pdf())
    assert [r.content_type for r in listing.list_media(svc, ALICE, {"content_type": "image/"}).items] == [
        "image/png"
    ]
    assert len(listing.list_media(svc, ALICE, {"status": "ready"}).items) == 2
    assert listing.list_media(svc, ALICE, {"status": "pending"}).items == []


@pytest.mark.parametrize(
    "args",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"cursor": "garbage!"},
        {"cursor": "WzFd"},
        {"status": "x"},
    ],
)
def test_bad_listing_parameters_are_400(svc: Services, args: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        listing.list_media(svc, ALICE, args)


def test_read_content_positions_the_file_at_the_range(svc: Services) -> None:
    data = png()
    record = upload(svc, ALICE, data)
    content = media.read_content(svc, ALICE, str(record.id), "GET", {"Range": "bytes=10-19"})
    assert content.decision.status == 206
    assert content.file is not None
    assert content.file.read(10) == data[10:20]
    head = media.read_content(svc, ALICE, str(record.id), "HEAD", {})
    assert head.file is None and head.decision.length == len(data)
