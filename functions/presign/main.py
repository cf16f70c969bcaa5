"""The presign function: `POST /media/uploads` signs a PUT URL so a browser can upload straight to
the upload function, without a bearer token on the upload itself."""

from __future__ import annotations

import functions_framework
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from common import health, presigned, web
from common.services import Services, default_provider

routes = web.Routes("presign")
health.register_probes(routes)
web.register_preflights(routes)


@routes.operation("presignUpload")
def presign_upload(request: Request, services: Services) -> Response:
    principal = web.authenticate(request, services)
    upload = presigned.presign(services, principal, web.read_json(request))
    web.note(request, upload.record)
    location = f"{services.config.public_base_url}/media/{upload.record.id}"
    return web.json_response(presigned.presigned_json(upload), 201, {"Location": location})


functions_framework.errorhandler(HTTPException)(web.render_http_exception)
presign = functions_framework.http(routes.target(default_provider))
