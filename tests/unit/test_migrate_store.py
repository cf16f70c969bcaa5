"""The store migration (`common.migrate_store`) with the in-memory repository and blob stores: the
read-back of each committed copy, the size check of what the destination already holds, records
the scrub quarantined, and the reporter's terminal bar and JSON lines."""

from __future__ import annotations

import io
import json

from common import media, migrate_store, scrub
from common.cas import BlobWriter
from common.memory_repository import InMemoryMediaRepository
from common.memorystore import InMemoryBlobStore
from common.migrate_store import Progress, Reporter, bar
from common.records import MediaRecord, VariantRow
from common.services import Services
from common.tokens import READ, WRITE, Principal
from tests.factories import memory_services, png, upload_body

ALICE = Principal("alice", frozenset({READ, WRITE}))


def upload(svc: Services, data: bytes | None = None) -> str:
    body, ctype = upload_body(data or png())
    record: MediaRecord = media.upload_multipart(svc, ALICE, io.BytesIO(body), ctype)
    assert record.sha256 is not None
    return record.sha256


def parts(svc: Services) -> tuple[InMemoryBlobStore, InMemoryMediaRepository]:
    assert isinstance(svc.store, InMemoryBlobStore)
    assert isinstance(svc.repo, InMemoryMediaRepository)
    return svc.store, svc.repo


def rot(store: InMemoryBlobStore, sha256: str) -> None:
    """Flip one byte of the stored blob: same size, other digest."""
    data = bytearray(store.blobs[sha256])
    data[len(data) // 2] ^= 0xFF
    store.blobs[sha256] = bytes(data)


class RottingStore(InMemoryBlobStore):
    """A destination whose committed objects rot at once (the digests in `rotten`)."""

    def __init__(self, rotten: set[str]) -> None:
        super().__init__()
        self.rotten = rotten

    def commit(self, writer: BlobWriter) -> bool:
        dedup = super().commit(writer)
        sha256 = writer.finish().sha256
        if sha256 in self.rotten:
            rot(self, sha256)
        return dedup


# --- verification -------------------------------------------------------------------------------


def test_a_committed_copy_that_reads_back_wrong_is_removed_and_failed() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    bad, good = upload(svc), upload(svc)
    destination = RottingStore({bad})
    result = migrate_store.migrate(source, destination, repo)
    assert result.failed == [bad]  # once, however many rounds tried it
    assert bad not in destination.blobs and source.blobs[bad]  # the source's copy is untouched
    assert destination.verify(good) is not None and destination.blobs[good] == source.blobs[good]
    assert result.missing == 1


def test_a_copy_that_rotted_once_is_copied_again_by_the_next_round() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    sha256 = upload(svc)
    destination = RottingStore({sha256})

    def heal(event: str, progress: Progress) -> None:
        destination.rotten.clear()  # the fault was passing: the next copy verifies

    result = migrate_store.migrate(source, destination, repo, report=heal)
    assert result.failed == [sha256]  # still reported: the exit status says a copy did not verify
    assert destination.blobs[sha256] == source.blobs[sha256] and result.missing == 0


def test_a_held_copy_of_the_wrong_size_fails_and_is_replaced() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    sha256 = upload(svc)
    destination = InMemoryBlobStore()
    destination.blobs[sha256] = source.blobs[sha256][:-10]  # an earlier copy, truncated
    result = migrate_store.migrate(source, destination, repo)
    assert result.failed == [sha256] and result.skipped == 0
    assert destination.blobs[sha256] == source.blobs[sha256]  # removed, then copied again
    assert result.missing == 0


def test_a_good_held_copy_is_kept_when_the_source_is_the_damaged_one() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    sha256 = upload(svc)
    destination = InMemoryBlobStore()
    destination.blobs[sha256] = source.blobs[sha256]
    source.blobs[sha256] = source.blobs[sha256][:-10]
    result = migrate_store.migrate(source, destination, repo)
    assert result.skipped == 1 and not result.failed and result.missing == 0
    assert destination.verify(sha256) is not None
    assert destination.blobs[sha256] != source.blobs[sha256]


def test_a_held_copy_of_the_same_size_is_skipped_without_reading_it() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    sha256 = upload(svc)
    destination = InMemoryBlobStore()
    destination.blobs[sha256] = source.blobs[sha256]
    rot(destination, sha256)  # same size: the cheap check cannot tell (the scrub will)
    result = migrate_store.migrate(source, destination, repo)
    assert result.skipped == 1 and not result.failed


# --- quarantined records --------------------------------------------------------------------------


def quarantine(svc: Services, sha256: str) -> None:
    """What the integrity scrub does to a blob whose bytes rotted: records corrupt, blob moved."""
    store, repo = parts(svc)
    rot(store, sha256)
    assert scrub.full_pass(store, repo).mismatches == [sha256]
    assert not store.exists(sha256) and repo.statuses_of(sha256) == {"corrupt": 1}


def test_a_quarantined_blob_is_counted_apart_and_does_not_block_the_migration() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    corrupt, fine = upload(svc), upload(svc)
    quarantine(svc, corrupt)
    destination = InMemoryBlobStore()
    result = migrate_store.migrate(source, destination, repo)
    assert result.missing == 0 and not result.failed
    assert result.quarantined == 1 and result.referenced == 1 and result.copied == 1
    assert set(destination.blobs) == {fine}
    dry = migrate_store.migrate(source, destination, repo, dry_run=True)
    assert dry.missing == 0 and dry.quarantined == 1


def test_a_blob_quarantined_while_the_migration_runs_is_not_a_failure() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    digests = sorted([upload(svc), upload(svc)])
    destination = InMemoryBlobStore()

    def scrub_meanwhile(event: str, progress: Progress) -> None:
        if progress.done == 1 and repo.statuses_of(digests[1]) == {"ready": 1}:
            quarantine(svc, digests[1])  # listed as ready, quarantined before its turn

    result = migrate_store.migrate(source, destination, repo, report=scrub_meanwhile)
    assert not result.failed and result.missing == 0 and result.quarantined == 1


def test_a_good_upload_after_the_quarantine_is_migrated() -> None:
    svc = memory_services()
    source, repo = parts(svc)
    data = png()
    sha256 = upload(svc, data)
    quarantine(svc, sha256)
    assert upload(svc, data) == sha256  # a new, ready record, with a good copy
    destination = InMemoryBlobStore()
    result = migrate_store.migrate(source, destination, repo)
    assert result.quarantined == 0 and result.copied == 1 and result.missing == 0
    assert destination.verify(sha256) is not None


def test_corrupt_only_leaves_out_ready_records_and_variants() -> None:
    svc = memory_services()
    _, repo = parts(svc)
    alone, shared, variant = upload(svc), upload(svc), upload(svc)
    for sha256 in (alone, shared, variant):
        repo.mark_corrupt(sha256)
    upload(svc, svc.store.open(shared).read())  # a ready record of the same bytes
    with repo.digest_scope(alone) as scope:  # another original's variant has `variant`'s bytes
        scope.enqueue_processing(alone, 1, "image/png", next(iter(repo.rows)))
        assert scope.add_variant(alone, 1, VariantRow("webp", 16, 16, 10, variant))
    assert repo.corrupt_only([alone, shared, variant, "f" * 64]) == {alone}


# --- the reporter ---------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_on_a_terminal() -> None:
    out = Terminal()
    report = Reporter(out)
    progress = Progress(referenced=4, done=2, copied=1, skipped=1, bytes=3 * 2**20)
    report("progress", progress)
    assert out.getvalue() == f"\r[{'#' * 15}{'.' * 15}] 2/4 copied 1 skipped 1 failed 0 3 MiB"
    report("progress", Progress(referenced=4, done=3))  # within the second: not drawn
    assert out.getvalue().count("\r") == 1
    progress.done, progress.missing, progress.quarantined = 4, 0, 2
    progress.failed.append("a" * 64)
    report("compared", progress)
    assert out.getvalue().endswith(
        f"\r[{'#' * 30}] 4/4 copied 1 skipped 1 failed 1 3 MiB  missing 0 quarantined 2\n"
    )
    assert "{" not in out.getvalue()  # no JSON on a terminal


def test_the_bar_ends_its_line_when_interrupted() -> None:
    assert (
        bar("interrupted", Progress())
        == f"\r[{'.' * 30}] 0/0 copied 0 skipped 0 failed 0 0 MiB  interrupted\n"
    )


def test_json_lines_elsewhere() -> None:
    out = io.StringIO()
    Reporter(out)("compared", Progress(referenced=2, done=2, quarantined=1, missing=0, failed=["b" * 64]))
    (line,) = out.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["event"] == "compared" and doc["failed"] == 1
    assert doc["quarantined"] == 1 and doc["missing"] == 0
