"""The routing table: which function serves which method and path.

It lives in one place, the OpenAPI document shipped with this package (`x-function` on every
operation). Each function's URL map, the local router and (later) the Kubernetes routes are
derived from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml
from werkzeug.routing import Map, Rule

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    function: str
    method: str  # upper case
    path: str  # OpenAPI template, e.g. /media/{id}
    operation_id: str
    probe: bool = False  # also answered by every function for its own Kubernetes probes
    cors_allow_headers: tuple[str, ...] = ()  # OPTIONS: request headers the preflight allows
    scopes: tuple[str, ...] = ()  # what a bearer token needs for it (OpenAPI `security`)
    rate_limited: bool = False  # counts against the per-client-IP limit

    @property
    def rule(self) -> str:
        """The Werkzeug rule for this path: `/media/{id}` becomes `/media/<id>`."""
        return _PARAM.sub(r"<\1>", self.path)


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("common").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


@cache
def routes() -> tuple[Route, ...]:
    table: list[Route] = []
    for path, item in openapi_document()["paths"].items():
        for method in HTTP_METHODS:
            op = item.get(method)
            if op is None:
                continue
            table.append(
                Route(
                    function=op["x-function"],
                    method=method.upper(),
                    path=path,
                    operation_id=op["operationId"],
                    probe=bool(op.get("x-probe", False)),
                    cors_allow_headers=tuple(op.get("x-cors-allow-headers", ())),
                    rate_limited=bool(op.get("x-rate-limited", False)),
                    scopes=tuple(
                        scope
                        for requirement in op.get("security", ())
                        for scope in requirement.get("bearer", ())
                    ),
                )
            )
    return tuple(table)


def functions() -> tuple[str, ...]:
    return tuple(sorted({r.function for r in routes()}))


def routes_served_by(function: str) -> tuple[Route, ...]:
    """What a function's process answers: its own routes plus the probe routes."""
    return tuple(r for r in routes() if r.function == function or r.probe)


def methods_of(path: str) -> tuple[str, ...]:
    """Every method the service answers on `path`, whichever function serves it."""
    found = {r.method for r in routes() if r.path == path}
    if "GET" in found:
        found.add("HEAD")
    return tuple(sorted(found))


def url_map(table: tuple[Route, ...]) -> Map:
    """A Werkzeug map whose endpoints are operation ids (GET rules also answer HEAD)."""
    return Map(
        [Rule(r.rule, methods=[r.method], endpoint=r.operation_id) for r in table],
        strict_slashes=False,
        merge_slashes=False,
    )


def ingress_map() -> Map:
    """What the ingress does: (method, path) to the owning function's name."""
    return Map(
        [Rule(r.rule, methods=[r.method], endpoint=r.function) for r in routes()],
        strict_slashes=False,
        merge_slashes=False,
    )
