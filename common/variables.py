"""Every variable the service reads: its name, its default and what it does.

The one list: `config.Config.from_env` reads these (and only these), README's table of variables
and the deployment manifests are checked against it by tests (tests/unit/test_config.py,
tests/infra/test_manifests.py).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024

DEFAULT_ALLOWED_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/avif",
    "application/pdf",
)


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    doc: str


VARIABLES: tuple[Variable, ...] = (
    Variable("MEDIA_PORT", "8080", "Port `make run` (the local router) listens on"),
    Variable("MEDIA_HOST", "127.0.0.1", "Address `make run` binds; set 0.0.0.0 inside a container"),
    Variable("MEDIA_DATA_DIR", "./var", "CAS root (`<dir>/cas`) and, locally, the embedded database"),
    Variable(
        "MEDIA_SECRETS_DIR",
        None,
        "A directory of files named after variables (OpenFaaS's /var/openfaas/secrets); a variable"
        " set in the environment wins",
    ),
    Variable("MEDIA_STORAGE", "fs", "Where blobs live: fs (the volume under MEDIA_DATA_DIR) or s3"),
    Variable("MEDIA_S3_BUCKET", None, "The bucket (required with MEDIA_STORAGE=s3)"),
    Variable("MEDIA_S3_ENDPOINT_URL", None, "An S3-compatible endpoint (MinIO, Ceph RGW, R2); unset: AWS"),
    Variable("MEDIA_S3_PREFIX", None, "A key prefix inside the bucket (`media/`, say); unset: none"),
    Variable("MEDIA_S3_REGION", None, "The bucket's region; unset: boto3's own (AWS_REGION, profile)"),
    Variable(
        "MEDIA_S3_DOWNLOAD",
        "stream",
        "stream: bytes through the function; redirect: a short-lived presigned GET (307)",
    ),
    Variable("MEDIA_S3_TIMEOUT_SECONDS", "5", "Connect and read timeout of each S3 call (two attempts)"),
    Variable(
        "MEDIA_S3_LONG_TIMEOUT_SECONDS",
        "300",
        "Read timeout of the calls whose time grows with the size (completing an upload, the copy)",
    ),
    Variable("MEDIA_S3_PART_BYTES", str(8 * MiB), "Multipart upload part size (at least 8 MiB)"),
    Variable("MEDIA_S3_REDIRECT_TTL_SECONDS", "60", "Lifetime of a redirect's presigned GET URL"),
    Variable(
        "K_SINK",
        None,
        "Where the outbox's CloudEvents go (Knative's SinkBinding sets it); unset: none are sent, the"
        " process function's drain finds the work",
    ),
    Variable("K_CE_OVERRIDES", None, "Extension attributes for the CloudEvents sent (SinkBinding sets it)"),
    Variable(
        "MEDIA_EVENT_TIMEOUT_SECONDS", "2", "Connect and read timeout of one CloudEvent delivery to K_SINK"
    ),
    Variable("MEDIA_LOCAL_DRAIN_SECONDS", "5", "`make run` and `make up` only: how often the drain is sent"),
    Variable("MEDIA_PROCESS_MAX_ATTEMPTS", "5", "Attempts at an image before it is recorded as failed"),
    Variable("MEDIA_PROCESS_MAX_PIXELS", "50000000", "Images with more pixels are refused (from the header)"),
    Variable(
        "MEDIA_PROCESS_MEMORY_BYTES", "1073741824", "Address-space limit of the decoder's child process"
    ),
    Variable("MEDIA_PROCESS_TIMEOUT_SECONDS", "60", "Time limit of one image's whole variant set"),
    Variable(
        "MEDIA_DATABASE_URL",
        None,
        "PostgreSQL URL; unset: `make run` starts an embedded PostgreSQL (required in production)",
    ),
    Variable("MEDIA_AUTH_MODE", "offline", "How bearer tokens are checked: offline, introspect or both"),
    Variable(
        "MEDIA_JWT_SECRET",
        None,
        "HS256 secret for bearer tokens; unset: `make run` generates `<data dir>/dev/jwt-secret`",
    ),
    Variable("MEDIA_JWKS_URL", None, "The provider's JWKS (RS256, ES256, EdDSA tokens); unset: discovered"),
    Variable(
        "MEDIA_JWT_ALGORITHMS",
        "RS256,ES256,EdDSA,HS256",
        "Algorithms accepted (HS256 only with MEDIA_JWT_SECRET, the others only with the JWKS)",
    ),
    Variable("MEDIA_JWKS_MIN_REFRESH_SECONDS", "60", "An unknown `kid` refetches the JWKS at most so often"),
    Variable("MEDIA_JWT_ISSUER", None, "Expected `iss`, and where discovery looks; not checked when unset"),
    Variable("MEDIA_JWT_AUDIENCE", None, "Expected `aud` claim; not checked when unset"),
    Variable("MEDIA_JWT_LEEWAY_SECONDS", "30", "Clock leeway for `exp`/`nbf`/`iat`"),
    Variable("MEDIA_INTROSPECTION_URL", None, "RFC 7662 introspection endpoint; unset: discovered"),
    Variable("MEDIA_INTROSPECTION_CLIENT_ID", None, "The service's client id at the introspection endpoint"),
    Variable("MEDIA_INTROSPECTION_CLIENT_SECRET", None, "Its client secret"),
    Variable(
        "MEDIA_INTROSPECTION_CACHE_SECONDS",
        "30",
        "How long an active introspection answer is reused (never past the token's `exp`)",
    ),
    Variable("MEDIA_PROVIDER_TIMEOUT_SECONDS", "2", "Timeout of each call to the identity provider"),
    Variable("MEDIA_MAX_UPLOAD_BYTES", str(100 * MiB), "Largest accepted upload (100 MiB)"),
    Variable(
        "MEDIA_ALLOWED_TYPES",
        ",".join(DEFAULT_ALLOWED_TYPES),
        "Comma-separated MIME types accepted, as detected from the content's magic bytes",
    ),
    Variable(
        "MEDIA_PUBLIC_BASE_URL",
        None,
        "Absolute base of the URLs the API hands out; unset: `http://localhost:$MEDIA_PORT`",
    ),
    Variable(
        "MEDIA_PRESIGN_SECRET",
        None,
        "HMAC key of presigned upload URLs and signed download links; unset: `make run` generates one",
    ),
    Variable(
        "MEDIA_PRESIGN_PREVIOUS_SECRET", None, "The previous key, still accepted while clients move over"
    ),
    Variable("MEDIA_PRESIGN_TTL_SECONDS", "900", "How long a presigned upload URL is valid"),
    Variable("MEDIA_DOWNLOAD_URL_TTL_SECONDS", "300", "How long a signed download link is valid"),
    Variable(
        "MEDIA_PENDING_GRACE_SECONDS",
        "3600",
        "Pending uploads are removed this long after their URL expired (covers slow uploads in flight)",
    ),
    Variable("MEDIA_CORS_ORIGINS", None, "Comma-separated exact origins allowed by CORS; unset: no CORS"),
    Variable("MEDIA_DB_POOL_MAX", "8", "Connections per process in the PostgreSQL pool"),
    Variable(
        "MEDIA_DB_POOLING",
        "session",
        "session: PostgreSQL directly (or a session pooler); transaction: PgBouncer in transaction mode",
    ),
    Variable(
        "MEDIA_DB_TIMEOUT_SECONDS",
        "2",
        "Wait for a pool connection, and for each round trip on it, before 503; readiness in all",
    ),
    Variable(
        "MEDIA_TEMP_MAX_AGE_SECONDS",
        "3600",
        "Temp files untouched this long are swept, unless their writer is alive (it holds a lock)",
    ),
    Variable("MEDIA_TEMP_SWEEP_INTERVAL_SECONDS", "600", "How often each process sweeps stale temp files"),
    Variable(
        "MEDIA_ORPHAN_GRACE_SECONDS",
        "3600",
        "A blob no record references is removed once it is this old (the reconciler)",
    ),
    Variable(
        "MEDIA_QUOTA_BYTES_PER_USER", None, "Bytes a subject may keep stored (logical); unset: unlimited"
    ),
    Variable("MEDIA_QUOTA_FILES_PER_USER", None, "Files a subject may keep stored; unset: unlimited"),
    Variable(
        "MEDIA_MIN_FREE_BYTES",
        str(512 * MiB),
        "New uploads get 507 while the CAS volume has less free space than this (fs only); 0: off",
    ),
    Variable("MEDIA_SCAN", "off", "Malware scanning of every upload while it streams: off or clamd"),
    Variable(
        "MEDIA_CLAMD_ADDRESS", "tcp://127.0.0.1:3310", "clamd's socket: tcp://host:port or unix:///path"
    ),
    Variable("MEDIA_SCAN_TIMEOUT_SECONDS", "10", "Connect, send and verdict timeout of each clamd exchange"),
    Variable(
        "MEDIA_SCAN_FAIL_OPEN",
        "0",
        "1: an upload is stored unscanned when clamd is down or slow (logged, counted); 0: it gets 503",
    ),
    Variable(
        "MEDIA_SCRUB_MIB_PER_SECOND",
        "2",
        "The integrity scrub's read rate per maintenance round (MiB/s); 0: no background scrub",
    ),
    Variable(
        "MEDIA_SCRUB_INTERVAL_HOURS", "168", "The scrub covers the whole store once per this many hours"
    ),
    Variable(
        "MEDIA_UNATTACHED_DEFAULT",
        "0",
        "1: uploads expire unless attached (as if they asked `expires_unattached`)",
    ),
    Variable("MEDIA_UNATTACHED_TTL_HOURS", "24", "How long an item that asked to expire may stay unattached"),
    Variable("MEDIA_MAX_ATTACHMENTS_PER_MEDIA", "50", "Attachments one item may have (409 past it)"),
    Variable(
        "MEDIA_MAX_ATTACHMENTS_PER_REF", "500", "Items one external record may have attached (409 past it)"
    ),
    Variable(
        "MEDIA_CHANGES_RETENTION_DAYS",
        "7",
        "The change feed keeps this many days; an older cursor answers 410",
    ),
    Variable("MEDIA_LOG_LEVEL", "INFO", "Python log level of the JSON logs"),
    Variable("MEDIA_AUDIT_LOG", "on", "The audit events on the logger `media.audit`: on or off"),
    Variable("MEDIA_METRICS_HTTP", "on", "The HTTP metrics of /metrics: on or off"),
    Variable("MEDIA_METRICS_BUSINESS", "on", "The business metrics (uploads, downloads...): on or off"),
    Variable("MEDIA_METRICS_SYSTEM", "on", "The system metrics (database, storage, auth): on or off"),
    Variable("MEDIA_RATE_LIMIT_UPLOADS_PER_MINUTE", "60", "Uploads and presigned URLs per subject; 0: off"),
    Variable(
        "MEDIA_RATE_LIMIT_REQUESTS_PER_MINUTE_PER_IP",
        "600",
        "Uploads, presigns, presigned PUTs and deletes per client IP; 0: off",
    ),
    Variable(
        "MEDIA_RATE_LIMIT_UPLOAD_BYTES_PER_HOUR",
        str(20 * 1024 * MiB),
        "Bytes uploaded per subject (20 GiB), counted while the body streams; 0: off",
    ),
    Variable(
        "MEDIA_TRUSTED_PROXY_HOPS",
        "0",
        "Proxies in front that append to X-Forwarded-For; 0: the client is the peer address",
    ),
    Variable(
        "MEDIA_THREADS",
        "8",
        "Request threads per worker process (set Knative's containerConcurrency to it); probes have two more",
    ),
    Variable("MEDIA_WORKERS", "1", "gunicorn worker processes per function process"),
    Variable(
        "MEDIA_HEADER_TIMEOUT_SECONDS",
        "10",
        "A request's line and headers must arrive within this, or it is answered 408 and closed",
    ),
    Variable(
        "MEDIA_BODY_IDLE_TIMEOUT_SECONDS",
        "60",
        "A body that stops arriving (or a response nobody reads) for this long ends the request (408)",
    ),
)
