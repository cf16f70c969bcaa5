"""The download function: `GET /media`, `GET /media/{id}`, `GET|HEAD /media/{id}/content`,
`GET /users/{subject}/usage`."""

from __future__ import annotations

import functions_framework
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from common import accounts, changes, health, listing, media, metadata, negotiation, serving, web
from common.services import Services, default_provider

routes = web.Routes("download")
health.register_probes(routes)
web.register_preflights(routes)


@routes.operation("listMedia")
def list_media(request: Request, services: Services) -> Response:
    page = listing.list_media(services, web.authenticate(request, services), request.args)
    return web.json_response(listing.page_json(services, page))


@routes.operation("getMedia")
def get_media(request: Request, services: Services, id: str) -> Response:
    detail = media.get(services, web.authenticate(request, services), id)
    etag = metadata.etag(detail.record.version)
    return web.json_response(media.detail_json(services, detail), 200, {"ETag": etag})


@routes.operation("listChanges")
def list_changes(request: Request, services: Services) -> Response:
    return web.json_response(changes.page(services, web.authenticate(request, services), request.args))


@routes.operation("getUsage")
def get_usage(request: Request, services: Services, subject: str) -> Response:
    return web.json_response(accounts.usage(services, web.authenticate(request, services), subject))


@routes.operation("getMediaContent", "headMediaContent")
def get_content(request: Request, services: Services, id: str) -> Response:
    link = media.signed_link_of(request.args)
    want = negotiation.wanted(request.args)  # ?w= and ?format=: a variant of an image
    if link is not None:  # a signed link, e.g. from <img src>: no bearer token
        expires, sig = link
        content = media.read_signed_content(services, id, expires, sig, request.method, request.headers, want)
        web.note(request, signed_link=True)
    else:
        principal = web.authenticate(request, services)
        content = media.read_content(services, principal, id, request.method, request.headers, want)
    return serving.content_response(content, request)


functions_framework.errorhandler(HTTPException)(web.render_http_exception)
download = functions_framework.http(routes.target(default_provider))
