"""The local stand-in for the ingress: one WSGI app that loads every function through
functions-framework (exactly as each is deployed) and dispatches by method and path using the
routing table, as the Kubernetes routes will."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import functions_framework
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound
from werkzeug.wrappers import Request

from common import routing, web
from common.problems import MethodNotAllowed, NotFound, Problem

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"


def load_functions(functions_dir: Path = FUNCTIONS_DIR) -> dict[str, WsgiApp]:
    """Each `functions/<name>/main.py` as functions-framework serves it (target = folder name)."""
    apps: dict[str, WsgiApp] = {}
    for main in sorted(functions_dir.glob("*/main.py")):
        name = main.parent.name
        apps[name] = functions_framework.create_app(target=name, source=str(main))  # type: ignore[no-untyped-call]
    return apps


def build_router(apps: dict[str, WsgiApp]) -> WsgiApp:
    missing = set(routing.functions()) - set(apps)
    if missing:
        raise RuntimeError(f"the routing table names functions with no main.py: {sorted(missing)}")
    ingress = routing.ingress_map()

    def router(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
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
