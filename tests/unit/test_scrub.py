"""The integrity scrub's planning, and rounds with the in-memory repository and blob store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from common import imaging, media, scrub
from common.maintenance import maintain, scrub_tick
from common.memory_repository import InMemoryMediaRepository
from common.memorystore import InMemoryBlobStore
from common.problems import ContentCorrupt
from common.records import CORRUPT_REASON, MediaRecord, ScrubState
from common.scrub import MiB, Pacer, budget_bytes, pace_delay, pass_due, scrub_round
from common.services import Services
from common.tokens import READ, WRITE, Principal
from tests.factories import memory_services, png, upload_body

ALICE = Principal("alice", frozenset({READ, WRITE}))
BOB = Principal("bob", frozenset({READ, WRITE}))
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def upload(svc: Services, who: Principal, data: bytes) -> MediaRecord:
    body, ctype = upload_body(data)
    return media.upload_multipart(svc, who, io.BytesIO(body), ctype)


def parts(svc: Services) -> tuple[InMemoryBlobStore, InMemoryMediaRepository]:
    assert isinstance(svc.store, InMemoryBlobStore)
    assert isinstance(svc.repo, InMemoryMediaRepository)
    return svc.store, svc.repo


def flip(store: InMemoryBlobStore, sha256: str, at: int = 100) -> None:
    data = bytearray(store.blobs[sha256])
    data[at] ^= 0x01
    store.blobs[sha256] = bytes(data)


def mismatches_counted() -> float:
    return REGISTRY.get_sample_value("media_scrub_mismatches_total") or 0.0


@pytest.fixture
def svc() -> Services:
    return memory_services(MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0")


# --- planning ---------------------------------------------------------------------------------------


def test_the_budget_is_the_rate_times_the_period() -> None:
    assert budget_bytes(2, 600) == 1200 * MiB
    assert budget_bytes(0.5, 10) == 5 * MiB
    assert budget_bytes(0, 600) == 0
    assert budget_bytes(2, 0) == 0
    assert budget_bytes(2, -5) == 0


def test_a_pass_is_due_until_finished_then_once_per_interval_from_its_start() -> None:
    assert pass_due(ScrubState(), T0, 168)  # never scrubbed
    in_progress = ScrubState(cursor="ab" * 32, pass_started_at=T0 - timedelta(days=30))
    assert pass_due(in_progress, T0, 168)
    done = ScrubState(pass_started_at=T0 - timedelta(hours=100), pass_finished_at=T0 - timedelta(hours=1))
    assert not pass_due(done, T0, 168)
    assert pass_due(done, T0 + timedelta(hours=68), 168)
    assert not pass_due(done, T0 + timedelta(hours=67, minutes=59), 168)


def test_pacing_sleeps_what_keeps_the_reads_at_the_rate() -> None:
    assert pace_delay(10 * MiB, 1.0, 5 * MiB) == pytest.approx(1.0)
    assert pace_delay(1 * MiB, 2.0, 5 * MiB) == 0.0  # behind the rate already
    assert pace_delay(10 * MiB, 0.0, None) == 0.0
    assert pace_delay(10 * MiB, 0.0, 0) == 0.0


def test_a_pacer_holds_the_average_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(2 * MiB, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        now[0] += 0.01  # reading and hashing a MiB
        pacer(MiB)
    assert now[0] == pytest.approx(5.0)  # 10 MiB at 2 MiB/s
    assert all(s > 0 for s in slept)
    unlimited = Pacer(None, clock=lambda: now[0], sleep=sleep)
    before = len(slept)
    unlimited(100 * MiB)
    assert len(slept) == before


# --- rounds -----------------------------------------------------------------------------------------


def test_a_flipped_byte_is_found_quarantined_and_its_records_marked_corrupt(svc: Services) -> None:
    store, repo = parts(svc)
    records = [upload(svc, ALICE, png(40, 40)) for _ in range(4)]
    victim = records[1]
    assert victim.sha256 is not None
    shared = upload(svc, BOB, store.blobs[victim.sha256])  # another record of the same bytes
    assert shared.sha256 == victim.sha256
    others = {r.sha256: store.blobs[r.sha256] for r in records if r is not victim and r.sha256}
    flip(store, victim.sha256)
    before = mismatches_counted()

    report = scrub_round(svc.config, store, repo, budget=10**12, now=lambda: T0)

    assert report.mismatches == [victim.sha256]
    assert report.checked == 4 and report.missing == [] and report.pass_finished
    assert mismatches_counted() == before + 1
    assert victim.sha256 not in store.blobs
    assert hashlib.sha256(store.quarantined[victim.sha256]).hexdigest() != victim.sha256
    for r in (victim, shared):
        now = repo.get(r.id)
        assert now is not None
        assert (now.status, now.failure_reason) == ("corrupt", CORRUPT_REASON)
    for sha256, data in others.items():
        assert store.blobs[sha256] == data
    assert all(repo.rows[r.id].status == "ready" for r in records if r is not victim)
    with pytest.raises(ContentCorrupt) as info:
        media.read_content(svc, ALICE, str(victim.id), "GET", {})
    assert info.value.status == 410 and info.value.type.endswith("content-corrupt")
    assert media.read_content(svc, ALICE, str(records[0].id), "GET", {}).decision.status == 200

    state = repo.scrub_state()
    assert state.pass_started_at == T0 and state.pass_finished_at == T0
    assert state.pass_mismatches == 1 and state.cursor == max(r.sha256 or "" for r in records)
    again = scrub_round(svc.config, store, repo, budget=10**12, now=lambda: T0 + timedelta(hours=1))
    assert again.idle and again.checked == 0  # the next pass is not due yet
    next_pass = T0 + timedelta(hours=svc.config.scrub_interval_hours)
    later = scrub_round(svc.config, store, repo, budget=10**12, now=lambda: next_pass)
    assert (later.checked, later.mismatches, later.missing) == (3, [], [])  # quarantined: known


def test_the_cursor_resumes_and_the_budget_bounds_each_round(svc: Services) -> None:
    store, repo = parts(svc)
    digests = sorted(r.sha256 for r in (upload(svc, ALICE, png(30, 30)) for _ in range(6)) if r.sha256)
    size = {d: len(store.blobs[d]) for d in digests}

    first = scrub_round(svc.config, store, repo, budget=1, now=lambda: T0)
    assert (first.checked, first.bytes, first.cursor) == (1, size[digests[0]], digests[0])
    budget = size[digests[1]] + size[digests[2]] // 2  # spent after 2 more blobs, not before
    second = scrub_round(svc.config, store, repo, budget=budget, now=lambda: T0)
    assert (second.checked, second.cursor) == (2, digests[2])
    assert not second.pass_finished and repo.scrub_state().pass_finished_at is None
    rest = scrub_round(svc.config, store, repo, budget=10**9, now=lambda: T0 + timedelta(minutes=5))
    assert (rest.checked, rest.pass_finished) == (3, True)
    state = repo.scrub_state()
    assert state.pass_started_at == T0 and state.pass_bytes == sum(size.values())

    later = T0 + timedelta(hours=svc.config.scrub_interval_hours)
    new_pass = scrub_round(svc.config, store, repo, budget=1, now=lambda: later)
    assert (new_pass.checked, new_pass.cursor) == (1, digests[0])  # from the start again
    assert repo.scrub_state().pass_started_at == later


def test_a_missing_blob_is_logged_not_a_mismatch(svc: Services, caplog: pytest.LogCaptureFixture) -> None:
    store, repo = parts(svc)
    gone = upload(svc, ALICE, png())
    kept = upload(svc, ALICE, png())
    assert gone.sha256 is not None
    del store.blobs[gone.sha256]
    report = scrub_round(svc.config, store, repo, budget=10**9, now=lambda: T0)
    assert report.missing == [gone.sha256] and report.mismatches == []
    assert repo.rows[gone.id].status == "ready" and repo.rows[kept.id].status == "ready"
    assert "missing" in caplog.text


def test_a_new_upload_heals_a_same_size_corruption_in_memory_as_on_the_volume(svc: Services) -> None:
    store, _ = parts(svc)
    data = png()
    record = upload(svc, ALICE, data)
    assert record.sha256 is not None
    flip(store, record.sha256)
    upload(svc, BOB, data)  # dedup: the fresh bytes replace the stored ones
    assert store.blobs[record.sha256] == data


def test_the_scrub_tick_scrubs_once_per_round_and_not_at_all_at_zero() -> None:
    off = memory_services(MEDIA_SCRUB_MIB_PER_SECOND="0", MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE="0")
    store, repo = parts(off)
    record = upload(off, ALICE, png())
    assert record.sha256 is not None
    flip(store, record.sha256)
    scrub_tick(off.config, store, repo)
    maintain(off.config, store, repo)  # the housekeeping never scrubs: the scrub has its own thread
    assert repo.scrub_state() == ScrubState() and repo.rows[record.id].status == "ready"

    on = dataclasses.replace(off, config=dataclasses.replace(off.config, scrub_mib_per_second=64.0))
    maintain(on.config, store, repo)
    assert repo.rows[record.id].status == "ready"
    scrub_tick(on.config, store, repo)
    assert repo.rows[record.id].status == "corrupt"
    assert repo.scrub_state().pass_finished_at is not None
    assert "scrub" in repo.task_runs
    assert not repo.claim_task(scrub.TASK, on.config.temp_sweep_interval_seconds)  # this round's taken


def test_a_flipped_variant_puts_its_job_back_to_pending_and_its_record_stays_ready(svc: Services) -> None:
    from common.records import VariantRow

    store, repo = parts(svc)
    record = upload(svc, ALICE, png())
    original = record.sha256 or ""
    with store.writer(64, label="variant") as writer:
        writer.write(b"RIFF....WEBPVP8 a variant")
        variant = writer.finish().sha256
        store.commit(writer)
    with repo.digest_scope(variant) as scope:
        assert scope.add_variant(original, imaging.RECIPE, VariantRow("webp", 320, 240, 25, variant))
    repo.jobs[original, imaging.RECIPE].state = "done"
    flip(store, variant, at=3)
    assert scrub.check_blob(store, repo, variant)[0] == "mismatch"
    state = repo.processing_of(original, imaging.RECIPE)
    assert (
        state is not None and state.state == "pending" and repo.jobs[original, imaging.RECIPE].variants == {}
    )
    assert repo.get(record.id) is not None and repo.get(record.id).status == "ready"  # type: ignore[union-attr]
