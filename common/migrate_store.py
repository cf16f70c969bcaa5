"""Move every referenced blob from one store to the other while the service keeps serving:
`python -m common.migrate_store --from fs --to s3` (`make migrate-store FROM=fs TO=s3`), or back.

1. Copy: the referenced digests in order (from the database), each streamed from the source into
   the destination through the destination's own writer, which hashes the bytes on the way: a
   digest they do not match is not committed. The commit takes the digest's lock and checks that
   a record still references it, so a delete in the meantime leaves no copy behind. Then the
   committed copy is read back from the destination and hashed again (`BlobStore.verify`, in
   chunks): a copy that does not match is removed from the destination (only there, under the
   digest's lock, after a second read confirms it) and the digest is recorded as failed.
   A digest the destination already has is skipped, so an interrupted run (Ctrl-C, a lost pod)
   resumes where it stopped; its size is compared with the source's first (cheap), and when they
   differ the destination's copy is hashed: a bad one is removed and the digest fails (the next
   round copies it again), a good one stays (it is the source that is damaged).
2. Compare (a dry run; `--dry-run` does only this): every referenced digest is looked for in the
   destination. Uploads that arrived during the copy are found here and copied in another round
   (at most three, each compared again after it). It ends with the number still missing: 0 means
   the operator may switch `MEDIA_STORAGE`. Uploads in the minutes between the comparison and the
   switch still land in the old store: run it once more after the switch (it copies only what is
   missing).

Quarantined blobs: a digest that only `corrupt` records reference (the integrity scrub moved its
blob to quarantine, `scrub.py`) is neither copied nor looked for; it is counted as `quarantined`
instead, so it does not keep the run from ending with 0 missing. Such records answer 410 on
either store. A good upload of the same bytes since makes a ready record: the digest is copied.

Progress: a bar on a terminal, JSON lines otherwise (one per second at most, and at the end).
Exit status 0 when nothing is missing, 1 when something is (or a copy did not verify), 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TextIO

from common import scrub
from common.cas import BlobStore
from common.config import Config, ConfigError
from common.problems import BlobMissing, DatabaseUnavailable, StorageUnavailable
from common.repository import MediaRepository

log = logging.getLogger("media.migrate_store")

PAGE = 500
CHUNK = 1024 * 1024
ROUNDS = 3

Outcome = Literal["copied", "skipped", "gone", "quarantined"]


class CopyFailed(Exception):
    """A digest that could not be copied: missing from the source, or a copy that did not verify."""


@dataclass
class Progress:
    referenced: int = 0  # digests to copy in this round (quarantined ones left out)
    done: int = 0
    copied: int = 0
    skipped: int = 0
    gone: int = 0  # deleted while the migration ran
    quarantined: int = 0  # only corrupt records reference it: neither copied nor missing
    failed: list[str] = field(default_factory=list)  # did not verify, or missing from the source
    bytes: int = 0
    missing: int = -1  # after the comparison


def referenced(repo: MediaRepository) -> tuple[list[str], int]:
    """The referenced digests to migrate, in order, and how many were left out as quarantined."""
    digests: list[str] = []
    quarantined = 0
    after = ""
    while page := repo.digests_after(after, PAGE):
        known = repo.corrupt_only(page)
        digests.extend(d for d in page if d not in known)
        quarantined += len(known)
        after = page[-1]
    return digests, quarantined


def copy_one(
    source: BlobStore, destination: BlobStore, repo: MediaRepository, sha256: str
) -> tuple[Outcome, int]:
    """Stream one blob across and verify the committed copy: the outcome and the bytes copied.
    CopyFailed when the source lacks it or a copy does not verify (no bad copy is left behind)."""
    held = destination.size(sha256)
    if held is not None:
        return _check_held(source, destination, repo, sha256, held), 0
    try:
        reader = source.open(sha256)
    except BlobMissing:
        return _absent_from_source(repo, sha256), 0
    with reader, destination.writer(max_bytes=2**62, label="migrate") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
        staged = writer.finish()
        if staged.sha256 != sha256:
            raise CopyFailed(f"{sha256}: the source's bytes hash to {staged.sha256}; not committed")
        with repo.digest_scope(sha256) as scope:
            if scope.references(sha256) == 0:
                return "gone", 0  # its last record went while we copied
            destination.commit(writer)
    outcome = _read_back(destination, repo, sha256)
    return outcome, staged.size if outcome == "copied" else 0


def _absent_from_source(repo: MediaRepository, sha256: str) -> Outcome:
    with repo.digest_scope(sha256) as scope:
        users = scope.references(sha256)
        if users == 0:
            return "gone"  # deleted meanwhile: nothing to copy
        if scrub.quarantined(repo, sha256, users):
            return "quarantined"  # the scrub quarantined it since the digests were listed
    raise CopyFailed(f"{sha256}: referenced, but the source store does not have it")


def _read_back(destination: BlobStore, repo: MediaRepository, sha256: str) -> Outcome:
    """Hash the committed copy as the destination returns it; remove it if it does not match."""
    found = destination.verify(sha256)
    if found is not None and found.matches(sha256):
        return "copied"
    with repo.digest_scope(sha256) as scope:
        again = destination.verify(sha256)  # another writer of the destination may have healed it
        if again is not None and again.matches(sha256):
            return "copied"
        if again is not None:
            destination.delete(sha256)  # the destination's bad copy only; the source is untouched
        if scope.references(sha256) == 0:
            return "gone"
    what = f"{again.size} bytes hashing to {again.actual}" if again is not None else "nothing"
    raise CopyFailed(f"{sha256}: the committed copy reads back as {what}; removed from the destination")


def _check_held(
    source: BlobStore, destination: BlobStore, repo: MediaRepository, sha256: str, held: int
) -> Outcome:
    """A digest the destination already has: skipped if its size is the source's. Otherwise its
    copy is hashed; a good one stays (the source's is damaged), a bad one is removed: failed."""
    expected = source.size(sha256)
    if expected is None or expected == held:
        return "skipped"
    with repo.digest_scope(sha256):
        found = destination.verify(sha256)
        if found is None:
            return "skipped"  # removed meanwhile: the comparison finds it missing
        if found.matches(sha256):
            log.warning("%s: the source's copy has %d bytes instead of %d; kept", sha256, expected, held)
            return "skipped"
        destination.delete(sha256)
    raise CopyFailed(
        f"{sha256}: the destination held {held} bytes hashing to {found.actual}, the source has"
        f" {expected}; removed from the destination, to be copied again"
    )


def migrate(
    source: BlobStore,
    destination: BlobStore,
    repo: MediaRepository,
    *,
    dry_run: bool = False,
    report: Callable[[str, Progress], None] = lambda event, progress: None,
    progress: Progress | None = None,
) -> Progress:
    """Copy, then compare and copy what is missing (at most ROUNDS times, each compared again).
    `progress`: filled in as it goes (what an interrupted run got to)."""
    if progress is None:
        progress = Progress()
    if not dry_run:
        digests, progress.quarantined = referenced(repo)
        _copy_round(source, destination, repo, digests, progress, report)
    for copies in range(ROUNDS + 1):
        digests, progress.quarantined = referenced(repo)
        missing = [d for d in digests if not destination.exists(d)]
        progress.missing = len(missing)
        report("compared", progress)
        if dry_run or not missing or copies == ROUNDS:
            break
        _copy_round(source, destination, repo, missing, progress, report)
    return progress


def _copy_round(
    source: BlobStore,
    destination: BlobStore,
    repo: MediaRepository,
    digests: list[str],
    progress: Progress,
    report: Callable[[str, Progress], None],
) -> None:
    progress.referenced = max(progress.referenced, len(digests))
    progress.done = 0
    for sha256 in digests:
        try:
            outcome, size = copy_one(source, destination, repo, sha256)
        except CopyFailed as exc:
            log.error("%s", exc)
            if sha256 not in progress.failed:
                progress.failed.append(sha256)
        else:
            _tally(progress, outcome, size)
        progress.done += 1
        report("progress", progress)


def _tally(progress: Progress, outcome: Outcome, size: int) -> None:
    if outcome == "copied":
        progress.copied += 1
        progress.bytes += size
    elif outcome == "skipped":
        progress.skipped += 1
    elif outcome == "gone":
        progress.gone += 1
    else:
        progress.quarantined += 1


class Reporter:
    """A bar on a terminal; JSON lines otherwise (at most one a second, plus every change of phase:
    `compared`, `interrupted`)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = 0.0

    def __call__(self, event: str, progress: Progress) -> None:
        now = time.monotonic()
        if event == "progress" and now - self._last < 1 and progress.done != progress.referenced:
            return
        self._last = now
        if self.tty:
            self.out.write(bar(event, progress))
        else:
            doc = {"event": event, **dataclasses.asdict(progress), "failed": len(progress.failed)}
            self.out.write(json.dumps(doc) + "\n")
        self.out.flush()


def bar(event: str, progress: Progress, width: int = 30) -> str:
    """The terminal's line: redrawn in place (`\\r`), ended by a comparison or an interruption."""
    filled = round(width * progress.done / max(progress.referenced, 1))
    line = (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {progress.done}/{progress.referenced}"
        f" copied {progress.copied} skipped {progress.skipped} failed {len(progress.failed)}"
        f" {progress.bytes / 2**20:.0f} MiB"
    )
    if event == "compared":
        line += f"  missing {progress.missing} quarantined {progress.quarantined}\n"
    elif event == "interrupted":
        line += "  interrupted\n"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.migrate_store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--from", dest="source", choices=("fs", "s3"), required=True)
    parser.add_argument("--to", dest="destination", choices=("fs", "s3"), required=True)
    parser.add_argument("--dry-run", action="store_true", help="only compare: what would still be copied")
    args = parser.parse_args(argv)
    if args.source == args.destination:
        parser.error("--from and --to name the same store")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from common.repository import PgMediaRepository
    from common.services import build_store, check_configuration

    try:
        config = Config.from_env(os.environ)
        stores = {}
        for kind in (args.source, args.destination):
            with_kind = dataclasses.replace(config, storage=kind)
            check_configuration(with_kind)
            stores[kind] = build_store(with_kind)
    except ConfigError as exc:
        print(f"migrate-store: configuration error: {exc}", file=sys.stderr)
        return 78
    repo = PgMediaRepository(
        config.require_database_url(), max_size=2, timeout_seconds=config.db_timeout_seconds
    )
    report = Reporter(sys.stdout)
    progress = Progress()
    try:
        migrate(
            stores[args.source],
            stores[args.destination],
            repo,
            dry_run=args.dry_run,
            report=report,
            progress=progress,
        )
    except KeyboardInterrupt:
        report("interrupted", progress)
        print(
            f"interrupted after {progress.copied} copied, {progress.skipped} skipped:"
            " run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (StorageUnavailable, DatabaseUnavailable) as exc:
        print(f"\nmigrate-store: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        repo.close()
    return 0 if progress.missing == 0 and not progress.failed else 1


if __name__ == "__main__":
    sys.exit(main())
