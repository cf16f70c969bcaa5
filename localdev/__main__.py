"""`make run`: the whole service on one port, with an embedded PostgreSQL unless one is configured.

1. A development JWT secret is generated into `<data dir>/dev/jwt-secret` if MEDIA_JWT_SECRET is unset.
2. Unless MEDIA_DATABASE_URL is set, PostgreSQL (the `pgserver` package) starts on a Unix socket
   under `<data dir>/pg`.
3. Migrations run; temp files left by a previous run are removed (nothing else writes here now).
4. The configuration is checked as a deployed function checks it (a bad value: one line naming
   it, exit status 78), then `common.server` (gunicorn with the service's own worker) serves the
   local router (every function, dispatched by the routing table) on MEDIA_HOST:MEDIA_PORT, with
   one worker per core (at most 4) unless MEDIA_WORKERS is set.
   Ctrl-C or SIGTERM stops gunicorn, then the embedded database.
5. Image processing runs too: `K_SINK` (unless set) is this process's own `/events`, as a Knative
   Trigger would deliver there, and a drain is sent every few seconds (`pinger.py`), as a PingSource.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import psycopg

from common import logs, metrics_dir
from common.config import Config, ConfigError, DevelopmentModeWarning
from common.localstore import LocalBlobStore
from common.migrate import migrate
from common.server import fail
from localdev import devsecrets

# The service's own modules (common.services, localdev.router and what they import) are imported
# inside the functions below, after `main` has decided where prometheus-client keeps its values.

log = logging.getLogger("media.localdev")


def start_embedded_postgres(data_dir: Path) -> tuple[Any, str]:
    """Start (or take over) the embedded server under `<data dir>/pg`; `cleanup()` stops it."""
    import pgserver

    pgdata = data_dir / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    forget_dead_users(pgdata)
    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")  # type: ignore[attr-defined]
    return server, str(server.get_uri())


def forget_dead_users(pgdata: Path) -> None:
    """pgserver keeps the pids of the processes using a server in `<pgdata>/.handle_pids.json` and
    stops the server with the last of them. A `make run` killed with -9 never takes itself off, so
    the next one was never the last and left PostgreSQL running at Ctrl-C. The pids of processes
    that are gone are dropped here, so the running server is taken over and stopped as usual."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        log.info("embedded PostgreSQL: forgetting users that are gone: %s", sorted(set(pids) - set(alive)))
        handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status  # a zombie is gone too


def prepare() -> tuple[Config, Any, bool]:
    """Fill in the development defaults, start the embedded database if needed, migrate.

    Returns the config, the embedded server (or None) and whether the JWT secret is the generated
    development one (which enables the demo page's token endpoint).
    """
    logs.configure()
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.simplefilter("default", DevelopmentModeWarning)
    config = Config.from_env(os.environ)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"MEDIA_DATA_DIR: cannot create {config.data_dir} ({exc.strerror})") from None

    # The development JWT secret, unless a real identity provider is configured (see README, Security).
    provider = config.jwks_url or config.jwt_issuer or config.online
    dev_jwt = not config.jwt_secret and not provider
    generated = [("MEDIA_PRESIGN_SECRET", "presign-secret")]
    if dev_jwt:
        generated.append(("MEDIA_JWT_SECRET", "jwt-secret"))
    for variable, name in generated:
        if not os.environ.get(variable):
            os.environ[variable] = devsecrets.secret(config.data_dir, name)
            warnings.warn(
                f"{variable} unset: using the development secret in {devsecrets.path(config.data_dir, name)}",
                DevelopmentModeWarning,
                stacklevel=1,
            )
    if not os.environ.get("K_SINK"):
        # The outbox's events go to this process's own /events (the router routes it), as a
        # Knative Trigger would send them to the process function.
        os.environ["K_SINK"] = f"http://127.0.0.1:{config.port}/events"
    server = None
    if not config.database_url:
        server, url = start_embedded_postgres(config.data_dir)
        os.environ["MEDIA_DATABASE_URL"] = url
        log.info("embedded PostgreSQL running under %s", config.data_dir / "pg")
    from common.services import check_configuration

    try:
        config = Config.from_env(os.environ)
        check_configuration(config)  # what a deployed function checks before serving
        applied = migrate(config.require_database_url())
    except BaseException:
        if server is not None:
            server.cleanup()
        raise
    log.info("migrations applied: %s", applied or "none (up to date)")
    return config, server, dev_jwt


MAX_LOCAL_WORKERS = 4  # a laptop's make run needs no more; each worker holds its own pools


def serve(config: Config, dev_jwt: bool) -> None:
    from common.server import Server
    from localdev.pinger import Pinger
    from localdev.router import Demo, build_router, load_functions

    if config.storage == "fs":
        # Nothing else writes to this volume while we start, so every temp file is abandoned.
        LocalBlobStore(config.cas_root).sweep_temp(0)
    demo = Demo(token_secret=config.jwt_secret if dev_jwt else None)
    app = build_router(load_functions(), demo=demo)
    print(
        f"media service on http://{config.host}:{config.port}  (`make token` prints a bearer token;"
        f" the demo page is {config.public_base_url}/demo/)",
        flush=True,
    )
    # The PingSource's part: a drain every few seconds, so no upload is left unprocessed.
    pinger = Pinger(lambda: f"http://127.0.0.1:{config.port}/events", config.local_drain_seconds).start()
    try:
        # The same server as every deployed function (common/server.py), with all of them in one app.
        Server(app, config, f"{config.host}:{config.port}").run()
    finally:
        pinger.stop()


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "serve"
    if command not in ("serve", "migrate"):
        print("usage: python -m localdev [serve|migrate]", file=sys.stderr)
        return 2
    # One gunicorn worker per core unless MEDIA_WORKERS says otherwise: every function is served by
    # this one process, and a worker's Python runs on one core at a time (a 1 KiB GET at 16
    # clients: ~700 req/s with one worker of 8 threads, ~1,900 with two workers on 2 cores).
    os.environ.setdefault("MEDIA_WORKERS", str(max(1, min(os.cpu_count() or 1, MAX_LOCAL_WORKERS))))
    try:
        if Config.from_env(os.environ).workers > 1:
            metrics_dir.prepare(os.environ)  # before prometheus-client is imported
        config, server, dev_jwt = prepare()
    except ConfigError as exc:
        return fail(f"make run: configuration error: {exc}")
    except psycopg.OperationalError as exc:
        return fail(f"make run: cannot reach MEDIA_DATABASE_URL: {str(exc).strip().splitlines()[0]}")
    try:
        if command == "serve":
            serve(config, dev_jwt)
    finally:
        if server is not None:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
