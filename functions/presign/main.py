"""The presign function. Its real work (`POST /media/uploads`) is the next issue; for now it is a
deployable target that answers its own probe routes."""

from __future__ import annotations

import functions_framework
from werkzeug.exceptions import HTTPException

from common import health, web
from common.services import default_provider

routes = web.Routes("presign")
health.register_probes(routes)

functions_framework.errorhandler(HTTPException)(web.render_http_exception)
presign = functions_framework.http(routes.target(default_provider))
