"""The local stand-in for the ingress: one WSGI app that loads every function through
functions-framework (exactly as each is deployed) and dispatches by method and path using the
routing table, as the Kubernetes routes will.

It also serves the demo page at `/demo/` (static files, no build step) and, only while the
generated development JWT secret is in use, `GET /demo/token`, which hands the page a token.
Neither is part of the service's routing table: they exist only under `make run`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import functions_framework
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound
from werkzeug.wrappers import Request, Response

from common import routing, web
from common.problems import MethodNotAllowed, NotFound, Problem
from common.tokens import READ, WRITE, issue_hs256

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"


def load_functions(functions_dir: Path = FUNCTIONS_DIR) -> dict[str, WsgiApp]:
    """Each `functions/<name>/main.py` as functions-framework serves it (target = folder name)."""
    apps: dict[str, WsgiApp] = {}
    for main in sorted(functions_dir.glob("*/main.py")):
        name = main.parent.name
        apps[name] = functions_framework.create_app(target=name, source=str(main))  # type: ignore[no-untyped-call]
    return apps


DEMO_DIR = Path(__file__).resolve().parent / "demo"
_DEMO_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}


@dataclass(frozen=True)
class Demo:
    token_secret: str | None = None  # set only when the development JWT secret is in use

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        name = request.path.removeprefix("/demo").strip("/") or "index.html"
        if name == "token" and self.token_secret:
            token = issue_hs256(self.token_secret, "demo-user", (READ, WRITE), ttl_seconds=3600)
            return web.json_response({"token": token})(environ, start_response)
        path = DEMO_DIR / name
        if request.method not in ("GET", "HEAD") or "/" in name or not path.is_file():
            return web.problem_response(NotFound(f"No route for {request.path}"), request)(
                environ, start_response
            )
        headers = {
            "Content-Type": _DEMO_TYPES.get(path.suffix, "application/octet-stream"),
            "Cache-Control": "no-cache",
        }
        return Response(path.read_bytes(), headers=headers)(environ, start_response)


def build_router(apps: dict[str, WsgiApp], demo: Demo | None = None) -> WsgiApp:
    missing = set(routing.functions()) - set(apps)
    if missing:
        raise RuntimeError(f"the routing table names functions with no main.py: {sorted(missing)}")
    ingress = routing.ingress_map(internal=True)  # the cluster's own calls too: one process here

    def router(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if demo is not None and (path == "/demo" or path.startswith("/demo/")):
            return demo(environ, start_response)
        try:
            function, _ = ingress.bind_to_environ(environ).match()
        except (WzMethodNotAllowed, WzNotFound) as exc:
            request = Request(environ)
            problem: Problem = (
                MethodNotAllowed(sorted(exc.valid_methods or []))
                if isinstance(exc, WzMethodNotAllowed)
                else NotFound(f"No route for {request.path}")
            )
            return web.problem_response(problem, request)(environ, start_response)
        return apps[function](environ, start_response)

    return router
