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

Guessing is limited: each client address may fail authentication
``FAILURE_BURST`` times, then once per ``FAILURE_REFILL_SECONDS``; past that,
every API request from the address gets 429 (the key is not even checked, so
the answers tell a guesser nothing) until its budget refills. Successful calls
cost nothing. At most ``MAX_TRACKED_ADDRESSES`` addresses are tracked, oldest
first out.

Errors use the protocol's own ``Error`` shape, ``{"Error": {"code", "message"}}``:
400 ``PARSE_ERROR`` (bad id or body), 401 ``AUTH_ERROR`` (missing or wrong key),
404, 405, 413 (body over ``--max-message-bytes``), 429 ``CONNECTION_ERROR`` (too
many failed authentications from this address; ``Retry-After`` says when),
503 ``CONNECTION_ERROR`` (draining, or Redis unavailable).

The handler is transport-agnostic (:func:`handle`): the aiohttp server and the
ASGI app both call it.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from ..core.ratelimit import TokenBucket
from ..protocol import Annotation, Comment, Error, ErrorCode, ProtocolError, encode
from ..protocol.ids import canonical_uuid
from .service import Service, Unavailable

log = logging.getLogger("cpc_signaling.server")

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


# Failed authentications one client address may make at once, then one per refill.
FAILURE_BURST = 10
FAILURE_REFILL_SECONDS = 10.0
MAX_TRACKED_ADDRESSES = 10_000


class AuthFailures:
    """Per-address budget of failed API authentications (a token bucket each)."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self.now: Callable[[], float] = time.monotonic

    def blocked_for(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return 0.0
        bucket.take(self.now(), 0.0)  # refill to now
        if bucket.tokens >= 1:
            if bucket.tokens >= bucket.burst:
                del self._buckets[address]  # back to a full budget: forget it
            return 0.0
        return (1 - bucket.tokens) * FAILURE_REFILL_SECONDS

    def failed(self, address: str) -> None:
        bucket = self._buckets.get(address)
        now = self.now()
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
                del self._buckets[next(iter(self._buckets))]  # the oldest tracked address
            bucket = self._buckets[address] = TokenBucket(
                1 / FAILURE_REFILL_SECONDS, FAILURE_BURST, now
            )
        bucket.take(now)
        if bucket.tokens < 1:
            log.warning(
                "HTTP API: %d failed authentications from %s; refusing its API requests for %.0fs",
                FAILURE_BURST,
                address,
                FAILURE_REFILL_SECONDS,
            )


_failures: weakref.WeakKeyDictionary[Service, AuthFailures] = weakref.WeakKeyDictionary()


def auth_failures(service: Service) -> AuthFailures:
    """The failed-authentication budgets of ``service``'s API."""
    failures = _failures.get(service)
    if failures is None:
        failures = _failures[service] = AuthFailures()
    return failures


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
    service: Service,
    method: str,
    path: str,
    authorization: str | None,
    body: bytes,
    remote: str | None = None,
) -> ApiResponse:
    """Answer one API request; ``path`` starts with ``/api/``; ``remote`` is the
    client's address (requests without one share one failure budget)."""
    route, response = await _dispatch(service, method, path, authorization, body, remote or "")
    service.metrics.api_requests.labels(route, str(response.status)).inc()
    return response


async def _dispatch(
    service: Service,
    method: str,
    path: str,
    authorization: str | None,
    body: bytes,
    remote: str,
) -> tuple[str, ApiResponse]:
    if not service.config.api_key:
        return "disabled", _error(404, "NOT_FOUND", "the HTTP API is off: no --api-key")
    failures = auth_failures(service)
    wait = failures.blocked_for(remote)
    if wait:
        return "throttled", _error(
            429,
            ErrorCode.CONNECTION_ERROR,
            "too many failed API authentications from this address; retry later",
            **{"Retry-After": str(max(1, math.ceil(wait)))},
        )
    if not _authorized(service, authorization):
        failures.failed(remote)
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
            service,
            request.method,
            request.path,
            request.headers.get("Authorization"),
            body,
            remote=request.remote,
        )
        return web.Response(status=response.status, body=response.body, headers=response.headers)

    app.router.add_route("*", "/api/{tail:.*}", api)
