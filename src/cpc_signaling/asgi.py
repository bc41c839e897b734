"""The ASGI transport: the same service behind any ASGI server (uvicorn, hypercorn...).

::

    from cpc_signaling.asgi import create_app
    from cpc_signaling.server import Config

    signaling = create_app(Config(api_key="..."))     # an ASGI application
    # uvicorn module:signaling --ws websockets-sansio --ws-max-size 65536
    # or, inside FastAPI/Starlette (docs/embedding.md):
    #   app = FastAPI(lifespan=signaling.lifespan); app.mount("/signaling", signaling)

It serves ``/ws`` (the protocol), ``/healthz``, ``/readyz``, ``/metrics`` and the
HTTP API under ``/api/`` from one :class:`~cpc_signaling.server.Service`: the
same hub, backends, codec, auth and limits as the standalone aiohttp server.
Only the socket handling differs.

Differences an ASGI server imposes, and what this module does about them:

* ``deliver`` must never block, but an ASGI ``send`` is a coroutine. Each
  connection therefore has an :class:`~cpc_signaling.server.outbox.Outbox`
  (bounded, presence conflated for slow readers) and one writer task that
  awaits ``send`` for each queued frame. Past ``--outbox-max-bytes`` of
  frames that may not be dropped, the reader is closed (1013) and leaves.
* The frame size limit is the ASGI server's (uvicorn ``--ws-max-size``, which
  closes with 1009 before the frame reaches the app); the app checks
  ``--max-message-bytes`` itself as well and closes with 1009, so the contract
  holds whatever the server's setting.
* Pings are the ASGI server's (uvicorn ``--ws-ping-interval`` /
  ``--ws-ping-timeout``, 20 s each by default like ours).
* On shutdown uvicorn closes WebSockets itself (1012) before the ASGI
  lifespan shutdown runs; every connection still leaves its documents as it
  closes. :meth:`SignalingApp.shutdown` drains what remains (1001).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from .core import Connection, Send
from .protocol import ErrorCode, ProtocolError
from .server.api import PREFIX as API_PREFIX
from .server.api import handle as handle_api
from .server.auth import bearer_token
from .server.config import Config
from .server.metrics import CONTENT_TYPE
from .server.outbox import Outbox
from .server.service import Peer, Service

__all__ = ["AsgiPeer", "SignalingApp", "create_app"]

log = logging.getLogger("cpc_signaling.asgi")

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send_ = Callable[[ASGIMessage], Awaitable[None]]

_BINARY_REFUSED = "binary frames are not accepted: send JSON text"
# A slow reader closed with 1013 while its socket is full gets this long to read
# its backlog and the close frame before its connection is dropped.
CLOSE_TIMEOUT = 10.0


def create_app(config: Config | None = None, *, service: Service | None = None) -> SignalingApp:
    """An ASGI application serving ``config`` (or an existing ``service``)."""
    return SignalingApp(config, service=service)


class AsgiPeer:
    """One ASGI WebSocket as the service reaches it: an outbox and a writer task.

    ``deliver`` only queues (never blocks, never raises); the writer awaits the
    ASGI ``send`` for each frame, so a slow reader's frames wait in the outbox
    where newer presence replaces older.
    """

    __slots__ = (
        "_close",
        "_drop",
        "_outbox",
        "_send",
        "_sending",
        "_service",
        "_wake",
        "_writer",
        "aborted",
        "closed",
        "conn",
        "handler",
    )

    def __init__(self, send: Send_, service: Service) -> None:
        self._send = send
        self._service = service
        self._outbox = Outbox(service.config.outbox_max_bytes)
        self._wake = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._drop = False  # over its bound: frames not yet written are dropped
        self._sending = False
        self._writer: asyncio.Task[None] | None = None
        self.closed = False  # no more frames will be written
        self.aborted = False
        self.conn: Connection[Peer] | None = None
        self.handler: asyncio.Task[Any] | None = None  # the ASGI call, to abort a stuck reader

    @property
    def closing(self) -> bool:
        return self._close is not None or self.closed

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def deliver(self, send: Send[Peer]) -> None:
        if self.closing:
            return
        frames = send.frames
        # Conflate only for a reader that is behind: the writer is blocked in the ASGI
        # send (the socket buffer is full). Otherwise the frames queued while the writer
        # waits for its turn on the loop are all written, as the aiohttp transport does.
        key = send.key if self._sending and len(frames) == 1 else None
        push = self._outbox.push
        conflated = 0
        for frame in frames:
            conflated += push(frame, key)
        if conflated:
            self._service.metrics.conflated.inc(conflated)
        if self._outbox.overflowed:
            log.info(
                "slow reader over its %d-byte bound: closing",
                self._outbox.max_bytes,
                extra=self._log_context(),
            )
            self._service.metrics.closes.labels("slow_reader").inc()
            self._outbox.take()
            self._drop = True
            self.close(1013, "reader too slow")
            if self._sending:
                # Its socket is full: the close frame goes out when (if) it reads again,
                # behind its backlog. A reader that never does is dropped after a while.
                loop = asyncio.get_running_loop()
                loop.call_later(CLOSE_TIMEOUT, self._abort_if_stuck)
            return
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self._close = (code, reason)
        self._wake.set()
        conn = self.conn
        if conn is not None:
            # Leave at once, as the aiohttp transport does when it closes; deferred so
            # that a close decided in the middle of a fan-out does not re-enter it.
            asyncio.get_running_loop().call_soon(self._service.on_close, conn)

    def _abort_if_stuck(self) -> None:
        writer = self._writer
        if self._sending and writer is not None and not writer.done():
            log.info("slow reader never read its close frame: dropped", extra=self._log_context())
            self._abort()

    def _abort(self) -> None:
        self.closed = self.aborted = True
        if self._writer is not None:
            self._writer.cancel()
        if self.handler is not None:
            self.handler.cancel()

    def _log_context(self) -> dict[str, Any]:
        conn = self.conn
        if conn is None:
            return {}
        return {"connection_id": conn.id, "user_id": conn.user_id}

    async def _write_loop(self) -> None:
        send = self._send
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox and not self._drop:
                    for frame in self._outbox.take():
                        if self.closed:
                            return
                        if self._drop:
                            break
                        self._sending = True
                        await send({"type": "websocket.send", "text": frame.decode()})
                        self._sending = False
                if self.closed:
                    return
                if self._close is not None:
                    code, reason = self._close
                    self.closed = True
                    self._sending = True
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away under us: the reader sees it too
            log.debug("write failed: %s", exc, extra=self._log_context())
            self.closed = True
        finally:
            self._sending = False

    async def finish(self, timeout: float) -> None:
        """The connection is over: stop the writer (let a pending close go out first)."""
        writer = self._writer
        if writer is None or writer.done():
            self.closed = True
            return
        if self._close is None:
            self.closed = True
            self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(writer), timeout)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()
        self.closed = True


class SignalingApp:
    """The ASGI application. ``service`` is the running service: its ``publish``,
    ``presence`` and ``disconnect`` are the server-side Python API."""

    def __init__(self, config: Config | None = None, *, service: Service | None = None) -> None:
        if service is None:
            service = Service(config or Config())
        self.service = service
        self.config = service.config
        self._started = False
        self._start_lock: asyncio.Lock | None = None

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
                log.info(
                    "cpc-signaling ASGI app started (instance %s, %s)",
                    self.service.instance_id,
                    f"redis {self.config.redis_url}" if self.config.redis_url else "in-memory",
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
        headers = {"content-type": "text/plain; charset=utf-8"}
        if path.startswith(API_PREFIX):
            body = await _read_body(receive, limit=max(service.config.max_message_bytes, 1) * 2)
            authorization = _header(scope, b"authorization")
            if body is None:
                status, payload = 413, b"request body too large\n"
            else:
                client = scope.get("client")
                remote = client[0] if client else None
                response = await handle_api(
                    service, method, path, authorization, body, remote=remote
                )
                await _respond(send, response.status, response.body, response.headers)
                return
        elif method not in ("GET", "HEAD"):
            status, payload = 405, b"method not allowed\n"
        elif path == "/healthz":
            status, payload = 200, b"ok\n"
        elif path == "/readyz":
            ready, text = service.readiness()
            status, payload = (200 if ready else 503), text.encode()
        elif path == "/metrics":
            status, payload = 200, service.metrics.render()
            headers = {"content-type": CONTENT_TYPE}
        else:
            status, payload = 404, b"not found\n"
        await _respond(send, status, b"" if method == "HEAD" else payload, headers)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send_) -> None:
        service = self.service
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if service.draining:
            await _refuse(scope, send, 503, b"shutting down\n")
            return
        if not service.guard.origin_allowed(_header(scope, b"origin")):
            await _refuse(scope, send, 403, b"origin not allowed\n")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        token = bearer_token((query.get("token") or [None])[0], _header(scope, b"authorization"))
        await send({"type": "websocket.accept"})

        peer = AsgiPeer(send, service)
        peer.handler = asyncio.current_task()
        peer.start()
        conn = service.admit(peer, token)
        peer.conn = conn
        max_bytes = service.config.max_message_bytes
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    break
                if kind != "websocket.receive" or conn is None or peer.closing:
                    continue  # refused or closing: wait for the close to complete
                text = message.get("text")
                if text is not None:
                    data = text.encode()
                    if len(data) > max_bytes:
                        service.metrics.closes.labels("message_too_big").inc()
                        peer.close(1009, f"message over {max_bytes} bytes")
                        continue
                    pending = service.on_frame(conn, data)
                    if pending is not None:
                        await pending
                else:
                    data = message.get("bytes") or b""
                    service.metrics.bytes_in.inc(len(data))
                    if len(data) > max_bytes:
                        service.metrics.closes.labels("message_too_big").inc()
                        peer.close(1009, f"message over {max_bytes} bytes")
                        continue
                    service.reject(conn, ProtocolError(ErrorCode.PARSE_ERROR, _BINARY_REFUSED))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (peer.aborted and task is not None and task.uncancel() == 0):
                raise
            # Aborted (a reader whose socket is full): end the ASGI call; the server
            # closes the transport.
        finally:
            if conn is not None:
                service.on_close(conn)
            await peer.finish(timeout=1.0)


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
    """Refuse a WebSocket handshake with an HTTP status where the server allows it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
