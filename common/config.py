"""Settings, read once from the environment into one typed, frozen object.

Every variable the service reads is listed in `variables.VARIABLES` with its default; this module
parses and checks them. Handlers never read the environment: they get `Config` through the
services object.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from common.variables import VARIABLES, MiB


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it."""


class DevelopmentModeWarning(UserWarning):
    """An insecure development fallback is in use (embedded database, generated secret)."""


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_DEFAULTS = {v.name: v.default for v in VARIABLES}


def with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """`env` with the variables `MEDIA_SECRETS_DIR` holds as files (one per variable, named after
    it: how OpenFaaS and a Kubernetes Secret volume hand out secrets), where `env` does not set
    them. Other files (a projected volume's `..data` links, keys of other programs) are ignored."""
    folder = _get(env, "MEDIA_SECRETS_DIR")
    if folder is None:
        return env
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"MEDIA_SECRETS_DIR: {folder} is not a directory")
    merged = dict(env)
    for name in _DEFAULTS.keys() - {"MEDIA_SECRETS_DIR"}:
        path = root / name
        if (env.get(name) or "").strip() or not path.is_file():
            continue
        try:
            merged[name] = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"MEDIA_SECRETS_DIR: cannot read {path} ({exc})") from None
    return merged


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return _DEFAULTS[name]
    return value.strip()


def _int(env: Mapping[str, str], name: str, minimum: int = 0) -> int:
    raw = _get(env, name)
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value is None or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


def _float(env: Mapping[str, str], name: str) -> float:
    raw = _get(env, name)
    try:
        value = float(raw) if raw is not None else -1.0
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    """Unset: None (no limit); else an integer >= 0."""
    return None if _get(env, name) is None else _int(env, name)


def _rate(env: Mapping[str, str], name: str) -> float:
    """A number >= 0 (0: off)."""
    raw = _get(env, name)
    try:
        value = float(raw) if raw is not None else -1.0
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0:
        raise ConfigError(f"{name} must be a number >= 0, got {raw!r}")
    return value


def _clamd_address(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme == "unix" and parsed.path:
        return raw
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme == "tcp" and parsed.hostname and port and not parsed.path.strip("/"):
        return raw
    raise ConfigError(f"MEDIA_CLAMD_ADDRESS must be tcp://host:port or unix:///path, got {raw!r}")


AUTH_MODES = ("offline", "introspect", "both")
JWT_ALGORITHMS = ("RS256", "ES256", "EdDSA", "HS256")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = _get(env, name) or ""
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _algorithms(raw: str | None) -> frozenset[str]:
    names = frozenset(a.strip() for a in (raw or "").split(",") if a.strip())
    bad = sorted(names - set(JWT_ALGORITHMS))
    if not names or bad:
        raise ConfigError(
            f"MEDIA_JWT_ALGORITHMS takes some of {', '.join(JWT_ALGORITHMS)}, got {raw!r}"
            + (" (`none` is never accepted)" if "none" in bad else "")
        )
    return names


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return None
    parsed = urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name} must be an absolute http(s) URL, got {raw!r}")
    return raw


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")


def _bucket(raw: str | None) -> str | None:
    if raw is not None and not _BUCKET.match(raw):
        raise ConfigError(f"MEDIA_S3_BUCKET is not a bucket name (3-63 of a-z 0-9 . -), got {raw!r}")
    return raw


def _key_prefix(raw: str | None) -> str:
    """`media` or `/media/` -> `media/`; only characters S3 calls safe in a key."""
    prefix = (raw or "").strip("/")
    if not _KEY_PREFIX.match(prefix) or "//" in prefix:
        raise ConfigError(f"MEDIA_S3_PREFIX may hold letters, digits and !_.*'()/- only, got {raw!r}")
    return f"{prefix}/" if prefix else ""


def _log_level(raw: str | None) -> str:
    level = (raw or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"MEDIA_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return level


def _types(raw: str | None) -> frozenset[str]:
    types = frozenset(t.strip().lower() for t in (raw or "").split(",") if t.strip())
    if not types:
        raise ConfigError("MEDIA_ALLOWED_TYPES must name at least one MIME type")
    bad = sorted(t for t in types if "/" not in t)
    if bad:
        raise ConfigError(f"MEDIA_ALLOWED_TYPES has entries that are not MIME types: {', '.join(bad)}")
    return types


def _base_url(raw: str) -> str:
    parsed = urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise ConfigError(f"MEDIA_PUBLIC_BASE_URL must be an absolute http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _origins(raw: str | None) -> frozenset[str]:
    origins = frozenset(o.strip().rstrip("/") for o in (raw or "").split(",") if o.strip())
    for origin in origins:
        parsed = urlsplit(origin)
        if origin == "*" or parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path:
            raise ConfigError(
                f"MEDIA_CORS_ORIGINS takes exact origins like https://app.example, got {origin!r}"
            )
    return origins


@dataclass(frozen=True)
class Config:
    port: int
    host: str
    data_dir: Path
    database_url: str | None
    auth_mode: str
    jwt_secret: str | None
    jwks_url: str | None
    jwt_algorithms: frozenset[str]
    jwks_min_refresh_seconds: float
    jwt_issuer: str | None
    jwt_audience: str | None
    jwt_leeway_seconds: int
    introspection_url: str | None
    introspection_client_id: str | None
    introspection_client_secret: str | None
    introspection_cache_seconds: float
    provider_timeout_seconds: float
    max_upload_bytes: int
    allowed_types: frozenset[str]
    public_base_url: str
    presign_secret: str | None
    presign_previous_secret: str | None
    presign_ttl_seconds: int
    download_url_ttl_seconds: int
    pending_grace_seconds: int
    cors_origins: frozenset[str]
    storage: str
    s3_bucket: str | None
    s3_endpoint_url: str | None
    s3_prefix: str
    s3_region: str | None
    s3_download: str
    s3_timeout_seconds: float
    s3_long_timeout_seconds: float
    s3_part_bytes: int
    s3_redirect_ttl_seconds: int
    event_sink: str | None
    event_overrides: str | None
    event_timeout_seconds: float
    local_drain_seconds: float
    process_max_attempts: int
    process_max_pixels: int
    process_memory_bytes: int
    process_timeout_seconds: float
    db_pool_max: int
    db_pooling: str
    db_timeout_seconds: float
    temp_max_age_seconds: int
    temp_sweep_interval_seconds: int
    orphan_grace_seconds: int
    quota_bytes_per_user: int | None
    quota_files_per_user: int | None
    min_free_bytes: int
    scan: str
    clamd_address: str
    scan_timeout_seconds: float
    scan_fail_open: bool
    scrub_mib_per_second: float
    scrub_interval_hours: float
    unattached_default: bool
    unattached_ttl_hours: float
    max_attachments_per_media: int
    max_attachments_per_ref: int
    changes_retention_days: float
    log_level: str
    audit_log: bool
    metrics_http: bool
    metrics_business: bool
    metrics_system: bool
    rate_limit_uploads_per_minute: int
    rate_limit_requests_per_minute_per_ip: int
    rate_limit_upload_bytes_per_hour: int
    trusted_proxy_hops: int
    threads: int
    workers: int
    header_timeout_seconds: float
    body_idle_timeout_seconds: float

    @property
    def cas_root(self) -> Path:
        return self.data_dir / "cas"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        env = with_secret_files(env)
        data_dir = Path(_get(env, "MEDIA_DATA_DIR") or "./var").expanduser().absolute()
        port = _int(env, "MEDIA_PORT", minimum=1)
        return cls(
            port=port,
            host=_get(env, "MEDIA_HOST") or "127.0.0.1",
            data_dir=data_dir,
            database_url=_get(env, "MEDIA_DATABASE_URL"),
            auth_mode=_choice(env, "MEDIA_AUTH_MODE", AUTH_MODES),
            jwt_secret=_get(env, "MEDIA_JWT_SECRET"),
            jwks_url=_url(env, "MEDIA_JWKS_URL"),
            jwt_algorithms=_algorithms(_get(env, "MEDIA_JWT_ALGORITHMS")),
            jwks_min_refresh_seconds=_float(env, "MEDIA_JWKS_MIN_REFRESH_SECONDS"),
            jwt_issuer=_get(env, "MEDIA_JWT_ISSUER"),
            jwt_audience=_get(env, "MEDIA_JWT_AUDIENCE"),
            jwt_leeway_seconds=_int(env, "MEDIA_JWT_LEEWAY_SECONDS"),
            introspection_url=_url(env, "MEDIA_INTROSPECTION_URL"),
            introspection_client_id=_get(env, "MEDIA_INTROSPECTION_CLIENT_ID"),
            introspection_client_secret=_get(env, "MEDIA_INTROSPECTION_CLIENT_SECRET"),
            introspection_cache_seconds=_float(env, "MEDIA_INTROSPECTION_CACHE_SECONDS"),
            provider_timeout_seconds=_float(env, "MEDIA_PROVIDER_TIMEOUT_SECONDS"),
            max_upload_bytes=_int(env, "MEDIA_MAX_UPLOAD_BYTES", minimum=1),
            allowed_types=_types(_get(env, "MEDIA_ALLOWED_TYPES")),
            public_base_url=_base_url(_get(env, "MEDIA_PUBLIC_BASE_URL") or f"http://localhost:{port}"),
            presign_secret=_get(env, "MEDIA_PRESIGN_SECRET"),
            presign_previous_secret=_get(env, "MEDIA_PRESIGN_PREVIOUS_SECRET"),
            presign_ttl_seconds=_int(env, "MEDIA_PRESIGN_TTL_SECONDS", minimum=1),
            download_url_ttl_seconds=_int(env, "MEDIA_DOWNLOAD_URL_TTL_SECONDS", minimum=1),
            pending_grace_seconds=_int(env, "MEDIA_PENDING_GRACE_SECONDS"),
            cors_origins=_origins(_get(env, "MEDIA_CORS_ORIGINS")),
            storage=_choice(env, "MEDIA_STORAGE", ("fs", "s3")),
            s3_bucket=_bucket(_get(env, "MEDIA_S3_BUCKET")),
            s3_endpoint_url=_url(env, "MEDIA_S3_ENDPOINT_URL"),
            s3_prefix=_key_prefix(_get(env, "MEDIA_S3_PREFIX")),
            s3_region=_get(env, "MEDIA_S3_REGION"),
            s3_download=_choice(env, "MEDIA_S3_DOWNLOAD", ("stream", "redirect")),
            s3_timeout_seconds=_float(env, "MEDIA_S3_TIMEOUT_SECONDS"),
            s3_long_timeout_seconds=_float(env, "MEDIA_S3_LONG_TIMEOUT_SECONDS"),
            s3_part_bytes=_int(env, "MEDIA_S3_PART_BYTES", minimum=8 * MiB),
            s3_redirect_ttl_seconds=_int(env, "MEDIA_S3_REDIRECT_TTL_SECONDS", minimum=1),
            event_sink=_url(env, "K_SINK"),
            event_overrides=_get(env, "K_CE_OVERRIDES"),
            event_timeout_seconds=_float(env, "MEDIA_EVENT_TIMEOUT_SECONDS"),
            local_drain_seconds=_float(env, "MEDIA_LOCAL_DRAIN_SECONDS"),
            process_max_attempts=_int(env, "MEDIA_PROCESS_MAX_ATTEMPTS", minimum=1),
            process_max_pixels=_int(env, "MEDIA_PROCESS_MAX_PIXELS", minimum=1),
            process_memory_bytes=_int(env, "MEDIA_PROCESS_MEMORY_BYTES", minimum=64 * MiB),
            process_timeout_seconds=_float(env, "MEDIA_PROCESS_TIMEOUT_SECONDS"),
            db_pool_max=_int(env, "MEDIA_DB_POOL_MAX", minimum=1),
            db_pooling=_choice(env, "MEDIA_DB_POOLING", ("session", "transaction")),
            db_timeout_seconds=_float(env, "MEDIA_DB_TIMEOUT_SECONDS"),
            temp_max_age_seconds=_int(env, "MEDIA_TEMP_MAX_AGE_SECONDS"),
            temp_sweep_interval_seconds=_int(env, "MEDIA_TEMP_SWEEP_INTERVAL_SECONDS", minimum=1),
            orphan_grace_seconds=_int(env, "MEDIA_ORPHAN_GRACE_SECONDS"),
            quota_bytes_per_user=_optional_int(env, "MEDIA_QUOTA_BYTES_PER_USER"),
            quota_files_per_user=_optional_int(env, "MEDIA_QUOTA_FILES_PER_USER"),
            min_free_bytes=_int(env, "MEDIA_MIN_FREE_BYTES"),
            scan=_choice(env, "MEDIA_SCAN", ("off", "clamd")),
            clamd_address=_clamd_address(_get(env, "MEDIA_CLAMD_ADDRESS") or ""),
            scan_timeout_seconds=_float(env, "MEDIA_SCAN_TIMEOUT_SECONDS"),
            scan_fail_open=_choice(env, "MEDIA_SCAN_FAIL_OPEN", ("0", "1")) == "1",
            scrub_mib_per_second=_rate(env, "MEDIA_SCRUB_MIB_PER_SECOND"),
            scrub_interval_hours=_float(env, "MEDIA_SCRUB_INTERVAL_HOURS"),
            unattached_default=_choice(env, "MEDIA_UNATTACHED_DEFAULT", ("0", "1")) == "1",
            unattached_ttl_hours=_float(env, "MEDIA_UNATTACHED_TTL_HOURS"),
            max_attachments_per_media=_int(env, "MEDIA_MAX_ATTACHMENTS_PER_MEDIA", minimum=1),
            max_attachments_per_ref=_int(env, "MEDIA_MAX_ATTACHMENTS_PER_REF", minimum=1),
            changes_retention_days=_float(env, "MEDIA_CHANGES_RETENTION_DAYS"),
            log_level=_log_level(_get(env, "MEDIA_LOG_LEVEL")),
            audit_log=_choice(env, "MEDIA_AUDIT_LOG", ("on", "off")) == "on",
            metrics_http=_choice(env, "MEDIA_METRICS_HTTP", ("on", "off")) == "on",
            metrics_business=_choice(env, "MEDIA_METRICS_BUSINESS", ("on", "off")) == "on",
            metrics_system=_choice(env, "MEDIA_METRICS_SYSTEM", ("on", "off")) == "on",
            rate_limit_uploads_per_minute=_int(env, "MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE"),
            rate_limit_requests_per_minute_per_ip=_int(env, "MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP"),
            rate_limit_upload_bytes_per_hour=_int(env, "MEDIA_RATE_LIMIT_UPLOAD_BYTES_PER_HOUR"),
            trusted_proxy_hops=_int(env, "MEDIA_TRUSTED_PROXY_HOPS"),
            threads=_int(env, "MEDIA_THREADS", minimum=1),
            workers=_int(env, "MEDIA_WORKERS", minimum=1),
            header_timeout_seconds=_float(env, "MEDIA_HEADER_TIMEOUT_SECONDS"),
            body_idle_timeout_seconds=_float(env, "MEDIA_BODY_IDLE_TIMEOUT_SECONDS"),
        )

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("MEDIA_DATABASE_URL is not set (only `make run` starts an embedded PostgreSQL)")
        return self.database_url

    def require_s3_bucket(self) -> str:
        if not self.s3_bucket:
            raise ConfigError("MEDIA_STORAGE=s3 needs MEDIA_S3_BUCKET")
        return self.s3_bucket

    def require_presign_secret(self) -> str:
        if not self.presign_secret:
            raise ConfigError("MEDIA_PRESIGN_SECRET is not set")
        return self.presign_secret

    @property
    def offline(self) -> bool:
        return self.auth_mode in ("offline", "both")

    @property
    def online(self) -> bool:
        return self.auth_mode in ("introspect", "both")

    def check_auth(self) -> None:
        """What MEDIA_AUTH_MODE needs is there: a way to check JWTs offline, a way to introspect."""
        if self.offline and not (self.jwt_secret or self.jwks_url or self.jwt_issuer):
            raise ConfigError(
                f"MEDIA_AUTH_MODE={self.auth_mode} checks JWTs offline: set MEDIA_JWT_SECRET, "
                "MEDIA_JWKS_URL or MEDIA_JWT_ISSUER (for discovery)"
            )
        if self.online:
            if not (self.introspection_url or self.jwt_issuer):
                raise ConfigError(
                    f"MEDIA_AUTH_MODE={self.auth_mode} introspects tokens: set MEDIA_INTROSPECTION_URL "
                    "or MEDIA_JWT_ISSUER (for discovery)"
                )
            if not (self.introspection_client_id and self.introspection_client_secret):
                raise ConfigError(
                    "MEDIA_INTROSPECTION_CLIENT_ID and MEDIA_INTROSPECTION_CLIENT_SECRET are not both set"
                )
        if self.jwt_secret and len(self.jwt_secret) < 32:
            warnings.warn(
                "MEDIA_JWT_SECRET is shorter than 32 characters; use a long random secret in production",
                DevelopmentModeWarning,
                stacklevel=2,
            )
