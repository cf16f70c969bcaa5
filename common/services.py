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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from common.cas import BlobStore
from common.config import Config, ConfigError
from common.database import conninfo_problem
from common.events import EventSink, HttpSink, NoSink, overrides_from
from common.httpclient import HttpClient
from common.localstore import LocalBlobStore
from common.maintenance import start_maintenance
from common.oidc import Introspector, KeySet, ProviderMetadata, fixed
from common.ratelimit import RateLimiter
from common.repository import MediaRepository, PgMediaRepository
from common.scanning import ClamdScanner, NoScanner, Scanner
from common.signing import KeyRing
from common.tokens import TokenVerifier
from common.verifiers import CombinedVerifier, IntrospectionVerifier, JwtVerifier

log = logging.getLogger("media.services")


@dataclass(frozen=True)
class Services:
    config: Config
    store: BlobStore
    repo: MediaRepository
    verifier: TokenVerifier
    keys: KeyRing  # signs presigned upload URLs and download links
    clock: Callable[[], float] = time.time
    events: EventSink = field(default_factory=NoSink)  # the outbox's CloudEvents go here (K_SINK)
    scanner: Scanner = field(default_factory=NoScanner)  # MEDIA_SCAN: every upload's bytes pass it
    # The outbox's events leave on a thread of their own (processing.published_after), not on the
    # upload's: for serving processes, whose maintenance runs in the background too.
    publish_in_background: bool = False

    @cached_property
    def limiter(self) -> RateLimiter:
        """The rate limits, kept in the repository (shared by every process)."""
        return RateLimiter(self.repo, self.config)


def check_configuration(config: Config) -> None:
    """Check, before serving, what `build_services` will need (`Config.from_env` checked the values'
    form). Raises ConfigError naming the variable."""
    url = config.require_database_url()
    problem = conninfo_problem(url)
    if problem is not None:
        raise ConfigError(f"MEDIA_DATABASE_URL is not a PostgreSQL connection string ({problem})")
    config.check_auth()
    config.require_presign_secret()
    if config.storage == "s3":
        config.require_s3_bucket()
        return
    try:
        config.cas_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"MEDIA_DATA_DIR: cannot create {config.cas_root} ({exc.strerror})") from None


def build_store(config: Config) -> BlobStore:
    """The blob store MEDIA_STORAGE names: the volume, or an S3-compatible bucket."""
    if config.storage == "s3":
        from common.s3store import store_for  # boto3 only where it is used

        return store_for(config)
    return LocalBlobStore(config.cas_root)


def build_services(config: Config, *, background: bool = True) -> Services:
    store = build_store(config)
    repo = PgMediaRepository(
        config.require_database_url(),
        max_size=config.db_pool_max,
        timeout_seconds=config.db_timeout_seconds,
        transaction_pooling=config.db_pooling == "transaction",
    )
    verifier = build_verifier(config)
    keys = KeyRing(config.require_presign_secret(), config.presign_previous_secret)
    events: EventSink = NoSink()
    if config.event_sink:
        events = HttpSink(
            config.event_sink, config.event_timeout_seconds, overrides_from(config.event_overrides)
        )
    services = Services(
        config=config,
        store=store,
        repo=repo,
        verifier=verifier,
        keys=keys,
        events=events,
        scanner=build_scanner(config),
        publish_in_background=background,
    )
    if background:
        start_maintenance(config, store, repo)
    return services


def build_scanner(config: Config) -> Scanner:
    """The malware scanner MEDIA_SCAN names (clamd), or none."""
    if config.scan == "clamd":
        return ClamdScanner(config.clamd_address, config.scan_timeout_seconds)
    return NoScanner()


def build_verifier(config: Config) -> TokenVerifier:
    """The token verifier MEDIA_AUTH_MODE asks for; provider URLs come from discovery when unset."""
    config.check_auth()
    http = HttpClient(config.provider_timeout_seconds)
    metadata = ProviderMetadata(config.jwt_issuer, http) if config.jwt_issuer else None

    def endpoint(explicit: str | None, name: str) -> Callable[[], str] | None:
        if explicit:
            return fixed(explicit)
        if metadata is not None:
            return lambda: metadata.endpoint(name)
        return None

    offline = online = None
    if config.offline:
        jwks = endpoint(config.jwks_url, "jwks_uri")
        keys = KeySet(jwks, http, min_refresh_seconds=config.jwks_min_refresh_seconds) if jwks else None
        offline = JwtVerifier(
            secret=config.jwt_secret,
            keys=keys,
            algorithms=config.jwt_algorithms,
            issuer=config.jwt_issuer,
            audience=config.jwt_audience,
            leeway_seconds=config.jwt_leeway_seconds,
        )
    if config.online:
        url = endpoint(config.introspection_url, "introspection_endpoint")
        client_id, client_secret = config.introspection_client_id, config.introspection_client_secret
        assert url is not None, "check_auth demands an introspection URL or an issuer"
        assert client_id, "check_auth demands the client id"
        assert client_secret, "check_auth demands the client secret"
        introspector = Introspector(
            url,
            (client_id, client_secret),
            http,
            cache_seconds=config.introspection_cache_seconds,
        )
        online = IntrospectionVerifier(introspector, issuer=config.jwt_issuer, audience=config.jwt_audience)
    if offline is not None and online is not None:
        return CombinedVerifier(offline, online)
    verifier = offline or online
    assert verifier is not None
    return verifier


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
