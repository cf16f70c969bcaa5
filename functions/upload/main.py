"""The upload function: `POST /media` (multipart, streamed), `PUT /media/uploads/{token}` (the
target of a presigned URL), `DELETE /media/{id}`, and a subject's erasure
(`DELETE /users/{subject}/media`, `GET /erasures/{id}`)."""

from __future__ import annotations

from typing import Any

import functions_framework
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from common import accounts, erasure, health, media, metadata, presigned, recipes, web
from common.services import Services, default_provider

routes = web.Routes("upload")
health.register_probes(routes)
web.register_preflights(routes)


@routes.operation("uploadMedia")
def upload_media(request: Request, services: Services) -> Response:
    principal = web.authenticate(request, services)
    # The raw stream, never request.files/form/data: the body is streamed into storage.
    asked = metadata.flag("expires_unattached", request.args.get("expires_unattached"))
    record = media.upload_multipart(
        services,
        principal,
        request.stream,
        request.headers.get("Content-Type"),
        request.content_length,
        recipes.expiry_of(services, asked),
    )
    web.note(request, record)
    body = media.to_json(services, record)
    return web.json_response(body, 201, {"Location": body["links"]["self"]})


@routes.operation("completeUpload")
def complete_upload(request: Request, services: Services, token: str) -> Response:
    # No bearer token: the signature in the URL is the credential.
    record = presigned.complete_upload(
        services, token, request.headers.get("Content-Type"), request.content_length, request.stream
    )
    web.note(request, record)
    body = media.to_json(services, record)
    return web.json_response(body, 200, {"ETag": f'"{record.sha256}"', "Location": body["links"]["self"]})


@routes.operation("deleteMedia")
def delete_media(request: Request, services: Services, id: str) -> Response:
    web.note(request, media.delete(services, web.authenticate(request, services), id))
    return Response(status=204)


@routes.operation("eraseUserMedia")
def erase_user_media(request: Request, services: Services, subject: str) -> Response:
    job = accounts.request_erasure(services, web.authenticate(request, services), subject)
    body = erasure.receipt_json(job, services.config.public_base_url)
    return web.json_response(body, 202, {"Location": body["links"]["self"]})


@routes.operation("getErasure")
def get_erasure(request: Request, services: Services, id: str) -> Response:
    job = accounts.erasure_status(services, web.authenticate(request, services), id)
    return web.json_response(erasure.receipt_json(job, services.config.public_base_url))


@routes.operation("patchMedia")
def patch_media(request: Request, services: Services, id: str) -> Response:
    principal = web.authenticate(request, services)

    def patch() -> Any:
        return web.read_json(request, types=("application/merge-patch+json", "application/json"))

    record = recipes.describe(services, principal, id, request.headers.get("If-Match"), patch)
    web.note(request, record)
    detail = media.detail_of(services, record)
    etag = metadata.etag(detail.record.version)
    return web.json_response(media.detail_json(services, detail), 200, {"ETag": etag})


@routes.operation("attachMedia")
def attach_media(request: Request, services: Services, id: str, kind: str, ref: str) -> Response:
    principal = web.authenticate(request, services)
    attachment, created = recipes.attach(
        services, principal, id, kind, ref, lambda: web.read_json(request, optional=True)
    )
    return web.json_response(recipes.attachment_json(attachment), 201 if created else 200)


@routes.operation("detachMedia")
def detach_media(request: Request, services: Services, id: str, kind: str, ref: str) -> Response:
    recipes.detach(services, web.authenticate(request, services), id, kind, ref)
    return Response(status=204)


@routes.operation("detachEverything")
def detach_everything(request: Request, services: Services, kind: str, ref: str) -> Response:
    detached = recipes.detach_everything(services, web.authenticate(request, services), kind, ref)
    return web.json_response({"detached": detached})


functions_framework.errorhandler(HTTPException)(web.render_http_exception)
upload = functions_framework.http(routes.target(default_provider))
