"""`make scrub`: one full pass of the integrity scrub now (`scrub.full_pass`, from the first digest;
the background cursor is not touched), with a progress bar on stderr and a summary on stdout. Exit
0: clean; 1: mismatches (quarantined, records corrupt); 75: the store or the database did not
answer; 78: configuration; 130: interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TextIO

from common.config import Config, ConfigError
from common.problems import DatabaseUnavailable, StorageUnavailable
from common.repository import PgMediaRepository
from common.scrub import ScrubReport, full_pass
from common.services import build_store, check_configuration


class Bar:
    """A one-line bar on `out`, redrawn with \\r at most 10 times a second: bytes, MiB/s, ETA."""

    def __init__(self, out: TextIO, total_bytes: int, total_blobs: int) -> None:
        self.out = out
        self.total = max(total_bytes, 1)
        self.blobs = total_blobs
        self.started = time.monotonic()
        self._last = 0.0
        self.drawn = False  # a bar is on the current line

    def before_log(self, record: logging.LogRecord) -> bool:
        """A logging filter that ends the bar's line first (and lets the record through)."""
        self.break_line()
        return True

    def break_line(self) -> None:
        """End the bar's line, so that what is written next (a log line) stands on its own."""
        if self.drawn:
            self.out.write("\n")
            self.drawn = False

    def __call__(self, report: ScrubReport, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        done = min(report.bytes, self.total)
        rate = report.bytes / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        filled = round(30 * done / self.total)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {_size(report.bytes)}/{_size(self.total)}"
            f"  {_size(rate)}/s  ETA {_clock(eta)}  {report.checked}/{self.blobs} blobs"
            f"  mismatches {len(report.mismatches)}"
        )
        self.drawn = True
        if final:
            self.break_line()
        self.out.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.scrub_command", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--mib-per-second", type=float, default=None, help="pace the reads to this rate (default: no limit)"
    )
    args = parser.parse_args(argv)
    try:
        config = Config.from_env(os.environ)
        check_configuration(config)
        store = build_store(config)
        url = config.require_database_url()
    except ConfigError as exc:
        print(f"scrub: configuration error: {exc}", file=sys.stderr)
        return 78
    repo = PgMediaRepository(url, max_size=2, timeout_seconds=config.db_timeout_seconds)
    try:
        blobs, total = repo.referenced_totals()
        bar = Bar(sys.stderr, total, blobs)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(bar.before_log)
        logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
        report = full_pass(store, repo, mib_per_second=args.mib_per_second, progress=bar)
        bar(report, final=True)
    except KeyboardInterrupt:
        print("\nscrub: interrupted", file=sys.stderr)
        return 130
    except (StorageUnavailable, DatabaseUnavailable) as exc:
        print(f"\nscrub: {exc}", file=sys.stderr)
        return 75
    finally:
        repo.close()
    print(
        f"blobs checked: {report.checked}  bytes: {report.bytes}  mismatches: {len(report.mismatches)}"
        f"  missing: {len(report.missing)}  seconds: {report.seconds:.1f}"
    )
    for sha256 in report.mismatches:
        print(f"corrupt (quarantined): {sha256}")
    for sha256 in report.missing:
        print(f"missing: {sha256}")
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
