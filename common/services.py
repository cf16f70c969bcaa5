"""The composition root: builds the swappable dependencies once per process and hands them out.

functions-framework imports each `main.py` in gunicorn's master before it forks the workers, so
nothing here runs at import time: `ServiceProvider` builds on first use (in the worker) and forgets
what it built when the process forks, so a child never inherits a parent's pool threads or sockets.
Tests build `Services` themselves, with fakes, and pass `lambda: services` instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from common.cas import BlobStore, LocalBlobStore
from common.config import Config
from common.repository import MediaRepository, PgMediaRepository
from common.signing import KeyRing
from common.tokens import HS256Verifier, TokenVerifier

log = logging.getLogger("media.services")


@dataclass(frozen=True)
class Services:
    config: Config
    store: BlobStore
    repo: MediaRepository
    verifier: TokenVerifier
    keys: KeyRing  # signs presigned upload URLs and download links
    clock: Callable[[], float] = time.time


def build_services(config: Config, *, background: bool = True) -> Services:
    store = LocalBlobStore(config.cas_root)
    repo = PgMediaRepository(
        config.require_database_url(),
        max_size=config.db_pool_max,
        timeout_seconds=config.db_timeout_seconds,
    )
    verifier = HS256Verifier(
        config.require_jwt_secret(),
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        leeway_seconds=config.jwt_leeway_seconds,
    )
    keys = KeyRing(config.require_presign_secret(), config.presign_previous_secret)
    services = Services(config=config, store=store, repo=repo, verifier=verifier, keys=keys)
    if background:
        start_maintenance(services)
    return services


def maintain(services: Services) -> None:
    """One round of housekeeping; safe to run from every process at once.

    - temp files untouched for `temp_max_age_seconds` are abandoned (uploads in flight in other
      processes sharing the volume keep touching theirs);
    - pending uploads whose URL expired more than `pending_grace_seconds` ago are removed, with
      the temp file of an upload that died on the way.
    """
    config = services.config
    removed = services.store.sweep_temp(config.temp_max_age_seconds)
    if removed:
        log.info("swept %d abandoned temp file(s)", removed)
    for record in services.repo.remove_expired_pending(config.pending_grace_seconds):
        services.store.remove_temp(upload_label(record.id))
        log.info("removed expired pending upload %s", record.id)


def upload_label(media_id: uuid.UUID) -> str:
    """The temp-file label of a presigned upload, so the cleanup can find what it left behind."""
    return f"put-{media_id}"


def start_maintenance(services: Services) -> threading.Event:
    """Run `maintain` at start-up and then every `temp_sweep_interval_seconds`, in a daemon thread.

    Setting the returned event stops it.
    """
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                maintain(services)
            except Exception:  # the database may be away; next round
                log.exception("maintenance failed; will retry")
            if stop.wait(services.config.temp_sweep_interval_seconds):
                return

    thread = threading.Thread(target=loop, name="media-maintenance", daemon=True)
    thread.start()
    return stop


class ServiceProvider:
    """Lazily built, cached per process, reset in a forked child."""

    def __init__(self, factory: Callable[[], Services]) -> None:
        self._factory = factory
        self._services: Services | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._services = None
        self._lock = threading.Lock()

    def __call__(self) -> Services:
        if self._services is None:
            with self._lock:
                if self._services is None:
                    self._services = self._factory()
        return self._services


def _from_environment() -> Services:
    config = Config.from_env(os.environ)
    logging.getLogger().setLevel(config.log_level)
    return build_services(config)


# What the deployed functions use: configuration from the environment, read on first request.
default_provider = ServiceProvider(_from_environment)
