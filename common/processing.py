"""The process function's use cases: responsive variants of every distinct original, made once,
with nothing lost on the way.

The trigger is an outbox. The transaction that makes an image record `ready` (a direct upload,
a presigned PUT) also inserts its job (one per original digest and `imaging.RECIPE`, unless one
exists: fifty users uploading one photo make one job) and a `media.uploaded` outbox row
(`enqueue_if_image`). After that commit the upload function hands the outbox to `K_SINK`
(`publish`); a Knative Trigger brings the event here (`handle`). An event that is lost on the way
changes nothing: the job is in the database, and the periodic drain (a PingSource; a timer under
`make run` and `make up`) sends what the outbox still holds and works through the due jobs.

Claims: `claim_job` takes the oldest due job with `FOR UPDATE SKIP LOCKED` and leases it (the
image's time limit, twice, and a margin), so two workers never process one job; a worker that dies
leaves a lease that runs out, and the job is taken again. A finished job is recorded only by the
claim that took it (`finish_job` checks the attempt count).

Variants are blobs like originals, in the same CAS under the same digest locks, and count as
references: each is committed under its own digest's lock together with its row, which holds the
job row (`FOR SHARE`), so a delete of the original either sees the variant row or comes first and
leaves the job gone (the variant is then removed again). Deleting an original's last record
releases its jobs and variants (`media.delete`), then unlinks each variant no longer used.

Images that never had a job (stored before there was a process function, or every one after a
bump of `imaging.RECIPE`) get one from the maintenance's walk (`backfill.py`). Once an original's
job under a recipe is done, what older recipes made of it is released (`removal.release_superseded`).

Failures: an image that cannot be processed (a decompression bomb, a truncated file, the memory or
time limit) is recorded `failed` with its reason at once; a store or database outage is retried
with exponential backoff (`backoff`) and recorded `failed` after `MEDIA_PROCESS_MAX_ATTEMPTS`
(the dead letter: the job row keeps the last reason). Nothing here raises into the function.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import imaging, removal
from common.events import DRAIN_EVENT, PING_EVENT, NoSink, Received
from common.imaging import ImageRejected, Limits, Variant
from common.problems import BlobMissing, DatabaseUnavailable, StorageUnavailable
from common.records import UPLOADED_EVENT, ImageJob, MediaRecord, Outcome, VariantRow
from common.repository import DigestScope
from common.services import Services

log = logging.getLogger("media.processing")

DRAIN_SECONDS = 50.0  # one drain's budget, under the process function's request timeout
PUBLISH_BATCH = 100
COPY_CHUNK = 1024 * 1024


def processed(record: MediaRecord) -> bool:
    """Whether this record gets a processing job (and so an outbox row)."""
    return record.sha256 is not None and record.content_type in imaging.PROCESSABLE


def enqueue_if_image(scope: DigestScope, record: MediaRecord) -> None:
    """In the transaction that made `record` ready: its job and its outbox row, for images."""
    if processed(record):
        assert record.sha256 is not None
        scope.enqueue_processing(record.sha256, imaging.RECIPE, record.content_type, record.id)


def published_after(services: Services, record: MediaRecord) -> None:
    """After the commit that made `record` ready: its event out, if it wrote one (no query for
    the others: this is on every upload's path).

    In a serving process (`Services.publish_in_background`) the event goes out on the process's
    publisher thread and the upload answers at once: the sink (the process function behind a
    Knative Trigger) answers only once it has processed the image, which held every image upload
    for as long again (61 % of a 100 MiB upload's time, measured with py-spy). Nothing is lost by
    not waiting: the row is committed, and whatever the thread does not send the drain does."""
    if not processed(record):
        return
    if services.publish_in_background:
        _publisher_of(services).wake()
    else:
        publish(services)


class _Publisher:
    """A daemon thread that publishes the outbox whenever woken; wakes that come while it works
    are folded into its next round."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="media-outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                while publish(self._services) == PUBLISH_BATCH:
                    pass  # a full batch: there may be more
            except Exception:  # publish handles outages; anything else must not end the thread
                log.exception("publishing the outbox failed; the drain will send it")


_publishers: dict[int, _Publisher] = {}  # by id(Services); each holds its Services alive
_publishers_lock = threading.Lock()


def _publisher_of(services: Services) -> _Publisher:
    """This process's publisher for these services, started on first use (after the fork)."""
    with _publishers_lock:
        publisher = _publishers.get(id(services))
        if publisher is None:
            publisher = _publishers[id(services)] = _Publisher(services)
        return publisher


def publish(services: Services) -> int:
    """Hand what the outbox holds to K_SINK; the number sent. Never raises: what is not sent
    stays for the next attempt. Without K_SINK nothing is read: there is nowhere to send it."""
    if isinstance(services.events, NoSink):
        return 0
    try:
        events = services.repo.unsent_events(PUBLISH_BATCH)
        if not events:
            return 0
        sent = services.events.deliver(events)
        if sent:
            services.repo.mark_sent(sent)
        return len(sent)
    except DatabaseUnavailable as exc:
        log.warning("outbox not published now (%s); the drain will", exc)
        return 0


def limits_of(services: Services) -> Limits:
    config = services.config
    return Limits(
        max_pixels=config.process_max_pixels,
        memory_bytes=config.process_memory_bytes,
        seconds=config.process_timeout_seconds,
    )


def lease_seconds(services: Services) -> float:
    """Long enough for one image at its time limit, twice, and the store's writes."""
    return 2 * services.config.process_timeout_seconds + 30


def backoff(attempts: int) -> float:
    """Seconds before attempt `attempts + 1` of a job that met an outage: 10 s, doubling, ≤ 1 h."""
    return float(min(3600, 10 * 2 ** max(0, attempts - 1)))


@dataclass
class Drained:
    published: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0  # claims another worker took over, or originals deleted meanwhile

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


def handle(services: Services, event: Received) -> Drained:
    """What the process function does with one CloudEvent."""
    drained = Drained()
    if event.type == UPLOADED_EVENT:
        sha256 = str(event.data.get("sha256") or "")
        if len(sha256) == 64:
            job = _claim(services, sha256)
            if job is not None:
                drained.count(run(services, job))
        return drained
    if event.type in (DRAIN_EVENT, PING_EVENT):
        return drain(services)
    log.info("event of type %s ignored", event.type)
    return drained


def drain(services: Services, budget_seconds: float = DRAIN_SECONDS) -> Drained:
    """Publish what the outbox holds, then process due jobs until none is left or the budget is spent."""
    drained = Drained(published=publish(services))
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        job = _claim(services)
        if job is None:
            break
        drained.count(run(services, job))
    return drained


def _claim(services: Services, sha256: str | None = None) -> ImageJob | None:
    try:
        return services.repo.claim_job(lease_seconds(services), sha256)
    except DatabaseUnavailable as exc:
        log.warning("no job claimed (%s)", exc)
        return None


def run(services: Services, job: ImageJob) -> str:
    """Process one claimed job: done, failed, retried, or lost. Never raises."""
    try:
        if job.attempts > services.config.process_max_attempts:
            # Claimed that often without ever being finished: its workers died on it (killed for
            # memory, say). Recorded as failed rather than tried for ever.
            outcome = Outcome("retry", reason="no worker finished it (killed or crashed each time)")
        else:
            outcome = _make(services, job)
    except (DatabaseUnavailable, StorageUnavailable, OSError) as exc:
        outcome = Outcome("retry", reason=str(exc), retry_after_seconds=backoff(job.attempts))
    except _Gone:
        return "lost"
    except Exception as exc:  # a bug or the unforeseen: logged, retried, then failed; never raised
        log.exception("image %s: unexpected failure", job.sha256)
        reason = f"unexpected {exc.__class__.__name__}: {exc}"[:300]
        outcome = Outcome("retry", reason=reason, retry_after_seconds=backoff(job.attempts))
    try:
        recorded = services.repo.finish_job(job, outcome, services.config.process_max_attempts)
    except DatabaseUnavailable:
        log.warning("job %s not recorded; its lease will run out and it is taken again", job.sha256)
        return "retried"
    if recorded is None:
        return "lost"
    log.info("image %s: %s%s", job.sha256, recorded, f" ({outcome.reason})" if outcome.reason else "")
    if recorded == "done":  # what an older recipe made is served no more: its blobs are freed
        removal.release_superseded(services.store, services.repo, job.sha256, job.recipe)
    return {"done": "done", "failed": "failed"}.get(recorded, "retried")


class _Gone(Exception):
    """The original's last record went while its variants were being made."""


def _make(services: Services, job: ImageJob) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="media-process-") as work:
        original = Path(work) / "original"
        try:  # a copy the child can read (from the volume or the bucket), in bounded memory
            with services.store.open(job.sha256) as f, original.open("wb") as copy:
                shutil.copyfileobj(f, copy, COPY_CHUNK)
        except BlobMissing:
            return Outcome("failed", reason="the original's bytes are missing from the store")
        try:
            rendition = imaging.render_isolated(original, Path(work), limits_of(services))
        except ImageRejected as exc:
            return Outcome("failed", reason=exc.reason)
        for variant in rendition.variants:
            _store(services, job, variant)
    return Outcome(
        "done",
        width=rendition.width,
        height=rendition.height,
        blurhash=rendition.blurhash,
        dominant_color=rendition.dominant_color,
    )


def _store(services: Services, job: ImageJob, variant: Variant) -> None:
    """One variant into the CAS and its row, under the variant digest's lock."""
    data = variant.path.read_bytes()
    with services.store.writer(len(data), label="variant") as writer:
        writer.write(data)
        staged = writer.finish()
        row = VariantRow(variant.format, variant.width, variant.height, staged.size, staged.sha256)
        with services.repo.digest_scope(staged.sha256) as scope:
            services.store.commit(writer)
            if not scope.add_variant(job.sha256, job.recipe, row):
                if scope.references(staged.sha256) == 0:
                    services.store.delete(staged.sha256)
                raise _Gone
