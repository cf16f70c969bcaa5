"""The process function's use cases against real PostgreSQL (a database of the test's own, so the
drain sees only this test's work) and a real store (the volume, or a bucket on moto's S3 server):
once per distinct original, nothing lost when an event is, one worker per job, failures recorded
with the worker alive, and variants released with their original's last record."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from common import backfill, imaging, media, processing, recipes
from common.config import Config
from common.database import digest_lock_key
from common.events import DRAIN_EVENT, Received, RecordingSink
from common.records import UPLOADED_EVENT, MediaRecord, OutboxEvent, Outcome
from common.services import Services, build_services
from common.tokens import DELETE, READ, WRITE, Principal
from tests import support
from tests.conftest import s3_env
from tests.factories import photo, png_declaring, upload_body


@pytest.fixture(params=["fs", "s3"])
def svc(request: pytest.FixtureRequest, own_database: str, tmp_path: Path) -> Iterator[Services]:
    env = s3_env(request.getfixturevalue("s3")) if request.param == "s3" else {}
    config: Config = support.make_config(
        tmp_path / "data", own_database, MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0", **env
    )
    services = build_services(config, background=False)
    yield services
    services.repo.close()


def person() -> Principal:
    return Principal("p-" + uuid.uuid4().hex[:10], frozenset({READ, WRITE, DELETE}))


def upload(services: Services, data: bytes, who: Principal | None = None) -> MediaRecord:
    body, ctype = upload_body(data, "photo.jpg")
    return media.upload_multipart(services, who or person(), io.BytesIO(body), ctype)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the real renders (each one a child process), by the size of the original."""
    made: list[int] = []
    real = imaging.render_isolated

    def counted(
        original: bytes | Path,
        workdir: Path,
        limits: imaging.Limits = imaging.Limits(),  # noqa: B008
    ) -> imaging.Rendition:
        made.append(len(original) if isinstance(original, bytes) else original.stat().st_size)
        return real(original, workdir, limits)

    monkeypatch.setattr(imaging, "render_isolated", counted)
    return made


def test_fifty_users_uploading_one_photo_cause_one_processing_run(svc: Services, renders: list[int]) -> None:
    data = photo(1000, 750)
    records = [upload(svc, data) for _ in range(5)]  # five is fifty, for the job's key
    events = [e for e in svc.repo.unsent_events(100) if e.type == UPLOADED_EVENT]
    assert [e.subject for e in events] == [str(r.id) for r in records]  # one event per record
    for event in events:  # the events all arrive (at least once: here, each twice)
        for _ in range(2):
            processing.handle(svc, Received(UPLOADED_EVENT, f"outbox-{event.id}", event.data))
    assert len(renders) == 1
    state = svc.repo.processing_of(records[0].sha256 or "", imaging.RECIPE)
    assert state is not None and state.state == "done" and (state.width, state.height) == (1000, 750)
    assert {(v.format, v.width) for v in state.variants} >= {("avif", 640), ("webp", 320), ("jpeg", 1000)}
    for v in state.variants:
        with svc.store.open(v.sha256) as f:
            assert f.read(4)  # each variant is a blob of the store


def test_the_detail_is_the_record_its_processing_and_attachments_read_at_once(
    svc: Services, renders: list[int]
) -> None:
    """`GET /media/{id}` reads one statement (`detail`); it says what the separate reads say."""
    who = person()
    record = upload(svc, photo(900, 600), who)
    for event in svc.repo.unsent_events(100):
        if event.type == UPLOADED_EVENT and event.subject == str(record.id):
            processing.handle(svc, Received(UPLOADED_EVENT, f"outbox-{event.id}", event.data))
    for ref, position in (("r-2", {"position": 3, "role": "step"}), ("r-1", {})):
        recipes.attach(svc, who, str(record.id), "recipe", ref, lambda body=position: body)  # type: ignore[misc]
    detail = svc.repo.detail(record.id, imaging.RECIPE)
    assert detail is not None
    assert detail.record == svc.repo.get(record.id)
    assert detail.processing == svc.repo.processing_of(record.sha256 or "", imaging.RECIPE)
    assert detail.processing is not None and detail.processing.state == "done" and detail.processing.variants
    assert list(detail.attachments) == svc.repo.attachments_of(record.id)
    assert [(a.ref, a.role, a.position) for a in detail.attachments] == [("r-1", None, 0), ("r-2", "step", 3)]
    plain = upload(svc, upload_body_bytes(), who)  # no job, no attachment
    bare = svc.repo.detail(plain.id, imaging.RECIPE)
    assert bare is not None and (bare.record, bare.processing, bare.attachments) == (plain, None, ())
    assert svc.repo.detail(uuid.uuid4(), imaging.RECIPE) is None


def upload_body_bytes() -> bytes:
    return b"%PDF-1.4\n" + uuid.uuid4().bytes


class SlowSink(RecordingSink):
    """A sink that answers only once released, as the process function answers once it has
    processed the image."""

    def __init__(self) -> None:
        super().__init__([])
        self.release = threading.Event()
        self.called = threading.Event()

    def deliver(self, events: Sequence[OutboxEvent]) -> list[int]:
        self.called.set()
        self.release.wait(10)
        return super().deliver(events)


def test_a_serving_process_answers_the_upload_before_the_sink_answers_the_event(svc: Services) -> None:
    sink = SlowSink()
    serving = dataclasses.replace(svc, events=sink, publish_in_background=True)
    started = time.monotonic()
    record = upload(serving, photo(640, 480))
    assert time.monotonic() - started < 5  # not the sink's 10 s
    assert sink.called.wait(5)  # the publisher thread is at it meanwhile
    assert sink.accepted == []
    sink.release.set()
    deadline = time.monotonic() + 10
    while not sink.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.subject for e in sink.accepted if e.type == UPLOADED_EVENT] == [str(record.id)]
    while svc.repo.unsent_events(10) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert svc.repo.unsent_events(10) == []  # marked sent: the drain will not send it again


def test_an_event_that_never_arrives_is_processed_by_the_drain(svc: Services, renders: list[int]) -> None:
    svc = dataclasses.replace(svc, events=RecordingSink([], refuse=True))  # the broker is down
    record = upload(svc, photo(800, 600))
    assert svc.repo.unsent_events(10)  # the event waits in the outbox
    drained = processing.handle(svc, Received(DRAIN_EVENT, "ping-1", {}))
    assert drained.done == 1 and drained.published == 0 and len(renders) == 1
    state = svc.repo.processing_of(record.sha256 or "", imaging.RECIPE)
    assert state is not None and state.state == "done"
    back = RecordingSink([])
    svc = dataclasses.replace(svc, events=back)  # the broker is back: the drain delivers what waited
    assert processing.drain(svc).published == 3
    # the processing's own event, and the change feed's: created, then processed (migration 0008)
    assert [e.type for e in back.accepted] == [
        "com.recipes.media.created",
        UPLOADED_EVENT,
        "com.recipes.media.processed",
    ]
    assert svc.repo.unsent_events(10) == []


def test_two_workers_draining_at_once_process_each_job_exactly_once(
    svc: Services, renders: list[int]
) -> None:
    originals = [photo(700 + 10 * i, 500) for i in range(4)]
    for data in originals:
        upload(svc, data)
    results: list[processing.Drained] = []
    start = threading.Barrier(2)

    def worker() -> None:
        start.wait(10)
        results.append(processing.drain(svc))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(renders) == sorted(len(d) for d in originals)  # each original rendered once
    assert sum(r.done for r in results) == 4 and sum(r.lost for r in results) == 0


def test_a_claim_skips_a_job_another_worker_holds_instead_of_waiting_for_it(svc: Services) -> None:
    """SKIP LOCKED: while one worker's claim holds the oldest due job's row, another claim takes
    the next job at once (with FOR UPDATE alone it would wait for the first to commit)."""
    first, second = upload(svc, photo(700, 500)), upload(svc, photo(710, 500))
    with psycopg.connect(svc.config.require_database_url()) as holder:
        held = holder.execute(  # the oldest due job: the one a claim takes first
            "SELECT 1 FROM image_jobs WHERE sha256 = %s AND state = 'pending' FOR UPDATE", (first.sha256,)
        ).fetchall()
        assert len(held) == 1
        started = time.monotonic()
        job = svc.repo.claim_job(60)
        waited = time.monotonic() - started
        holder.rollback()
    assert job is not None and job.sha256 == second.sha256
    assert waited < svc.config.db_timeout_seconds / 2, f"{waited:.2f} s: the claim waited for the held row"
    again = svc.repo.claim_job(60)
    assert again is not None and again.sha256 == first.sha256  # released: the next claim takes it
    assert svc.repo.claim_job(60) is None  # both leased


def test_a_bomb_and_a_truncated_jpeg_end_failed_and_the_worker_goes_on(svc: Services) -> None:
    bomb = upload(svc, png_declaring(100_000, 100_000))
    whole = photo(900, 600)
    broken = upload(svc, whole[: len(whole) // 2])
    fine = upload(svc, photo(640, 480))
    drained = processing.drain(svc)
    assert (drained.failed, drained.done) == (2, 1)
    for record, reason in ((bomb, "over the limit"), (broken, "decode")):
        state = svc.repo.processing_of(record.sha256 or "", imaging.RECIPE)
        assert state is not None and state.state == "failed" and reason in (state.reason or "")
        assert state.variants == ()
    state = svc.repo.processing_of(fine.sha256 or "", imaging.RECIPE)
    assert state is not None and state.state == "done"


def _forget_jobs(svc: Services) -> None:
    """As if the images had been stored before there was a process function (migration 0005)."""
    with psycopg.connect(svc.config.require_database_url(), autocommit=True) as conn:
        conn.execute("DELETE FROM image_jobs")


def test_images_stored_before_processing_existed_get_their_jobs_from_the_backfill(
    svc: Services, renders: list[int]
) -> None:
    from tests.factories import pdf

    originals = [photo(600 + 10 * i, 400) for i in range(3)]
    images = [upload(svc, data) for data in originals]
    shared = upload(svc, originals[0])  # the first one's bytes again: one job for both
    body, ctype = upload_body(pdf(), "recipe.pdf")
    document = media.upload_multipart(svc, person(), io.BytesIO(body), ctype)
    _forget_jobs(svc)
    assert all(svc.repo.processing_of(r.sha256 or "", imaging.RECIPE) is None for r in images)
    rounds = []
    while (enqueued := backfill.backfill(svc.repo, batch=2)) or svc.repo.backfill_position(imaging.RECIPE):
        rounds.append(enqueued)
        assert len(rounds) < 10, rounds
    assert sum(rounds) == 3 and max(rounds) <= 2  # bounded batches; five records, three originals
    assert svc.repo.backfill_position(imaging.RECIPE) is None and backfill.backfill(svc.repo) == 0
    assert processing.drain(svc).done == 3 and len(renders) == 3
    for record in [*images, shared]:
        state = svc.repo.processing_of(record.sha256 or "", imaging.RECIPE)
        assert state is not None and state.state == "done" and state.variants
    assert svc.repo.processing_of(document.sha256 or "", imaging.RECIPE) is None  # not an image


def test_the_backfill_stops_at_a_digest_being_committed_and_goes_on_from_it_next_round(
    svc: Services,
) -> None:
    records = sorted((upload(svc, photo(600 + 10 * i, 400)) for i in range(3)), key=lambda r: r.id)
    _forget_jobs(svc)
    busy = records[1]
    with psycopg.connect(svc.config.require_database_url()) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (digest_lock_key(busy.sha256 or ""),))
        assert backfill.backfill(svc.repo) == 1  # the first record's; the walk stops at the busy one
        assert svc.repo.backfill_position(imaging.RECIPE) == records[0].id
        holder.rollback()
    assert backfill.backfill(svc.repo) == 2
    assert all(svc.repo.processing_of(r.sha256 or "", imaging.RECIPE) is not None for r in records)


def test_a_recipe_bump_processes_every_image_again_and_frees_what_the_old_recipe_made(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.records import VariantRow

    old_recipe = imaging.RECIPE
    record = upload(svc, photo(900, 600))
    sha = record.sha256 or ""
    assert processing.drain(svc).done == 1
    # A variant only recipe 1 made (a format the new recipe dropped, say): its blob must go.
    old = b"RIFF-an-old-recipe-variant-" + uuid.uuid4().bytes
    with svc.store.writer(len(old), label="variant") as writer:
        writer.write(old)
        staged = writer.finish()
        with svc.repo.digest_scope(staged.sha256) as scope:
            svc.store.commit(writer)
            assert scope.add_variant(sha, old_recipe, VariantRow("webp", 99, 66, staged.size, staged.sha256))
    new_recipe = old_recipe + 1
    monkeypatch.setattr(imaging, "RECIPE", new_recipe)
    assert svc.repo.processing_of(sha, new_recipe) is None
    assert backfill.backfill(svc.repo) == 1
    state = svc.repo.processing_of(sha, new_recipe)
    assert state is not None and state.state == "pending"
    assert svc.store.exists(staged.sha256)  # served until the new recipe's variants are made
    assert processing.drain(svc).done == 1
    state = svc.repo.processing_of(sha, new_recipe)
    assert state is not None and state.state == "done" and state.variants
    assert svc.repo.processing_of(sha, old_recipe) is None
    assert not svc.store.exists(staged.sha256)
    assert all(svc.store.exists(v.sha256) for v in state.variants)


def test_deleting_the_last_record_releases_the_variants(svc: Services) -> None:
    data = photo(900, 600)
    alice, bob = person(), person()
    first, second = upload(svc, data, alice), upload(svc, data, bob)
    processing.drain(svc)
    state = svc.repo.processing_of(first.sha256 or "", imaging.RECIPE)
    assert state is not None and state.variants
    blobs = [v.sha256 for v in state.variants]
    media.delete(svc, alice, str(first.id))
    assert all(svc.store.exists(b) for b in blobs)  # bob's record still has them
    media.delete(svc, bob, str(second.id))
    assert svc.repo.processing_of(first.sha256 or "", imaging.RECIPE) is None
    assert not any(svc.store.exists(b) for b in blobs)
    assert not svc.store.exists(first.sha256 or "")


def test_a_store_outage_is_retried_with_backoff_then_recorded_failed(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.problems import StorageUnavailable

    upload(svc, photo(640, 480))

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("the store is down")

    monkeypatch.setattr(svc.store, "open", down)
    outcomes: list[str] = []
    for _ in range(svc.config.process_max_attempts):
        job = svc.repo.claim_job(60)
        assert job is not None  # due again at once: the test does not wait out the backoff
        outcomes.append(processing.run(svc, job))
        _make_due_now(svc)
    assert outcomes == ["retried"] * (svc.config.process_max_attempts - 1) + ["failed"]
    assert svc.repo.claim_job(60) is None


def test_a_retried_job_waits_out_its_backoff_before_it_is_claimed_again(
    svc: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.problems import StorageUnavailable

    record = upload(svc, photo(640, 480))

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("the store is down")

    monkeypatch.setattr(svc.store, "open", down)
    job = svc.repo.claim_job(60)
    assert job is not None and processing.run(svc, job) == "retried"
    with psycopg.connect(svc.config.require_database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - clock_timestamp()), lease_until,"
            " convert_to(reason, 'UTF8') FROM image_jobs WHERE sha256 = %s",
            (record.sha256,),
        ).fetchone()
    assert row is not None
    assert processing.backoff(1) - 2 < float(row[0]) <= processing.backoff(1)  # 10 s from now
    assert row[1] is None and b"the store is down" in bytes(row[2])  # lease given back, reason kept
    assert svc.repo.claim_job(60) is None  # not due yet: no worker spins on an outage
    assert processing.drain(svc).done == 0


def _make_due_now(svc: Services) -> None:
    import psycopg

    with psycopg.connect(svc.config.require_database_url(), autocommit=True) as conn:
        conn.execute("UPDATE image_jobs SET next_attempt_at = now() WHERE state = 'pending'")


def test_the_backoff_doubles_and_is_capped() -> None:
    assert [processing.backoff(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert processing.backoff(30) == 3600


def test_get_media_shows_the_processing_its_size_placeholder_and_variants(svc: Services) -> None:
    from tests.factories import bearer, pdf, token

    api = support.api_client(svc)
    owner = "viewer-" + uuid.uuid4().hex[:8]
    auth = bearer(token(owner))
    body, ctype = upload_body(photo(1000, 750, rotated=True), "phone.jpg")
    created = api.post("/media", data=body, content_type=ctype, headers=auth).get_json()
    before = api.get(f"/media/{created['id']}", headers=auth).get_json()
    assert before["processing"] == "pending" and before["variants"] == [] and before["width"] is None
    processing.drain(svc)
    after = api.get(f"/media/{created['id']}", headers=auth).get_json()
    assert after["processing"] == "done" and after["processing_reason"] is None
    assert (after["width"], after["height"]) == (1000, 750)  # upright
    assert after["blurhash"] and after["dominant_color"].startswith("#")
    assert {(v["format"], v["width"]) for v in after["variants"]} >= {("avif", 640), ("webp", 320)}
    assert "processing" not in api.get("/media", headers=auth).get_json()["items"][0]  # lists stay lean
    body, ctype = upload_body(pdf(), "recipe.pdf")
    document = api.post("/media", data=body, content_type=ctype, headers=auth).get_json()
    shown = api.get(f"/media/{document['id']}", headers=auth).get_json()
    assert shown["processing"] is None and shown["variants"] == []


def test_variants_are_served_by_width_format_and_accept_each_with_its_own_etag(svc: Services) -> None:
    from tests.factories import bearer, token

    api = support.api_client(svc)
    owner = "shown-" + uuid.uuid4().hex[:8]
    auth = bearer(token(owner))
    original = photo(1400, 1050)
    body, ctype = upload_body(original, "dinner.jpg")
    created = api.post("/media", data=body, content_type=ctype, headers=auth).get_json()
    content = f"/media/{created['id']}/content"
    early = api.get(content + "?w=640", headers={**auth, "Accept": "image/avif"})
    assert early.status_code == 200 and early.data == original  # not made yet: the original
    assert early.headers["Vary"] == "Accept"
    processing.drain(svc)
    doc = api.get(f"/media/{created['id']}", headers=auth).get_json()
    made = {(v["format"], v["width"]): v for v in doc["variants"]}

    webp = api.get(content + "?w=600&format=webp", headers=auth)
    assert webp.status_code == 200 and webp.headers["Content-Type"] == "image/webp"
    assert webp.headers["ETag"] == f'"{made["webp", 640]["sha256"]}"' and "Vary" not in webp.headers
    assert webp.data.startswith(b"RIFF") and len(webp.data) == made["webp", 640]["size"]
    for accept, kind in (
        ("image/avif,image/webp,*/*;q=0.8", "image/avif"),
        ("image/webp,*/*", "image/webp"),
        ("*/*", "image/jpeg"),  # the original's own type: the 1280 JPEG variant
    ):
        answer = api.get(content + "?w=1000", headers={**auth, "Accept": accept})
        assert answer.headers["Content-Type"] == kind and answer.headers["Vary"] == "Accept", accept
        etag = answer.headers["ETag"]
        again = api.get(content + "?w=1000", headers={**auth, "Accept": accept, "If-None-Match": etag})
        assert again.status_code == 304 and again.headers["Vary"] == "Accept"
        assert again.headers["ETag"] == etag
    # A 304 is per representation: the WebP's ETag matches the WebP, not the AVIF or the original.
    webp_etag = webp.headers["ETag"]
    same = api.get(content + "?w=600&format=webp", headers={**auth, "If-None-Match": webp_etag})
    assert same.status_code == 304 and same.headers["ETag"] == webp_etag
    other = api.get(content + "?w=600&format=avif", headers={**auth, "If-None-Match": webp_etag})
    assert other.status_code == 200 and other.headers["Content-Type"] == "image/avif"
    wider = api.get(content + "?w=1280&format=webp", headers={**auth, "If-None-Match": webp_etag})
    assert wider.status_code == 200 and wider.headers["ETag"] == f'"{made["webp", 1280]["sha256"]}"'
    whole = api.get(content, headers={**auth, "If-None-Match": webp_etag})
    assert whole.status_code == 200 and whole.data == original
    plain = api.get(content, headers={**auth, "Accept": "image/avif"})
    assert plain.data == original and "Vary" not in plain.headers  # no w, no format: the original
    signed = api.get(made["avif", 320]["url"].removeprefix(svc.config.public_base_url))
    assert signed.status_code == 200 and signed.headers["Content-Type"] == "image/avif"  # no token
    assert doc["srcset"]["webp"].endswith(" 1280w") and doc["srcset"]["webp"].count("w, ") == 2
    assert api.get(content + "?w=0", headers=auth).status_code == 400


def test_a_heic_from_a_phone_is_accepted_when_listed_and_gets_variants(
    own_database: str, tmp_path: Path
) -> None:
    from common.variables import DEFAULT_ALLOWED_TYPES

    allowed = ",".join([*DEFAULT_ALLOWED_TYPES, "image/heic", "image/heif"])
    config = support.make_config(tmp_path / "data", own_database, MEDIA_ALLOWED_TYPES=allowed)
    services = build_services(config, background=False)
    try:
        record = upload(services, photo(1200, 900, "HEIF", rotated=True))
        assert record.content_type == "image/heic"
        assert processing.drain(services).done == 1
        state = services.repo.processing_of(record.sha256 or "", imaging.RECIPE)
        assert state is not None and state.state == "done" and (state.width, state.height) == (1200, 900)
        assert {v.format for v in state.variants} == {"avif", "webp", "jpeg"}
    finally:
        services.repo.close()


@pytest.mark.parametrize("change", ["delete", "patch", "attach"])
def test_a_processed_event_is_ordered_after_a_change_of_its_record_still_running(
    svc: Services, change: str
) -> None:
    """The change feed orders by transaction id. A change of the record that took its id first
    but commits while the processing finishes must not be followed by a `processed` event that
    read the record as it was before the change (migration 0010): the record's last event is
    its last state (a deleted record does not come back to an indexer)."""
    record = upload(svc, photo(320, 240))
    job = svc.repo.claim_job(60, record.sha256)
    assert job is not None
    with psycopg.connect(svc.config.require_database_url(), client_encoding="utf8") as other:
        if change == "delete":  # the change in progress: its transaction id is taken, uncommitted
            other.execute("DELETE FROM media WHERE id = %s", (record.id,))
        elif change == "patch":
            other.execute("UPDATE media SET alt = 'soup', version = version + 1 WHERE id = %s", (record.id,))
        else:  # as sql_recipes.attach does: the record's row lock, then the attachment
            other.execute("SELECT 1 FROM media WHERE id = %s FOR UPDATE", (record.id,))
            other.execute(
                "INSERT INTO attachments (media_id, kind, ref, position) VALUES (%s, 'recipe', 'r-1', 0)",
                (record.id,),
            )
        finished = threading.Thread(target=svc.repo.finish_job, args=(job, Outcome("done"), 5))
        finished.start()
        finished.join(1.0)
        assert finished.is_alive()  # the processed event waits for the change to be decided
        other.commit()
    finished.join(10)
    assert not finished.is_alive()
    mine = [c for c in svc.repo.changes_after(None, 1000) if c.subject == str(record.id)]
    last = mine[-1]
    if change == "delete":
        assert last.type == "com.recipes.media.deleted", [c.type for c in mine]
    elif change == "patch":
        assert last.type == "com.recipes.media.processed" and last.data["alt"] == "soup"
    else:  # the processed event read the attachments after the attach committed
        assert last.type == "com.recipes.media.processed", [c.type for c in mine]
        assert [a["ref"] for a in last.data["attachments"]] == ["r-1"]
