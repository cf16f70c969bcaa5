"""The health function: `GET /health/live` and `GET /health/ready` for the whole service."""

from __future__ import annotations

import functions_framework
from werkzeug.exceptions import HTTPException

from common import web
from common.health import register_probes
from common.services import default_provider

routes = web.Routes("health")
register_probes(routes)

functions_framework.errorhandler(HTTPException)(web.render_http_exception)
health = functions_framework.http(routes.target(default_provider))
