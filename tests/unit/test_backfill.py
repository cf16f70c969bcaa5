"""The processing backfill's walk with the in-memory twins: bounded batches in id order, one job
per distinct stored image, resumed where a busy digest stopped it; and what a newer recipe
releases (no database, no pixels)."""

from __future__ import annotations

import io

from common import backfill, media
from common.records import MediaRecord, VariantRow
from common.services import Services
from common.tokens import READ, WRITE, Principal
from tests.factories import memory_services, pdf, png, upload_body

OWNER = Principal("cook", frozenset({READ, WRITE}))


def stored(svc: Services, data: bytes, name: str = "photo.png") -> MediaRecord:
    body, ctype = upload_body(data, name)
    return media.upload_multipart(svc, OWNER, io.BytesIO(body), ctype)


def test_the_walk_gives_each_stored_image_one_job_in_bounded_batches() -> None:
    svc = memory_services()
    images = [stored(svc, png()) for _ in range(4)]
    stored(svc, pdf(), "recipe.pdf")
    svc.repo.jobs.clear()  # type: ignore[attr-defined]  # stored before there was processing
    rounds = []
    while svc.repo.backfill_position(7) is not None:
        rounds.append(backfill.backfill(svc.repo, recipe=7, batch=2))
        assert len(rounds) < 10
    assert all(n <= 2 for n in rounds) and sum(rounds) == 4
    assert {key for key in svc.repo.jobs} == {(r.sha256, 7) for r in images}  # type: ignore[attr-defined]
    assert backfill.backfill(svc.repo, recipe=7) == 0  # done: nothing more, however often asked


def test_a_busy_digest_ends_the_batch_and_is_the_next_round_s_first() -> None:
    svc = memory_services()
    records = sorted((stored(svc, png()) for _ in range(3)), key=lambda r: r.id)
    svc.repo.jobs.clear()  # type: ignore[attr-defined]
    with svc.repo.digest_scope(records[1].sha256 or ""):  # an upload of those bytes committing
        assert backfill.backfill(svc.repo, recipe=7) == 1
    assert svc.repo.backfill_position(7) == records[0].id
    assert backfill.backfill(svc.repo, recipe=7) == 2
    assert svc.repo.backfill_position(7) is None


def test_a_newer_recipe_releases_what_the_older_ones_made_and_only_that() -> None:
    svc = memory_services()
    sha = "ab" * 32
    old, kept = VariantRow("webp", 320, 240, 10, "cd" * 32), VariantRow("webp", 320, 240, 10, "ef" * 32)
    with svc.repo.digest_scope(sha) as scope:
        assert scope.enqueue_job(sha, 1, "image/png") and not scope.enqueue_job(sha, 1, "image/png")
        assert scope.enqueue_job(sha, 2, "image/png")
        assert scope.add_variant(sha, 1, old) and scope.add_variant(sha, 2, kept)
        assert scope.release_superseded(sha, 2) == [old.sha256]
        assert scope.release_superseded(sha, 2) == []
    assert svc.repo.processing_of(sha, 1) is None and svc.repo.processing_of(sha, 2) is not None
