"""The ASGI transport: the same service behind any ASGI server (uvicorn, hypercorn...).

::

    from cpc_signaling.asgi import create_app
    from cpc_signaling.server import Config

    signaling = create_app(Config(api_key="..."))     # an ASGI application
    # uvicorn module:signaling --ws websockets-sansio --ws-max-size 262144
    # or, inside FastAPI/Starlette (docs/embedding.md):
    #   app = FastAPI(lifespan=signaling.lifespan); app.mount("/signaling", signaling)

It serves ``/ws`` (the protocol), ``/healthz``, ``/readyz``, ``/metrics``, the
browser files (``/client.js``, ``/client.d.ts``, the demo unless
``demo=False``) and the HTTP API under ``/api/`` from one
:class:`~cpc_signaling.server.Service`: the same hub, backends, codec, auth,
limits and front door (``frontdoor.py``, ``endpoints.py``) as the standalone
aiohttp server. Only the socket handling differs.

What an ASGI server imposes, and what this module does about it:

* ``deliver`` must never block, but an ASGI ``send`` is a coroutine. Each
  connection has one writer task that awaits ``send`` for each frame of its
  outbox: a snapshot is written a frame at a time as the socket takes it,
  presence is conflated while the writer waits, past ``--outbox-max-bytes`` the
  reader is closed (1013).
* The app cannot see the ASGI server's ping timeout when the socket is full
  (the server never reports the disconnect while its buffer does not drain).
  So a writer whose ``send`` has not returned for ``--ping-interval`` +
  ``--ping-timeout`` treats the reader as gone: closed, and it leaves.
* The app decides and announces the close at once, then sends
  ``websocket.close``; the lingering close and the closing of the socket are
  the ASGI server's (uvicorn reads and discards until the peer's close frame,
  up to 10 s). The app cannot abort a socket: past ``CLOSE_TIMEOUT`` it ends its
  ASGI call and the server closes the transport (docs/embedding.md).
* The frame size limit is the ASGI server's (uvicorn ``--ws-max-size``); the
  app checks ``--max-message-bytes`` itself as well and closes with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ..core import Send
from .api import PREFIX as API_PREFIX
from .api import handle as handle_api
from .config import Config
from .endpoints import Endpoints
from .frontdoor import Link, close_reason, handshake
from .hooks import Hooks
from .logs import install_filters, setup_logging
from .service import Peer, Service
from .session import Session

__all__ = ["AsgiPeer", "SignalingApp", "create_app", "from_environment"]

log = logging.getLogger("cpc_signaling.asgi")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send_ = Callable[[ASGIMessage], Awaitable[None]]

# Frames taken from the outbox at once by the writer (out of the bound while sent).
_BATCH = 64 * 1024


def create_app(
    config: Config | None = None, *, service: Service | None = None, hooks: Hooks | None = None
) -> SignalingApp:
    """An ASGI application serving ``config`` (or an existing ``service``); ``hooks``:
    the application's join and event hooks (docs/hooks.md)."""
    return SignalingApp(config, service=service, hooks=hooks)


def from_environment() -> SignalingApp:
    """An ASGI application configured by ``CPC_*`` environment variables, for
    ``uvicorn --factory cpc_signaling.asgi:from_environment``.

    Run on its own like this, the app also sets up logging as ``cpc-signaling
    serve`` does (``CPC_LOG_LEVEL``, ``CPC_LOG_FORMAT``) unless the process already
    has a root handler: otherwise its INFO lines would go nowhere.
    """
    config = Config.from_args([], os.environ)
    if not logging.getLogger().handlers:
        setup_logging(config.log_level, config.log_format)
    return SignalingApp(config)


class AsgiPeer(Link):
    """One ASGI WebSocket as the service reaches it: an outbox and a writer task.

    ``deliver`` only queues (never blocks, never raises); the writer awaits the
    ASGI ``send`` for each frame, so a slow reader's frames wait in the outbox
    where newer presence replaces older.
    """

    __slots__ = ("_send", "_sending", "_wake", "_writer", "done", "handler", "since")

    def __init__(self, send: Send_, service: Service) -> None:
        super().__init__(service)
        self._send = send
        self._wake = asyncio.Event()
        self._sending = False
        self._writer: asyncio.Task[None] | None = None
        self.since = 0.0  # loop time the pending send started
        self.done = False  # no more frames will be written
        self.handler: asyncio.Task[Any] | None = None  # the ASGI call, to end a stuck one

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def deliver(self, send: Send[Peer]) -> None:
        if self.closing is not None or self.done:
            return
        outbox = self.outbox
        # Conflate only for a reader that is behind: the writer is blocked in the ASGI
        # send (the socket buffer is full), or a snapshot is still being written.
        behind = self._sending or (outbox is not None and outbox.streams > 0)
        if self.queue(send, behind=behind):
            self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self.begin_close(code, reason):
            self._wake.set()  # the writer sends what is queued, then the close frame

    def stalled(self, now: float, limit: float) -> None:
        """The :class:`StallWatch` sweep: a send pending for ``limit`` seconds means a
        reader that reads nothing (or is gone): closed, and it leaves."""
        if self._sending and self.closing is None and now - self.since >= limit:
            self.end(1013, f"nothing read for {limit:g}s", "stalled_reader")

    def drop(self) -> None:
        """End the ASGI call (the app cannot abort a socket: the ASGI server closes it).
        Once (``Link.abort``): a second cancel of the call would escape it."""
        self.done = True
        if self._writer is not None:
            self._writer.cancel()
        if self.handler is not None:
            self.handler.cancel()

    async def _write_loop(self) -> None:
        send = self._send
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                outbox = self.outbox
                while outbox and not self.done:
                    for frame in outbox.pop(_BATCH):
                        if self.done:
                            return
                        self._sending = True
                        self.since = loop.time()
                        await send({"type": "websocket.send", "text": frame.decode()})
                        self._sending = False
                if self.done:
                    return
                if self.closing is not None:
                    code, reason = self.closing
                    self._sending = True
                    self.since = loop.time()
                    await send(
                        {"type": "websocket.close", "code": code, "reason": close_reason(reason)}
                    )
                    self.done = True
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away under us: the reader sees it too
            log.debug("%s: write failed: %s", self.name(), exc, extra=self.context())
            self.done = True
        finally:
            self._sending = False

    async def finish(self) -> None:
        """The connection is over: let a close frame being sent go out, then stop."""
        writer = self._writer
        if writer is not None and not writer.done():
            if self.closing is None:
                self.done = True
                writer.cancel()
            else:
                # Bounded by the close deadline, which cancels the writer.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(writer)
        self.done = True
        self.finished()


class StallWatch:
    """One timer for every ASGI connection: writers stuck in ``send`` (see the module)."""

    __slots__ = ("_handle", "limit", "peers")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.peers: dict[AsgiPeer, None] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, peer: AsgiPeer) -> None:
        if self.limit <= 0:
            return
        self.peers[peer] = None
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self.limit / 4, self._sweep, loop)

    def discard(self, peer: AsgiPeer) -> None:
        self.peers.pop(peer, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        if not self.peers:
            return
        now = loop.time()
        for peer in list(self.peers):
            peer.stalled(now, self.limit)
        self._handle = loop.call_later(self.limit / 4, self._sweep, loop)


class SignalingApp:
    """The ASGI application. ``service`` is the running service: its ``publish``,
    ``presence`` and ``disconnect`` are the server-side Python API."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        service: Service | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        if service is None:
            service = Service(config or Config(), hooks=hooks)
        self.service = service
        self.config = service.config
        self.endpoints = Endpoints(service)
        config = service.config
        self._stalls = StallWatch(config.ping_interval + config.ping_timeout)
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        install_filters()  # no token in the ASGI server's own log lines either

    # -- lifecycle -------------------------------------------------------------

    async def startup(self) -> None:
        """Start the service (connect the backend). Idempotent."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self._started:
                await self.service.start()
                self._started = True
                config = self.config
                log.info(
                    "cpc-signaling ASGI app started (instance %s, %s); HTTP API %s; demo %s",
                    self.service.instance_id,
                    f"redis {config.redis_url}" if config.redis_url else "in-memory",
                    "on under /api/" if config.api_key else "off (no api_key)",
                    "at / (of where the app is mounted)" if config.demo else "off",
                )

    async def shutdown(self) -> None:
        """Drain (every local connection leaves, closed 1001) and stop the service."""
        if not self._started:
            return
        self._started = False
        await self.service.drain()
        await self.service.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """For a host framework: ``FastAPI(lifespan=signaling.lifespan)``."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    # -- ASGI -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send_) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        # Mounted under a prefix: Starlette keeps the full path and sets root_path.
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        # Started lazily when the host does not run our lifespan (then nothing drains).
        await self.startup()
        if kind == "websocket":
            if path == "/ws":
                await self._websocket(scope, receive, send)
            else:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})
            return
        if kind == "http":
            await self._http(scope, path, receive, send)

    async def _lifespan(self, receive: Receive, send: Send_) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, path: str, receive: Receive, send: Send_) -> None:
        service = self.service
        method: str = scope["method"]
        if path.startswith(API_PREFIX):
            limit = max(service.config.max_message_bytes, 1) * 2
            try:
                async with asyncio.timeout(service.config.handshake_timeout or None):
                    body = await _read_body(receive, limit)
            except TimeoutError:
                await _respond(send, 408, b"request not complete in time\n", _TEXT)
                return
            if body is None:
                await _respond(send, 413, b"request body too large\n", _TEXT)
                return
            authorization = _header(scope, b"authorization")
            client = scope.get("client")
            response = await handle_api(
                service, method, path, authorization, body, remote=client[0] if client else None
            )
            await _respond(send, response.status, response.body, response.headers)
            return
        answer = self.endpoints.respond(method, path, _header(scope, b"if-none-match"))
        await _respond(send, answer.status, answer.body, answer.headers)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send_) -> None:
        service = self.service
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        client = scope.get("client")
        decision = handshake(
            service,
            origin=_header(scope, b"origin"),
            authorization=_header(scope, b"authorization"),
            subprotocols=scope.get("subprotocols") or (),
            query_token=(query.get("token") or [None])[0],
            remote=str(client[0]) if client else None,
        )
        if not decision.accepted:
            await _refuse(scope, send, decision.status, decision.body.encode())
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if decision.subprotocol is not None:
            accept["subprotocol"] = decision.subprotocol
        await send(accept)

        peer = AsgiPeer(send, service)
        peer.handler = asyncio.current_task()
        peer.start()
        session = peer.session = service.admit(peer, decision.token)
        self._stalls.add(peer)
        try:
            await self._read(peer, session, receive)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (peer.aborted and task is not None and task.uncancel() == 0):
                raise
            # Aborted: end the ASGI call; the server closes the transport.
        finally:
            self._stalls.discard(peer)
            if session is not None:
                service.on_close(session)
            await peer.finish()

    async def _read(self, peer: AsgiPeer, session: Session | None, receive: Receive) -> None:
        service = self.service
        max_bytes = service.config.max_message_bytes
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive" or session is None or peer.closing is not None:
                continue  # refused or closing: what still arrives is discarded
            text = message.get("text")
            data = text.encode() if text is not None else (message.get("bytes") or b"")
            if len(data) > max_bytes:
                service.on_too_big(session)
            elif text is not None:
                pending = service.on_frame(session, data)
                if pending is not None:
                    await pending
            else:
                service.on_binary(session, len(data))


_TEXT = {"content-type": "text/plain; charset=utf-8"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send_, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _refuse(scope: Scope, send: Send_, status: int, body: bytes) -> None:
    """Refuse a WebSocket handshake before accepting it.

    A close before the accept is answered 403 by the ASGI server (uvicorn logs it
    at INFO). Only 503 (draining) goes through the HTTP response extension, which
    uvicorn follows with an ERROR line ("returned without completing handshake"):
    a refused origin or subprotocol, which any page can cause, must not log errors.
    """
    if status == 503 and "websocket.http.response" in scope.get("extensions", {}):
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
