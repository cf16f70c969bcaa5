"""The process function: CloudEvents in (`POST /events`, from a Knative Trigger or the drain's
PingSource), responsive variants of the uploaded images out (common/processing.py)."""

from __future__ import annotations

import functions_framework
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from common import events, health, processing, web
from common.services import Services, default_provider

routes = web.Routes("process")
health.register_probes(routes)


@routes.operation("receiveEvent")
def receive_event(request: Request, services: Services) -> Response:
    event = events.parse(dict(request.headers), web.read_small_body(request))
    done = processing.handle(services, event)
    web.note(request, event=event.type, **vars(done))
    return Response(status=202)  # empty: a reply body would come back as a new event


functions_framework.errorhandler(HTTPException)(web.render_http_exception)
process = functions_framework.http(routes.target(default_provider))
