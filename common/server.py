"""How every function, and `make run`'s router, is served: gunicorn with a worker hardened against
clients nobody controls, behind a configuration checked before anything is served.

`python -m common.server --target upload` is what a function's container runs. It reads the
configuration first and, when a value is wrong, exits with status 78 and one line naming the
variable (also written to /dev/termination-log, which Kubernetes shows as the container's last
state). Then it loads `functions/<target>/main.py` through functions-framework, exactly as that
framework's own CLI does, and serves it with `worker.MediaWorker` instead of gunicorn's defaults.

What the worker does about clients (slow heads, stalled bodies, probes under load) is described
in `common.worker`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from common.config import Config, ConfigError
from common.worker import LIMIT_REQUEST_LINE, METRICS_PATH, MediaWorker, Settings

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

EX_CONFIG = 78  # sysexits.h: configuration error
FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn around one WSGI app, configured from `Config` (nothing read from gunicorn's own
    command line or environment)."""

    def __init__(self, app: WsgiApp, config: Config, bind: str) -> None:
        from common import metrics

        if config.workers > 1 and not metrics.multiprocess_mode():
            raise RuntimeError(f"{metrics.MULTIPROC_ENV} must be set before prometheus-client is imported")
        metrics.configure(
            http=config.metrics_http, business=config.metrics_business, system=config.metrics_system
        )
        self._app = serve_metrics(honour_connection_close(with_execution_id(app)), config.cas_root)
        worker = type("MediaWorker", (MediaWorker,), {"settings": Settings.of(config)})
        self._options: dict[str, Any] = {
            "bind": bind,
            "workers": config.workers,
            "threads": config.threads,
            "worker_class": worker,
            "timeout": 0,  # uploads take as long as they take; each wait has its own deadline
            "graceful_timeout": 10,
            "keepalive": 5,
            "limit_request_line": LIMIT_REQUEST_LINE,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
            "accesslog": None,  # the dispatch logs every request as JSON
            "loglevel": "warning",
            # gunicorn 27's control socket wants a writable $HOME; nothing here uses gunicornc.
            "control_socket_disable": True,
            "child_exit": lambda arbiter, worker: metrics.worker_exited(worker.pid),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> WsgiApp:
        return self._app


def serve_metrics(app: WsgiApp, volume: Path) -> WsgiApp:
    """`GET /metrics` answered here, below the function and its routing table: on each process's
    own port for Prometheus, never through the ingress, which only routes the table's paths."""
    from common import metrics

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return app(environ, start_response)
        metrics.storage_free(volume)
        body, content_type = metrics.exposition()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else []

    return wrapped


def with_execution_id(app: WsgiApp) -> WsgiApp:
    """functions-framework gives each request an execution id (`Function-Execution-Id`, kept when
    the request brings one) drawn character by character from `random`: a twentieth of a small
    request's CPU. The same twelve characters, hex, from one read of the OS's randomness."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_FUNCTION_EXECUTION_ID"):
            environ["HTTP_FUNCTION_EXECUTION_ID"] = os.urandom(6).hex()
        return app(environ, start_response)

    return wrapped


def honour_connection_close(app: WsgiApp) -> WsgiApp:
    """gunicorn drops the `Connection` header an application sends (hop-by-hop) and keeps the
    connection, draining whatever body the application did not read. The service sends
    `Connection: close` when it answers before reading a body (a 413 on a large upload, a 408):
    this makes gunicorn close the connection instead, and say so to the client."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                response = getattr(start_response, "__self__", None)  # gunicorn's Response
                if response is not None and hasattr(response, "force_close"):
                    response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


def fail(message: str) -> int:
    """One line on stderr, and in the termination log Kubernetes shows; the exit status to use."""
    print(message, file=sys.stderr, flush=True)
    try:
        with open("/dev/termination-log", "w") as f:
            f.write(message + "\n")
    except OSError:
        pass  # not in a Kubernetes container
    return EX_CONFIG


def configured() -> Config:
    """The configuration of the environment, checked for serving; ConfigError names what is wrong.

    With several workers, prometheus-client must find PROMETHEUS_MULTIPROC_DIR before anything
    imports it (it picks its storage at import): set here, emptied, before the checks import the
    rest of the service.
    """
    config = Config.from_env(os.environ)
    if config.workers > 1:
        from common.metrics_dir import prepare

        prepare(os.environ)
    from common.services import check_configuration

    check_configuration(config)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.server", description=__doc__.split("\n")[0])
    env = os.environ
    parser.add_argument("--target", default=env.get("FUNCTION_TARGET"), help="the function (folder) name")
    parser.add_argument("--source", default=env.get("FUNCTION_SOURCE"), help="its main.py")
    parser.add_argument("--signature-type", default=env.get("FUNCTION_SIGNATURE_TYPE", "http"))
    parser.add_argument("--host", default=env.get("HOST", "0.0.0.0"))  # noqa: S104 - a container's port
    parser.add_argument("--port", type=int, default=int(env.get("PORT", "8080")))  # Knative sets PORT
    args = parser.parse_args(argv)
    if not args.target:
        parser.error("--target (or FUNCTION_TARGET) is required")
    try:
        config = configured()
    except ConfigError as exc:
        return fail(f"{args.target}: configuration error: {exc}")
    import functions_framework

    source = args.source or str(FUNCTIONS_DIR / args.target / "main.py")
    app = functions_framework.create_app(args.target, source, args.signature_type)  # type: ignore[no-untyped-call]
    Server(app, config, f"{args.host}:{args.port}").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
