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
from collections.abc import Callable
from dataclasses import dataclass

from common.cas import BlobStore, LocalBlobStore
from common.config import Config
from common.repository import MediaRepository, PgMediaRepository
from common.tokens import HS256Verifier, TokenVerifier

log = logging.getLogger("media.services")


@dataclass(frozen=True)
class Services:
    config: Config
    store: BlobStore
    repo: MediaRepository
    verifier: TokenVerifier


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
    if background:
        start_temp_sweeper(store, config)
    return Services(config=config, store=store, repo=repo, verifier=verifier)


def start_temp_sweeper(store: BlobStore, config: Config) -> threading.Event:
    """Remove abandoned temp files at start-up and then every `temp_sweep_interval_seconds`.

    Only files untouched for `temp_max_age_seconds` go: uploads in flight in other processes
    sharing the volume keep touching theirs. Setting the returned event stops the thread.
    """
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                removed = store.sweep_temp(config.temp_max_age_seconds)
                if removed:
                    log.info("swept %d abandoned temp file(s)", removed)
            except OSError:
                log.exception("temp sweep failed; will retry")
            if stop.wait(config.temp_sweep_interval_seconds):
                return

    thread = threading.Thread(target=loop, name="media-temp-sweeper", daemon=True)
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
