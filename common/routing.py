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
from werkzeug.routing import BaseConverter, Map, Rule

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
    internal: bool = False  # called inside the cluster (Knative Eventing), never routed by the ingress

    @property
    def rule(self) -> str:
        """The Werkzeug rule: `/media/{id}` becomes `/media/<uuid_text:id>` (the parameter's
        `format: uuid`), `/media/uploads/{token}` becomes `/media/uploads/<token>`."""
        formats = path_formats(self.path)

        def rule(match: re.Match[str]) -> str:
            name = match.group(1)
            return f"<uuid_text:{name}>" if formats.get(name) == "uuid" else f"<{name}>"

        return _PARAM.sub(rule, self.path)


# A path parameter documented as `format: uuid` matches only a UUID, so `/media/uploads` can never
# be taken for a record's id (GET /media/uploads is a 405, not a 404 for the id "uploads").
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class UuidText(BaseConverter):
    """A UUID segment, handed to the handler as the text it is."""

    regex = UUID_PATTERN


def path_formats(path: str) -> dict[str, str]:
    """The `format` of each path parameter of `path` in the document ("" when it has none)."""
    item = openapi_document()["paths"][path]
    params = [*item.get("parameters", [])]
    for method in HTTP_METHODS:
        params.extend(item.get(method, {}).get("parameters", []))
    return {p["name"]: p.get("schema", {}).get("format", "") for p in params if p["in"] == "path"}


def path_regex(template: str) -> str:
    """`/media/{id}/content` -> `^/media/<UUID>/content$`, other parameters `[^/]+` (literal
    parts escaped): what the ingress matches, the same as the Werkzeug rules."""
    formats = path_formats(template)
    pieces = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", template)
    out = []
    for piece in pieces:
        if piece.startswith("{") and piece.endswith("}"):
            out.append(UUID_PATTERN if formats.get(piece[1:-1]) == "uuid" else "[^/]+")
        else:
            out.append(re.escape(piece))
    return "^" + "".join(out) + "$"


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("common").joinpath("openapi.yaml").read_text(encoding="utf-8")
    # libyaml's safe loader where PyYAML was built with it (the wheels are): 7 ms instead of 61 ms
    # for this document, paid by every function process as it starts (a cold start is ~0.4 s).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc: dict[str, Any] = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, either way
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
                    internal=bool(op.get("x-internal", False)),
                    scopes=tuple(
                        scope
                        for requirement in op.get("security", ())
                        for scope in requirement.get("bearer", ())
                    ),
                )
            )
    return tuple(table)


@dataclass(frozen=True)
class FunctionSettings:
    """What the table says of a function beyond its routes (`x-functions`)."""

    name: str
    rehearsal_processes: int = 1  # `make up`: processes, as Knative replicas
    rehearsal_threads: int = 4  # `make up`: threads per process, as containerConcurrency


def functions() -> tuple[str, ...]:
    """Every function: those that serve a route and those `x-functions` names."""
    named = openapi_document().get("x-functions") or {}
    return tuple(sorted({r.function for r in routes()} | set(named)))


def function_settings(name: str) -> FunctionSettings:
    entry = (openapi_document().get("x-functions") or {}).get(name) or {}
    rehearsal = entry.get("rehearsal") or {}
    return FunctionSettings(
        name,
        rehearsal_processes=int(rehearsal.get("processes", 1)),
        rehearsal_threads=int(rehearsal.get("threads", 4)),
    )


def events_route() -> Route | None:
    """Where CloudEvents are delivered: the internal POST route (the process function's /events)."""
    return next((r for r in routes() if r.internal and r.method == "POST"), None)


def public_routes() -> tuple[Route, ...]:
    """What the ingress routes: every route but the internal ones."""
    return tuple(r for r in routes() if not r.internal)


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
        converters={"uuid_text": UuidText},
    )


def ingress_map(internal: bool = False) -> Map:
    """What the ingress does: (method, path) to the owning function's name (`internal`: also the
    routes only the cluster calls, for `make run`'s router, which stands in for both)."""
    table = routes() if internal else public_routes()
    return Map(
        [Rule(r.rule, methods=[r.method], endpoint=r.function) for r in table],
        strict_slashes=False,
        merge_slashes=False,
        converters={"uuid_text": UuidText},
    )
