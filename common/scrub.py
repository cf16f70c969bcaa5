"""The integrity scrub: every referenced blob is read back and re-hashed, so bytes that rotted on
the volume or in the bucket are found before a client is served them.

In the background (`scrub_round`, from `maintenance.maintain`): one process per maintenance round
(claimed in the database) reads at most `MEDIA_SCRUB_MIB_PER_SECOND` x the round period, paced to
that rate, continuing from a cursor saved in the database (the last digest checked, in digest
order, variants included). When the cursor reaches the end the pass is finished; the next one
starts `MEDIA_SCRUB_INTERVAL_HOURS` after that pass started. The maintenance loop waits a period
between rounds, so the long-run rate is at most the configured one (about half of it with a single
process). 0 MiB/s: no background scrub.

On demand: `python -m common.scrub_command` (`make scrub`) runs one full pass from the start, unthrottled
unless `--mib-per-second` is given, with a progress bar on stderr; it leaves the background cursor
alone. Exit status 0 clean, 1 mismatches found, 75 store or database unavailable, 78 bad
configuration, 130 interrupted.

A mismatch is confirmed under the digest's lock (an upload of the same bytes to the volume may have
just replaced the file, which heals it), then its ready records become `corrupt` (their content
answers 410 `content-corrupt`), a variant's rows go and the jobs that made them are pending again
(the drain makes it anew; meanwhile the original is served), the blob is moved to quarantine
(`BlobStore.quarantine`), and it is logged and counted (`media_scrub_mismatches_total`). A record
stays `corrupt` until it is deleted; an upload of the right bytes afterwards stores a good copy for
its own, new record. A referenced blob that is missing is logged, not counted as a mismatch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from common import metrics
from common.cas import BlobStore
from common.config import Config
from common.problems import DatabaseUnavailable
from common.records import ScrubState
from common.repository import MediaRepository

log = logging.getLogger("media.scrub")

TASK = "scrub"
MiB = 1024 * 1024
PAGE = 200  # digests per query; the cursor is saved after each page
ROUND_SHARE = 0.9  # a background round stops reading after this share of the period


# --- planning (pure) ------------------------------------------------------------------------------


def budget_bytes(mib_per_second: float, seconds: float) -> int:
    """What a round may read: the rate times the time it stands for (0 when either is <= 0)."""
    return max(0, int(mib_per_second * MiB * seconds)) if mib_per_second > 0 and seconds > 0 else 0


def pass_due(state: ScrubState, now: datetime, interval_hours: float) -> bool:
    """Whether a round has work: a pass in progress, none yet, or the interval since the last
    finished pass started has passed."""
    if state.pass_started_at is None or state.pass_finished_at is None:
        return True
    return now - state.pass_started_at >= timedelta(hours=interval_hours)


def pace_delay(done_bytes: int, elapsed_seconds: float, bytes_per_second: float | None) -> float:
    """Seconds to sleep so that `done_bytes` in `elapsed_seconds` is no faster than the rate."""
    if not bytes_per_second or bytes_per_second <= 0:
        return 0.0
    return max(0.0, done_bytes / bytes_per_second - elapsed_seconds)


class Pacer:
    """Called with each chunk's size; sleeps to keep the reads at `bytes_per_second` on average
    since it was made (None: no limit)."""

    def __init__(
        self,
        bytes_per_second: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = bytes_per_second
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        delay = pace_delay(self.done, self.clock() - self.started, self.rate)
        if delay > 0:
            self.sleep(delay)


# --- checking -------------------------------------------------------------------------------------


@dataclass
class ScrubReport:
    checked: int = 0
    bytes: int = 0
    mismatches: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    pass_finished: bool = False
    idle: bool = False  # no pass was due
    cursor: str = ""


def quarantined(repo: MediaRepository, sha256: str, references: int) -> bool:
    """Whether the blob's `references` users are all `corrupt` records: its bytes were quarantined
    (the store no longer has them at their address), which is known, not missing. Under the
    digest's lock. (`MediaRepository.corrupt_only` is the same rule for a batch of digests.)"""
    statuses = repo.statuses_of(sha256)
    return bool(statuses) and set(statuses) == {"corrupt"} and sum(statuses.values()) == references


def check_blob(
    store: BlobStore, repo: MediaRepository, sha256: str, pace: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """Re-hash one blob and act on what is found, returning (outcome, bytes read). Outcomes: ok,
    mismatch (quarantined now), missing, gone (deleted since it was listed), known (quarantined
    before: only corrupt records have it)."""
    found = store.verify(sha256, pace)
    if found is not None and found.matches(sha256):
        return "ok", found.size
    read = found.size if found is not None else 0
    with repo.digest_scope(sha256) as scope:  # no upload or delete of this digest meanwhile
        if scope.references(sha256) == 0:
            return "gone", read  # deleted since it was listed
        again = store.verify(sha256, pace)
        if again is None:
            if quarantined(repo, sha256, scope.references(sha256)):
                return "known", read
            log.error("referenced blob %s is missing from the store", sha256)
            return "missing", read
        if again.matches(sha256):
            return "ok", read + again.size  # replaced by an upload of the same bytes: healed
        marked = repo.mark_corrupt(sha256)
        remade = repo.remake_variants_of(sha256)
        store.quarantine(sha256)
    metrics.system(metrics.SCRUB_MISMATCHES)
    log.error(
        "blob %s is corrupt: %d bytes hash to %s; quarantined, %d record(s) marked corrupt,"
        " %d image(s) to make its variants again",
        sha256,
        again.size,
        again.actual,
        marked,
        remade,
    )
    return "mismatch", read + again.size


def _tally(report: ScrubReport, sha256: str, outcome: str, size: int) -> None:
    report.bytes += size
    if outcome in ("gone", "known"):
        return
    report.checked += 1
    if outcome == "mismatch":
        report.mismatches.append(sha256)
    elif outcome == "missing":
        report.missing.append(sha256)


def scrub_round(
    config: Config,
    store: BlobStore,
    repo: MediaRepository,
    budget: int,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    pacer: Pacer | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ScrubReport:
    """Continue the pass from the saved cursor until `budget` bytes are read (a blob is always read
    whole, so the last may pass it) or `clock()` reaches `deadline`; save the cursor."""
    started = clock()
    state = repo.scrub_state()
    report = ScrubReport(cursor=state.cursor)
    if not pass_due(state, now(), config.scrub_interval_hours):
        report.idle = True
        return report
    if state.pass_finished_at is not None or state.pass_started_at is None:
        state = ScrubState(pass_started_at=now())
        log.info("integrity scrub: pass started")
    pace = pacer or Pacer(None, clock)
    try:
        while report.bytes < budget and (deadline is None or clock() < deadline):
            page = repo.digests_after(state.cursor, PAGE)
            if not page:
                state = replace(state, pass_finished_at=now())
                report.pass_finished = True
                _log_pass(config, state)
                break
            for sha256 in page:
                if report.bytes >= budget or (deadline is not None and clock() >= deadline):
                    break
                outcome, size = check_blob(store, repo, sha256, pace)
                _tally(report, sha256, outcome, size)
                state = replace(
                    state,
                    cursor=sha256,
                    pass_bytes=state.pass_bytes + size,
                    pass_mismatches=state.pass_mismatches + (outcome == "mismatch"),
                )
            repo.save_scrub_state(state)
    finally:  # a store or database that went away mid-round: resume from the last blob checked
        with contextlib.suppress(DatabaseUnavailable):
            repo.save_scrub_state(state)
    report.cursor = state.cursor
    report.seconds = clock() - started
    return report


def _log_pass(config: Config, state: ScrubState) -> None:
    assert state.pass_started_at is not None
    assert state.pass_finished_at is not None
    took = state.pass_finished_at - state.pass_started_at
    log.info(
        "integrity scrub: pass finished in %s, %d bytes, %d mismatch(es)",
        took,
        state.pass_bytes,
        state.pass_mismatches,
    )
    if took > timedelta(hours=config.scrub_interval_hours):
        log.warning(
            "integrity scrub: the pass took longer than MEDIA_SCRUB_INTERVAL_HOURS (%s h);"
            " raise MEDIA_SCRUB_MIB_PER_SECOND to cover the store in time",
            config.scrub_interval_hours,
        )


def background_round(config: Config, store: BlobStore, repo: MediaRepository) -> ScrubReport | None:
    """The maintenance's round (the caller holds the round's claim): None when the scrub is off."""
    if config.scrub_mib_per_second <= 0:
        return None
    period = config.temp_sweep_interval_seconds
    rate = config.scrub_mib_per_second * MiB
    report = scrub_round(
        config,
        store,
        repo,
        budget_bytes(config.scrub_mib_per_second, period),
        pacer=Pacer(rate),
        deadline=time.monotonic() + ROUND_SHARE * period,
    )
    if report.checked:
        log.info(
            "integrity scrub: %d blob(s), %d bytes in %.1f s, %d mismatch(es), %d missing",
            report.checked,
            report.bytes,
            report.seconds,
            len(report.mismatches),
            len(report.missing),
        )
    return report


def full_pass(
    store: BlobStore,
    repo: MediaRepository,
    *,
    mib_per_second: float | None = None,
    progress: Callable[[ScrubReport], None] = lambda report: None,
) -> ScrubReport:
    """Every referenced digest from the first, once; the background cursor is not touched."""
    started = time.monotonic()
    report = ScrubReport()
    pace = Pacer(mib_per_second * MiB if mib_per_second else None)

    def counting(n: int) -> None:
        report.bytes += n
        pace(n)
        progress(report)

    for sha256 in _referenced(repo):
        before = report.bytes
        outcome, size = check_blob(store, repo, sha256, counting)
        report.bytes = before
        _tally(report, sha256, outcome, size)
        report.cursor = sha256
        report.seconds = time.monotonic() - started
        progress(report)
    report.pass_finished = True
    report.seconds = time.monotonic() - started
    return report


def _referenced(repo: MediaRepository) -> Iterator[str]:
    after = ""
    while page := repo.digests_after(after, PAGE):
        yield from page
        after = page[-1]
