"""Request/response glue shared by the functions: dispatch by the routing table, problem+json,
authentication, JSON bodies and responses, request ids and access logs (stored bytes are served
by `serving.py`).

A function's `main.py` declares its handlers on a `Routes` object and exposes `routes.target()`
to functions-framework; tests call `routes.wsgi_app(lambda: services)` with fakes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound
from werkzeug.routing import Map, MapAdapter
from werkzeug.wrappers import Request, Response

from common import audit, cors, logs, metrics, routing, text, tracing
from common.problems import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Problem,
    Unauthorized,
    UnprocessableContent,
    UnsupportedMediaType,
    problem_for_status,
    to_problem,
)
from common.ratelimit import client_ip
from common.records import MediaRecord
from common.services import Services
from common.tokens import Principal, bearer_token
from common.uploads import read_body

log = logging.getLogger("media.http")

ServiceSource = Callable[[], Services]
Handler = Callable[..., Response]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# A presigned upload URL is a credential: its token never goes into the logs.
_CAPABILITY_PATH = re.compile(r"^(/media/uploads/)[^/]+")


def loggable_path(path: str) -> str:
    return _CAPABILITY_PATH.sub(r"\1<token>", path)


def _auth_failure_reason(problem: Unauthorized | Forbidden) -> str:
    """A short, bounded label: RFC 6750's error code (never the detail, which may quote input)."""
    if isinstance(problem, Forbidden):
        return "insufficient_scope" if problem.scope else "forbidden"
    return problem.error or "missing_token"


def client_ip_of(request: Request, services: Services) -> str:
    """The client's address, through MEDIA_TRUSTED_PROXY_HOPS proxies (remembered per request)."""
    ip = request.environ.get("media.client_ip")
    if ip is None:
        hops = services.config.trusted_proxy_hops
        ip = client_ip(request.remote_addr, request.headers.get("X-Forwarded-For"), hops)
        request.environ["media.client_ip"] = ip
    return str(ip)


def request_id_of(request: Request) -> str:
    """The client's X-Request-ID when it is sane, else the trace id of its `traceparent`, else new."""
    rid = request.environ.get("media.request_id")
    if rid is None:
        given = request.headers.get("X-Request-ID", "")
        rid = given if _REQUEST_ID.match(given) else trace_of(request).trace_id
        request.environ["media.request_id"] = rid
    return str(rid)


def trace_of(request: Request) -> tracing.Trace:
    """The request's W3C trace: the one it came with, or a new one."""
    trace = request.environ.get("media.trace")
    if not isinstance(trace, tracing.Trace):
        trace = tracing.parse(request.headers.get("traceparent")) or tracing.new()
        request.environ["media.trace"] = trace
    return trace


def problem_response(problem: Problem, request: Request) -> Response:
    """RFC 9457 body, sent as a *streamed* response.

    functions-framework reads the whole request body after every non-streamed response (its
    `read_request` after-request hook); an early 401/413/415 on a large upload would pull the
    whole upload in. A streamed body skips that hook, and `Connection: close` tells the client
    (and proxies) that the rest of its body will not be read.
    """
    body = json.dumps(problem.body(request_id_of(request))).encode()
    response = Response(iter([body]), status=problem.status, content_type="application/problem+json")
    response.headers["Content-Length"] = str(len(body))
    response.headers.update(problem.headers())
    response.headers["X-Request-ID"] = request_id_of(request)
    if _has_unread_body(request):
        response.headers["Connection"] = "close"
    return response


def _has_unread_body(request: Request) -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Streamed for the same reason as `problem_response`: after a successful upload, whatever a
    client sends past the closing multipart boundary must not be read into memory by the
    framework's after-request hook."""
    body = json.dumps(data).encode()
    response = Response(iter([body]), status=status, content_type="application/json")
    response.headers["Content-Length"] = str(len(body))
    response.headers.update(headers or {})
    return response


JSON_BODY_LIMIT = 16 * 1024


def read_small_body(request: Request, limit: int = JSON_BODY_LIMIT) -> bytes:
    """A small request body (JSON, a CloudEvent), read with a bound: 413 over `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The body is limited to {limit} bytes", limit=limit)
    raw = read_body(request.stream, limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body is limited to {limit} bytes", limit=limit)
    return raw


def read_json(
    request: Request,
    limit: int = JSON_BODY_LIMIT,
    types: tuple[str, ...] = ("application/json",),
    optional: bool = False,
) -> Any:
    """A small JSON request body, read with a bound (never `request.get_json()` on untrusted sizes);
    `optional`: no body at all is None."""
    if optional and not request.content_length and not request.mimetype:
        return None
    if request.mimetype not in types:
        raise UnsupportedMediaType(f"Send Content-Type: {' or '.join(types)}")
    raw = read_small_body(request, limit)
    if optional and not raw:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UnprocessableContent("The body is not valid JSON") from None
    bad = next(text.unstorable_strings(doc), None)
    if bad is not None:
        raise UnprocessableContent(f"`{bad[0]}` {bad[1]}")
    return doc


def authenticate(request: Request, services: Services) -> Principal:
    principal = services.verifier.verify(bearer_token(request.headers.get("Authorization")))
    request.environ["media.principal"] = principal  # the audit event's actor
    return principal


def note(request: Request, record: MediaRecord | None = None, **fields: Any) -> None:
    """What the audit event of this request should say about the media it concerned."""
    details: dict[str, Any] = request.environ.setdefault("media.audit", {})
    if record is not None:
        details.update(media_id=str(record.id), sha256=record.sha256, size=record.size, actor=record.owner)
    details.update(fields)


class Routes:
    """The handlers of one function, keyed by the routing table's operation ids."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.table = routing.routes_served_by(function)
        self.by_operation = {r.operation_id: r for r in self.table}
        self.handlers: dict[str, tuple[Handler, bool]] = {}
        self._map: Map | None = None
        self._adapter: MapAdapter | None = None

    def operation(self, *operation_ids: str, services: bool = True) -> Callable[[Handler], Handler]:
        """Register a handler: `(request, services)`, or `(request)` when `services=False`."""

        def register(handler: Handler) -> Handler:
            for op in operation_ids:
                self.handlers[op] = (handler, services)
            return handler

        return register

    @property
    def url_map(self) -> Map:
        if self._map is None:
            self._map = routing.url_map(self.table)
        return self._map

    @property
    def adapter(self) -> MapAdapter:
        """One adapter for every request: no rule depends on the host, and matching changes
        nothing in it (binding one per request cost more than the match)."""
        if self._adapter is None:
            self._adapter = self.url_map.bind("media")
        return self._adapter

    def dispatch(self, request: Request, provider: ServiceSource) -> Response:
        started = time.perf_counter()
        trace = trace_of(request)
        with (
            tracing.bound(trace),
            logs.request_context(request_id=request_id_of(request), trace_id=trace.trace_id),
        ):
            return self._dispatch(request, provider, started)

    def _dispatch(self, request: Request, provider: ServiceSource, started: float) -> Response:
        try:
            response = self._handle(request, provider)
        except Exception as exc:
            problem = problem_of(exc)
            if type(problem) is Problem:
                log.exception("unhandled error on %s %s", request.method, request.path)
            elif isinstance(problem, Unauthorized | Forbidden):
                metrics.system(metrics.AUTH_FAILURES, 1, _auth_failure_reason(problem))
            response = problem_response(problem, request)
        if not response.is_streamed:
            # functions-framework reads the whole request body after a non-streamed response (see
            # `problem_response`): a 204 to a DELETE sent with a gigabyte body would buffer it all.
            body = response.get_data()
            response.response = iter([body])
            if "Content-Length" not in response.headers and response.status_code not in (204, 304):
                response.headers["Content-Length"] = str(len(body))
        response.headers["X-Request-ID"] = request_id_of(request)
        for name, value in request.environ.get("media.ratelimit", {}).items():
            response.headers.setdefault(name, value)
        services = request.environ.get("media.services")
        if isinstance(services, Services) and "Access-Control-Allow-Origin" not in response.headers:
            response.headers.update(
                cors.response_headers(services.config.cors_origins, request.headers.get("Origin"))
            )
        self._access_log(request, response, started)
        self._audit(request, response)
        self._measure(request, response, started)
        return response

    def _measure(self, request: Request, response: Response, started: float) -> None:
        operation = request.environ.get("media.operation")
        route = self.by_operation[operation].path if operation in self.by_operation else "(no route)"
        metrics.observe_http(
            self.function,
            route,
            request.method,
            response.status_code,
            time.perf_counter() - started,
            request.content_length or 0,
            int(response.headers.get("Content-Length", "0") or 0),
        )
        metrics.request_answered(operation, response.status_code, request.environ.get("media.audit", {}))

    def _audit(self, request: Request, response: Response) -> None:
        services = request.environ.get("media.services")
        if not isinstance(services, Services) or not services.config.audit_log:
            return  # no services: a probe, or a route that matched nothing
        operation = request.environ.get("media.operation")
        names = audit.events_for(operation, response.status_code)
        if not names:
            return
        details: dict[str, Any] = request.environ.get("media.audit", {})
        principal = request.environ.get("media.principal")
        args = request.environ.get("media.args", {})
        for name in names:
            audit.emit(
                audit.Event(
                    event=name,
                    outcome=audit.outcome_of(response.status_code),
                    status=response.status_code,
                    actor=details.get("actor") or (principal.subject if principal else None),
                    client_ip=client_ip_of(request, services),
                    media_id=details.get("media_id") or args.get("id"),
                    sha256=details.get("sha256"),
                    size=details.get("size"),
                    request_id=request_id_of(request),
                    function=self.function,
                )
            )

    def _handle(self, request: Request, provider: ServiceSource) -> Response:
        try:
            operation_id, args = self.adapter.match(request.path, request.method)
        except WzMethodNotAllowed as exc:
            raise MethodNotAllowed(sorted(exc.valid_methods or [])) from None
        except WzNotFound:
            raise NotFound(f"No route for {request.path}") from None
        for name, value in request.args.items(multi=True):
            problem = text.problem_in(name) or text.problem_in(value)
            if problem is not None:
                raise BadRequest(f"The query parameter `{text.scrub(name)}` {problem}")
        handler, wants_services = self.handlers[operation_id]
        request.environ["media.operation"] = operation_id
        request.environ["media.args"] = args
        if not wants_services:
            return handler(request, **args)
        services = provider()
        request.environ["media.services"] = services  # for the CORS headers of whatever comes back
        if self.by_operation[operation_id].rate_limited:
            limiter = services.limiter
            decision = limiter.take(limiter.requests, client_ip_of(request, services))
            if decision is not None:
                request.environ["media.ratelimit"] = decision.headers()
        return handler(request, services, **args)

    def _access_log(self, request: Request, response: Response, started: float) -> None:
        log.info(
            "request",
            extra={
                "function": self.function,
                "method": request.method,
                "path": loggable_path(request.path),
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "request_id": request_id_of(request),
            },
        )

    def target(self, provider: ServiceSource) -> Callable[[Request], Response]:
        """The callable functions-framework serves (it passes Flask's request)."""

        logs.configure()

        def serve(request: Request) -> Response:
            return self.dispatch(request, provider)

        serve.__name__ = self.function
        return serve

    def wsgi_app(self, provider: ServiceSource) -> WsgiApp:
        """The same dispatch as a bare WSGI app, for tests that pass their own services."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            return self.dispatch(Request(environ), provider)(environ, start_response)

        return app


def register_preflights(routes: Routes) -> None:
    """Answer CORS preflights for the function's OPTIONS routes: no token, no signature checked."""
    for route in routes.table:
        if route.method != "OPTIONS":
            continue
        methods = routing.methods_of(route.path)

        def preflight(
            request: Request,
            services: Services,
            methods: tuple[str, ...] = methods,
            allow: tuple[str, ...] = route.cors_allow_headers,
            **_: str,
        ) -> Response:
            headers = cors.preflight_headers(
                services.config.cors_origins, request.headers.get("Origin"), methods, allow
            )
            return Response(status=204, headers=headers)

        routes.operation(route.operation_id)(preflight)


def problem_of(exc: BaseException) -> Problem:
    """The problem the client sees for any exception; Werkzeug's HTTP errors keep their status and
    headers (`Allow` of a 405, say)."""
    if isinstance(exc, WzMethodNotAllowed):
        return MethodNotAllowed(sorted(exc.valid_methods or []))
    if isinstance(exc, HTTPException):
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type", "content-length")}
        return problem_for_status(exc.code or 500, exc.description, headers)
    return to_problem(exc)


def render_http_exception(exc: HTTPException) -> Response:
    """For the errors Flask and functions-framework raise outside our dispatch (404 for
    /robots.txt and /favicon.ico, an unread body past a limit...): their status, as problem+json."""
    from flask import request as flask_request

    return problem_response(problem_of(exc), flask_request)
