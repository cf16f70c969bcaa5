"""`make bench` (third part): the cost of the integrity scrub, one unthrottled pass (`scrub.full_pass`)
over a 1 GiB volume store of generated blobs (64 KiB to 16 MiB) in a temp dir, with the in-memory
repository (no database in the measure). Figures: wall seconds and CPU seconds per GiB, cold (each
blob's pages dropped from the page cache first, `posix_fadvise(DONTNEED)`) and warm (cached), the
median of `ROUNDS` runs each. What it says: how long a full pass of the store takes at most, and what
the background rate costs (CPU s/GiB x MEDIA_SCRUB_MIB_PER_SECOND / 1024 = the cores it keeps busy).

Written to bench/results/scrub.json. `python -m bench.scrub` runs it alone (`--gib N` for another size).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench import save
from common import scrub
from common.localstore import LocalBlobStore
from common.memory_repository import InMemoryMediaRepository
from common.records import NewMedia

GiB = 1024**3
MiB = 1024**2
ROUNDS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "scrub.json"


def fill(store: LocalBlobStore, repo: InMemoryMediaRepository, total: int) -> tuple[int, int]:
    """Blobs of random sizes (log-uniform 64 KiB to 16 MiB) up to `total` bytes, each referenced."""
    rng = random.Random(7)
    stored = blobs = 0
    while stored < total:
        size = min(int(2 ** rng.uniform(16, 24)), total - stored)
        with store.writer(size + 1, label="bench") as writer:
            left = size
            while left:
                n = min(left, MiB)
                writer.write(os.urandom(n))
                left -= n
            staged = writer.finish()
            with repo.digest_scope(staged.sha256) as scope:
                store.commit(writer)
                scope.insert(NewMedia("bench", "blob.bin", "application/octet-stream", size, staged.sha256))
        stored += size
        blobs += 1
    return blobs, stored


def drop_cache(store: LocalBlobStore) -> None:
    for path in store.blobs.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def one_pass(store: LocalBlobStore, repo: InMemoryMediaRepository) -> tuple[float, float, int]:
    """(wall s, CPU s of this process, bytes) of one full pass."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = scrub.full_pass(store, repo)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    assert not report.mismatches, report
    assert not report.missing, report
    return wall, cpu, report.bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrub")
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mbench-scrub") as tmp:
        store = LocalBlobStore(Path(tmp) / "cas")
        repo = InMemoryMediaRepository()
        blobs, stored = fill(store, repo, int(args.gib * GiB))
        for mode in ("cold", "warm"):
            runs = []
            for _ in range(ROUNDS):
                if mode == "cold":
                    drop_cache(store)
                else:
                    one_pass(store, repo)  # the pages are cached now (if they fit)
                runs.append(one_pass(store, repo))
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            gib = runs[0][2] / GiB
            rows.append(
                {
                    "cache": mode,
                    "rounds": ROUNDS,
                    "seconds_per_gib": round(wall / gib, 3),
                    "cpu_seconds_per_gib": round(cpu / gib, 3),
                    "mib_per_second": round(runs[0][2] / MiB / wall),
                }
            )
    result = {"blobs": blobs, "bytes": stored, "rows": rows}
    print(f"\nThe scrub, one unthrottled pass over {stored / GiB:.2f} GiB, {blobs} blobs, median of {ROUNDS}")
    for r in rows:
        print(
            f"  {r['cache']:<5} {r['seconds_per_gib']:>7} s/GiB  {r['cpu_seconds_per_gib']:>7} CPU s/GiB"
            f"  {r['mib_per_second']:>6} MiB/s"
        )
    save(RESULTS, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
