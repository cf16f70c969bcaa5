"""Move every referenced blob from one store to the other while the service keeps serving:
`python -m common.migrate_store --from fs --to s3` (`make migrate-store FROM=fs TO=s3`), or back.

1. Copy: the referenced digests in order (from the database), each streamed from the source into
   the destination through the destination's own writer, so its SHA-256 is computed again and
   compared with the digest before the copy is committed. A digest the destination already has
   is skipped: an interrupted run (Ctrl-C, a lost pod) resumes where it stopped. The commit takes
   the digest's lock and checks that a record still references it, so a delete in the meantime
   leaves no copy behind.
2. Compare (a dry run; `--dry-run` does only this): every referenced digest is looked for in the
   destination. Uploads that arrived during the copy are found here and copied in another round
   (at most three). It ends with the number still missing: 0 means the operator may switch
   `MEDIA_STORAGE`. Uploads in the minutes between the comparison and the switch still land in the
   old store: run it once more after the switch (it copies only what is missing).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from common.cas import BlobStore
from common.config import Config, ConfigError
from common.problems import BlobMissing, DatabaseUnavailable, StorageUnavailable
from common.repository import MediaRepository

log = logging.getLogger("media.migrate_store")

PAGE = 500
CHUNK = 1024 * 1024
ROUNDS = 3


@dataclass
class Progress:
    referenced: int = 0
    done: int = 0
    copied: int = 0
    skipped: int = 0
    gone: int = 0  # deleted while the migration ran
    failed: list[str] = field(default_factory=list)  # did not verify, or missing from the source
    bytes: int = 0
    missing: int = -1  # after the comparison


def referenced(repo: MediaRepository) -> Iterator[str]:
    after = ""
    while page := repo.digests_after(after, PAGE):
        yield from page
        after = page[-1]


def copy_one(source: BlobStore, destination: BlobStore, repo: MediaRepository, sha256: str) -> int:
    """Stream one blob across and verify it; the bytes copied (0: skipped or no longer referenced)."""
    if destination.exists(sha256):
        return 0
    try:
        reader = source.open(sha256)
    except BlobMissing:
        with repo.digest_scope(sha256) as scope:
            if scope.references(sha256) == 0:
                return -1  # deleted meanwhile: nothing to copy
        raise ValueError(f"{sha256}: referenced, but the source store does not have it") from None
    with reader, destination.writer(max_bytes=2**62, label="migrate") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
        staged = writer.finish()
        if staged.sha256 != sha256:
            raise ValueError(f"{sha256}: the copy reads back as {staged.sha256}; not committed")
        with repo.digest_scope(sha256) as scope:
            if scope.references(sha256) == 0:
                return -1  # its last record went while we copied
            destination.commit(writer)
    return staged.size


def migrate(
    source: BlobStore,
    destination: BlobStore,
    repo: MediaRepository,
    *,
    dry_run: bool = False,
    report: Callable[[str, Progress], None] = lambda event, progress: None,
) -> Progress:
    progress = Progress()
    if not dry_run:
        _copy_round(source, destination, repo, list(referenced(repo)), progress, report)
    for _ in range(ROUNDS):
        missing = [d for d in referenced(repo) if not destination.exists(d)]
        progress.missing = len(missing)
        report("compared", progress)
        if dry_run or not missing:
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
            size = copy_one(source, destination, repo, sha256)
        except ValueError as exc:
            log.error("%s", exc)
            progress.failed.append(sha256)
            size = 0
        if size > 0:
            progress.copied += 1
            progress.bytes += size
        elif size == 0:
            progress.skipped += 1
        else:
            progress.gone += 1
        progress.done += 1
        report("progress", progress)


class Reporter:
    """A bar on a terminal; JSON lines otherwise (at most one a second, plus every change of phase)."""

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
            total = max(progress.referenced, 1)
            filled = round(30 * progress.done / total)
            line = (
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {progress.done}/{progress.referenced}"
                f" copied {progress.copied} skipped {progress.skipped} {progress.bytes / 2**20:.0f} MiB"
            )
            if event == "compared":
                line += f"  missing {progress.missing}\n"
            self.out.write(line)
        else:
            doc = {"event": event, **dataclasses.asdict(progress), "failed": len(progress.failed)}
            self.out.write(json.dumps(doc) + "\n")
        self.out.flush()


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
    try:
        progress = migrate(
            stores[args.source],
            stores[args.destination],
            repo,
            dry_run=args.dry_run,
            report=Reporter(sys.stdout),
        )
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except (StorageUnavailable, DatabaseUnavailable) as exc:
        print(f"\nmigrate-store: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        repo.close()
    return 0 if progress.missing == 0 and not progress.failed else 1


if __name__ == "__main__":
    sys.exit(main())
