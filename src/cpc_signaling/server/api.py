"""The HTTP API: what a trusted backend may do to documents, over plain HTTP.

::

    POST /api/documents/{id}/messages   body: {"Comment": {...}} or {"Annotation": {...}}
    GET  /api/documents/{id}/presence
    POST /api/users/{id}/disconnect

Each call wraps a :class:`~.service.Service` method (``publish``, ``presence``,
``disconnect``), so the Python API and the HTTP API behave the same, and with
Redis both act across all instances.

Access: every request must carry ``Authorization: Bearer <--api-key>``. Without
a configured key the API does not exist (every ``/api/`` path answers 404): an
unprotected endpoint that can post as any user and kick anyone is never on by
accident. The key is compared in constant time and never logged.

Errors use the protocol's own ``Error`` shape, ``{"Error": {"code", "message"}}``:
400 ``PARSE_ERROR`` (bad id or body), 401 ``AUTH_ERROR`` (missing or wrong key),
404, 405, 413 (body over ``--max-message-bytes``), 503 ``CONNECTION_ERROR``
(draining, or Redis unavailable).

The handler is transport-agnostic (:func:`handle`): the aiohttp server and the
ASGI app both call it.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from ..protocol import Annotation, Comment, Error, ErrorCode, ProtocolError, encode
from ..protocol.ids import canonical_uuid
from .service import Service, Unavailable

PREFIX = "/api/"
_ROUTES = (
    ("messages", "POST", re.compile(r"^/api/documents/(?P<id>[^/]+)/messages$")),
    ("presence", "GET", re.compile(r"^/api/documents/(?P<id>[^/]+)/presence$")),
    ("disconnect", "POST", re.compile(r"^/api/users/(?P<id>[^/]+)/disconnect$")),
)
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": JSON})


def _error(status: int, code: str, message: str, **headers: str) -> ApiResponse:
    return ApiResponse(
        status, encode(Error(code=code, message=message)), {"Content-Type": JSON, **headers}
    )


def _ok(status: int, value: object) -> ApiResponse:
    return ApiResponse(status, msgspec.json.encode(value))


def _authorized(service: Service, authorization: str | None) -> bool:
    key = service.config.api_key
    assert key
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), key.encode())


async def handle(
    service: Service, method: str, path: str, authorization: str | None, body: bytes
) -> ApiResponse:
    """Answer one API request; ``path`` starts with ``/api/``."""
    route, response = await _dispatch(service, method, path, authorization, body)
    service.metrics.api_requests.labels(route, str(response.status)).inc()
    return response


async def _dispatch(
    service: Service, method: str, path: str, authorization: str | None, body: bytes
) -> tuple[str, ApiResponse]:
    if not service.config.api_key:
        return "disabled", _error(404, "NOT_FOUND", "the HTTP API is off: no --api-key")
    if not _authorized(service, authorization):
        return "unauthorized", _error(
            401,
            ErrorCode.AUTH_ERROR,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            **{"WWW-Authenticate": 'Bearer realm="cpc-signaling"'},
        )
    for name, allowed, pattern in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if method != allowed:
            return name, _error(405, "METHOD_NOT_ALLOWED", f"use {allowed}", Allow=allowed)
        try:
            ident = canonical_uuid(match["id"])
        except ValueError as exc:
            return name, _error(400, ErrorCode.PARSE_ERROR, str(exc))
        try:
            if name == "messages":
                return name, _publish(service, ident, body)
            if name == "presence":
                users = await service.presence(ident)
                return name, _ok(
                    200,
                    {
                        "document_id": ident,
                        "users": [
                            {
                                "user_id": user.user_id,
                                "connections": user.connections,
                                "presence": [msgspec.Raw(encode(m)) for m in user.presence],
                            }
                            for user in users
                        ],
                    },
                )
            closed = await service.disconnect(ident)
            return name, _ok(
                200,
                {
                    "user_id": ident,
                    "closed_here": closed,
                    "all_instances": service.following.shared,
                },
            )
        except Unavailable as exc:
            return name, _error(503, ErrorCode.CONNECTION_ERROR, f"unavailable: {exc}")
    return "unknown", _error(404, "NOT_FOUND", f"no API route {path[:100]}")


def _publish(service: Service, doc_id: str, body: bytes) -> ApiResponse:
    if len(body) > service.config.max_message_bytes:
        return _error(
            413,
            ErrorCode.PARSE_ERROR,
            f"body over --max-message-bytes ({service.config.max_message_bytes})",
        )
    try:
        message = service.decoder.decode_document_message(body)
        if not isinstance(message, Annotation | Comment):
            raise ProtocolError(
                ErrorCode.PARSE_ERROR,
                f"only Annotation or Comment can be published, not {type(message).__name__}",
            )
        if message.document_id != doc_id:
            raise ProtocolError(
                ErrorCode.PARSE_ERROR,
                f"{type(message).__name__}.document_id {message.document_id} "
                f"is not the document in the path ({doc_id})",
            )
        service.publish(message)
    except ProtocolError as exc:
        return _error(400, exc.code, exc.message)
    return _ok(202, {"published": type(message).__name__, "document_id": doc_id})


# -- aiohttp -----------------------------------------------------------------


def add_routes(app: web.Application, service: Service) -> None:
    """Serve the API under ``/api/`` on the aiohttp application."""

    async def api(request: web.Request) -> web.Response:
        body = await request.read() if request.can_read_body else b""
        response = await handle(
            service, request.method, request.path, request.headers.get("Authorization"), body
        )
        return web.Response(status=response.status, body=response.body, headers=response.headers)

    app.router.add_route("*", "/api/{tail:.*}", api)
