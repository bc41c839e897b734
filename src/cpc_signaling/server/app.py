"""The aiohttp transport: ``/ws``, the plain HTTP endpoints and the HTTP API.

Only what talks to aiohttp lives here; what is decided about a connection is
the front door's (``frontdoor.py``) and the service's.

Writing. Outgoing frames are framed once per message (one WebSocket text
frame, server side, so unmasked) and the same bytes are written to every
recipient's transport, without awaiting per recipient. While a recipient's
transport holds more than ``WRITE_HIGH_WATER`` bytes (or its outbox is not
empty) its frames wait in its outbox instead, and one task per such peer writes
the outbox as the transport drains (``await writer.drain()``). A join snapshot
larger than the front door's stream threshold is written the same way, a
chunk at a time.

Closing. The front door owns the closing handshake: aiohttp's own
``WebSocketResponse.close`` (which closes the transport without waiting for the
peer's close frame, and whose transport close waits for a buffer that a
stalled reader never drains) is not used. The close frame is written after
what is queued; the handler keeps reading, discarding frames, until the peer's
close frame arrives, and the transport is aborted if that has not happened
within ``CLOSE_TIMEOUT``: reset (``SO_LINGER`` 0, :func:`reset`), so the kernel
frees the socket and its unsent data at once instead of keeping an orphan.

Slow HTTP. aiohttp closes a connection that has not sent a complete request
within its ``keepalive_timeout`` (counted from the connection's start, and
between keep-alive requests): set to ``--handshake-timeout``. Requests other
than ``/ws`` must also be answered within it (body included). The number of
connections that are not WebSockets (requests and handshakes in progress,
idle keep-alive) is capped by :class:`Gate` (``--max-handshakes``), the
protocol factory :func:`listen` serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from aiohttp import WSMsgType, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from prometheus_client import Counter

from ..core import Send
from .api import add_routes as add_api_routes
from .endpoints import Endpoints
from .frontdoor import (
    CLOSE_TIMEOUT,
    STREAM_THRESHOLD,
    Link,
    close_payload,
    handshake,
    split_protocols,
)
from .logs import http_logger
from .service import Peer, Service
from .session import Session

log = logging.getLogger("cpc_signaling.server")

SERVICE: web.AppKey[Service] = web.AppKey("service", Service)

# Past this many bytes waiting in the transport's buffer, frames wait in the outbox
# (where presence is conflated) instead; it is also the transport's high-water mark.
WRITE_HIGH_WATER = 64 * 1024

_HEADER2 = struct.Struct("!BB").pack
_HEADER4 = struct.Struct("!BBH").pack
_HEADER10 = struct.Struct("!BBQ").pack
_PING = b"\x89\x00"  # a server's ping frame, empty payload


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final WebSocket frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return _HEADER2(0x80 | opcode, n) + payload
    if n < 65536:
        return _HEADER4(0x80 | opcode, 126, n) + payload
    return _HEADER10(0x80 | opcode, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame."""
    return _frame(0x1, payload)


def wire_bytes(send: Send[Peer]) -> bytes:
    """``send``'s frames as wire bytes, built once and cached on the send."""
    wire = send.wire
    if wire is None:
        frames = send.frames
        wire = send.wire = (
            text_frame(frames[0]) if len(frames) == 1 else b"".join(map(text_frame, frames))
        )
    return wire


def _streamed(frames: Sequence[bytes]) -> bool:
    return sum(map(len, frames)) > STREAM_THRESHOLD


_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.BaseTransport) -> None:
    """Make the coming close of ``transport``'s socket a reset: ``SO_LINGER`` (on, 0).

    Aborting only drops what the transport holds in user space; the kernel would
    keep the socket as an orphan in FIN-WAIT-1, holding its unsent data (megabytes
    for a stalled reader: its send buffer) until the peer reads it or TCP gives up,
    minutes later. With a zero linger the close sends RST and frees it all at once.
    Used only on a connection the server gives up on: nothing it still holds is
    owed any more.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


class Coalescer:
    """Writes each connection's frames of one event-loop iteration with one ``write``.

    A peer's first frame in an iteration registers it here and starts a list;
    later frames are appended. One ``call_soon`` callback, run at the start of
    the next iteration (after every read of this one was handled; no timer, so
    no added latency at low load), joins each list and writes it: under load a
    busy connection gets one syscall per iteration instead of one per frame.
    """

    __slots__ = ("_dirty", "_loop")

    def __init__(self) -> None:
        self._dirty: list[WsPeer] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, peer: WsPeer) -> None:
        dirty = self._dirty
        if not dirty:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)
        dirty.append(peer)

    def flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for peer in dirty:
            try:
                peer.write_pending()
            except Exception:  # one broken transport must not stall the others
                log.exception("%s: write failed; dropping the connection", peer.name())
                peer.abort()


class _WebSocket(web.WebSocketResponse):
    """aiohttp's WebSocket, with the closing handshake left to the front door.

    aiohttp calls ``close`` itself on a protocol error (a frame over the size
    limit: 1009), on EOF and after the handler returns; its close would shut the
    transport at once (the peer's unread close frame destroyed by a reset) or
    wait on a buffer a stalled reader never drains. :class:`WsPeer` closes.
    """

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        return False


class WsPeer(Link):
    """One aiohttp WebSocket, as the service reaches it.

    Fast path: frames go to ``_pending`` and the :class:`Coalescer` writes them
    once per loop iteration. Slow path (the transport's buffer is over
    ``WRITE_HIGH_WATER``, or something already waits, or a large snapshot): frames
    wait in the outbox, and ``_drain`` writes it as the transport drains.
    """

    __slots__ = (
        "_coalescer",
        "_drainer",
        "_pending",
        "_transport",
        "_writer",
        "gone",
        "last_seen",
        "ping_sent",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        writer: AbstractStreamWriter,
        service: Service,
        coalescer: Coalescer | None = None,
    ) -> None:
        super().__init__(service)
        self.ws = ws
        transport = request.transport
        assert transport is not None
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._transport = transport
        self._writer = writer
        self._coalescer = coalescer or Coalescer()
        self._pending: list[bytes] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self.gone = False  # the socket is closed or aborted: nothing more is written
        self.last_seen = 0.0  # loop time of the last frame received (set by the handler)
        self.ping_sent = 0.0  # loop time of the unanswered ping, 0 when none

    def counted(self, send: Send[Peer]) -> Sequence[bytes]:
        return (wire_bytes(send),)

    @staticmethod
    def wrap(frame: bytes) -> bytes:
        return text_frame(frame)

    # -- writing ------------------------------------------------------------------

    def deliver(self, send: Send[Peer]) -> None:
        frames = send.frames
        stream = len(frames) > 1 and _streamed(frames)  # a large snapshot: written lazily
        pending = self._pending
        if pending is not None:  # already writing this iteration
            if not stream:
                wire = send.wire
                pending.append(wire if wire is not None else wire_bytes(send))
                return
            self.write_pending()  # what came before the snapshot goes before it
        if self.closing is not None or self.gone:
            return
        if stream or self.outbox or self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            if self.queue(send, behind=True):
                self._kick()
            return
        wire = send.wire
        self._pending = [wire if wire is not None else wire_bytes(send)]
        self._coalescer.add(self)

    def write_pending(self) -> None:
        """The coalescer's turn: write this iteration's frames with one call."""
        pending = self._pending
        self._pending = None
        if pending is None or self.gone:
            return
        transport = self._transport
        if transport.is_closing():
            self.gone = True
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _kick(self) -> None:
        if self._drainer is None and not self.gone:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Write the outbox as the transport drains; then the close frame, if closing."""
        transport = self._transport
        try:
            while not self.gone:
                outbox = self.outbox
                if not outbox:
                    break
                if transport.is_closing():
                    self.gone = True
                    return
                size = transport.get_write_buffer_size()
                if size > WRITE_HIGH_WATER:  # the transport paused its protocol: wait
                    await self._writer.drain()  # until under the transport's low-water mark
                    if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                        await asyncio.sleep(0.01)  # it did not pause after all: poll
                    continue
                # At least one frame, then as much as fits under the high-water mark.
                transport.write(b"".join(outbox.pop(WRITE_HIGH_WATER - size)))
                await asyncio.sleep(0)  # a fast reader must not hold the loop
        except (ConnectionError, RuntimeError):
            self.gone = True
            return
        finally:
            self._drainer = None
        if self.closing is not None and not self.gone:
            self._write_close()

    # -- closing --------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        if not self.begin_close(code, reason):
            return
        if self._pending:
            self.write_pending()  # what was handed over before the close goes first
        if self.outbox:
            self._kick()  # the close frame follows the outbox (bounded; 2 s at most)
        elif self._drainer is None:
            self._write_close()

    def _write_close(self) -> None:
        assert self.closing is not None
        transport = self._transport
        if not transport.is_closing():
            transport.write(_frame(0x8, close_payload(*self.closing)))

    def peer_closed(self, code: int | None) -> None:
        """The peer's close frame arrived: the handshake is complete on its side."""
        if self.closing is None:
            # The peer started it: answer with its code (RFC 6455 §5.5.1), then close.
            self.begin_close(code or 1000, "")
            self._pending = None
            if self.outbox:
                self.outbox.clear()
            self._write_close()
        self._transport.close()  # after the buffer drains; the deadline aborts otherwise

    def drop(self) -> None:
        """Drop the connection at once (its handler then ends and runs ``on_close``):
        reset, so the kernel frees what it still held for the peer."""
        self._pending = None
        self.gone = True
        if self._drainer is not None:
            self._drainer.cancel()
        reset(self._transport)
        self._transport.abort()

    def finished(self) -> None:
        """The handler is done: close the socket; abort it if its buffer does not drain.
        Never raises: an aborted TLS transport (asyncio's) fails even to report its
        buffer, and what follows the handler's end must still run."""
        self.gone = True
        if self._drainer is not None:
            self._drainer.cancel()
        if self.aborted or self._finished:
            super().finished()
            return
        transport = self._transport
        try:
            if not transport.is_closing():
                transport.close()
            buffered = transport.get_write_buffer_size()
        except (AttributeError, RuntimeError, OSError):
            buffered = 0  # the transport is already torn down
        if buffered:
            self.arm_deadline()  # a close waits for the buffer: not forever
        else:
            super().finished()

    # -- pings ----------------------------------------------------------------------

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """The :class:`Keepalive` sweep: ping after ``interval`` of silence; a ping
        unanswered for ``timeout`` means the peer is gone: closed (1011), and it
        leaves at once."""
        if self.closing is not None or self.gone:
            return
        if self.ping_sent:
            if now - self.ping_sent >= timeout:
                self.end(1011, f"no pong within {timeout:g}s", "ping_timeout")
        elif now - self.last_seen >= interval:
            self.ping_sent = now
            self._transport.write(_PING)

    def pong(self, payload: bytes) -> None:
        """Answer a ping. A pong counts against the slow-reader bound like any frame:
        written while the transport takes it, else it waits in the outbox, counted;
        a peer that pings without reading is closed 1013 once its pongs pass the
        bound (without this, each ping of a flood left 127 bytes in the transport's
        buffer, without limit)."""
        wire = _frame(0xA, payload)
        if self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            if self.queue_control(wire, "pongs to its pings"):
                self._kick()
            return
        self._transport.write(wire)  # a control frame may go between any two frames

    # -- reading ----------------------------------------------------------------------

    async def serve(self, session: Session | None) -> None:
        """Read frames until the closing handshake is over (or the socket is gone).

        While closing, every frame is read and discarded: a lingering close, so the
        peer's data never sits unread when the socket closes (a reset would destroy
        the close frame the peer has not read yet).
        """
        service = self.service
        ws = self.ws
        loop = asyncio.get_running_loop()
        while True:
            msg = await ws.receive()
            kind = msg.type
            self.last_seen = loop.time()
            if kind is WSMsgType.TEXT:
                if session is not None and self.closing is None:
                    pending = service.on_frame(session, msg.data)
                    if pending is not None:
                        await pending
            elif kind is WSMsgType.BINARY:
                if session is not None and self.closing is None:
                    service.on_binary(session, len(msg.data))
            elif kind is WSMsgType.PONG:
                self.ping_sent = 0.0
            elif kind is WSMsgType.PING:
                if self.closing is None and not self.gone:
                    self.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                self.peer_closed(msg.data)
                return
            elif kind is WSMsgType.ERROR:
                if self._transport.is_closing():
                    return
                # A protocol error aiohttp's reader found: its parser is dead, what the
                # peer still sends is read and dropped underneath. Close, and wait for
                # the deadline: the peer's close frame cannot be parsed any more.
                code = int(getattr(msg.data, "code", 1002))
                if code == 1009 and session is not None:
                    service.on_too_big(session)
                else:
                    self.end(code, "protocol error", "protocol_error")
                await asyncio.sleep(CLOSE_TIMEOUT)  # the close deadline aborts it meanwhile
                return
            else:  # CLOSED, CLOSING: the socket is gone
                return


class Keepalive:
    """Pings for every connection from one timer, instead of a timer each.

    aiohttp's per-connection heartbeat costs a timer per connection and a
    callback per chunk received; this sweep wakes every quarter of the shorter
    of ``interval`` and ``timeout`` and looks at each connection's ``last_seen``:
    the same contract (ping after ``interval`` of silence, close when the pong
    does not come within ``timeout``), at a fixed cost per sweep.
    """

    __slots__ = ("_handle", "interval", "peers", "timeout")

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.peers: dict[WsPeer, None] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, peer: WsPeer) -> None:
        self.peers[peer] = None
        if self._handle is None:
            self._schedule(asyncio.get_running_loop())

    def discard(self, peer: WsPeer) -> None:
        self.peers.pop(peer, None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = loop.call_later(min(self.interval, self.timeout) / 4, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        if not self.peers:
            return
        now = loop.time()
        interval, timeout = self.interval, self.timeout
        for peer in list(self.peers):
            peer.keepalive(now, interval, timeout)
        self._schedule(loop)


# -- the handshake cap ----------------------------------------------------------------


class _Counted:
    """aiohttp's protocol for one connection, counted while it is open.

    The hot callbacks are aiohttp's own bound methods (instance attributes), so
    reading and writing cost nothing extra; only the connection's start and end
    pass through here.
    """

    __slots__ = (
        "_gate",
        "_inner",
        "data_received",
        "eof_received",
        "pause_writing",
        "resume_writing",
    )

    def __init__(self, gate: Gate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self.data_received = inner.data_received
        self.eof_received = inner.eof_received
        self.pause_writing = inner.pause_writing
        self.resume_writing = inner.resume_writing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gate.open += 1
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.open -= 1
        self._inner.connection_lost(exc)


class _Busy(asyncio.Protocol):
    """A connection over ``--max-handshakes``: its request is answered 503, and it is
    closed (dropped after a second if it sends nothing)."""

    __slots__ = ("_timer", "_transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(1.0, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        self._timer.cancel()
        body = b"too many connections in progress; retry later\n"
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        self._transport.write(head.encode() + body)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


class Gate:
    """The protocol factory :func:`listen` serves: aiohttp's, behind ``--max-handshakes``.

    Counts the connections open and those that became WebSockets; the difference
    (HTTP requests and WebSocket handshakes in progress, idle keep-alive
    connections) is capped: a new connection past the cap gets 503 and is closed
    before any of it is read.
    """

    __slots__ = ("_factory", "_refused", "cap", "open", "upgraded")

    def __init__(self, cap: int, refused: Counter) -> None:
        self.cap = cap
        self._refused = refused
        self._factory: Callable[[], Any] | None = None
        self.open = 0  # TCP connections open
        self.upgraded = 0  # of them, WebSockets (their handler is running)

    @property
    def pending(self) -> int:
        return max(0, self.open - self.upgraded)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.cap and self.pending >= self.cap:
            self._refused.inc()
            return _Busy()
        assert self._factory is not None, "listen() binds the gate to a runner"
        return cast(asyncio.BaseProtocol, _Counted(self, self._factory()))

    def live(self) -> dict[str, tuple[str, float]]:
        return {
            "handshakes": (
                "connections that are not WebSockets: HTTP requests and WebSocket "
                "handshakes in progress, idle keep-alive (capped by --max-handshakes)",
                self.pending,
            )
        }


COALESCER: web.AppKey[Coalescer] = web.AppKey("coalescer", Coalescer)
KEEPALIVE: web.AppKey[Keepalive | None] = web.AppKey("keepalive")
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)


async def listen(
    runner: web.AppRunner, host: str, port: int, *, ssl_context: Any = None
) -> asyncio.Server:
    """Serve ``runner`` (set up) on ``host:port`` behind its app's :class:`Gate`.

    Close the returned server to stop accepting, then clean the runner up.
    """
    gate = runner.app[GATE]
    server = runner.server
    assert server is not None, "call runner.setup() first"
    gate._factory = server
    loop = asyncio.get_running_loop()
    timeout = runner.app[SERVICE].config.handshake_timeout
    return await loop.create_server(
        gate,
        host,
        port,
        ssl=ssl_context,
        # A TLS handshake comes before any request: the same bound (asyncio's default: 60 s).
        ssl_handshake_timeout=(timeout or None) if ssl_context is not None else None,
        reuse_address=True,
    )


# -- handlers -----------------------------------------------------------------------------


async def _websocket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    decision = handshake(
        service,
        origin=request.headers.get(hdrs.ORIGIN),
        authorization=request.headers.get(hdrs.AUTHORIZATION),
        subprotocols=split_protocols(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())),
        query_token=request.query.get("token"),
        remote=request.remote,
    )
    if not decision.accepted:
        return web.Response(status=decision.status, text=decision.body)
    config = service.config
    ws = _WebSocket(
        max_msg_size=config.max_message_bytes,
        autoping=False,  # pings and pongs are ours: see Keepalive
        autoclose=False,  # and so is the closing handshake: see WsPeer
        compress=False,
        decode_text=False,
        protocols=(decision.subprotocol,) if decision.subprotocol else (),
    )
    writer = await ws.prepare(request)
    gate = request.app[GATE]
    gate.upgraded += 1
    peer = WsPeer(ws, request, writer, service, request.app[COALESCER])
    peer.last_seen = asyncio.get_running_loop().time()
    keepalive = request.app[KEEPALIVE]
    if keepalive is not None:
        keepalive.add(peer)
    session = peer.session = service.admit(peer, decision.token)
    try:
        await peer.serve(session)
    finally:
        gate.upgraded -= 1
        if keepalive is not None:
            keepalive.discard(peer)
        if session is not None:
            service.on_close(session)  # first: its leaves never wait on the socket's end
        peer.finished()
    return ws


def _endpoint(endpoints: Endpoints) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        response = endpoints.respond(
            request.method, request.path, request.headers.get(hdrs.IF_NONE_MATCH)
        )
        return web.Response(status=response.status, body=response.body, headers=response.headers)

    return handler


def _deadline(timeout: float) -> Any:
    @web.middleware
    async def deadline(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/ws" or timeout <= 0:
            return await handler(request)
        try:
            async with asyncio.timeout(timeout):
                return await handler(request)
        except TimeoutError:
            return web.Response(status=408, text="request not complete in time\n")

    return deadline


def create_app(service: Service) -> web.Application:
    """The aiohttp application serving ``service``; serve it with :func:`listen`."""
    config = service.config
    app = web.Application(
        middlewares=[_deadline(config.handshake_timeout)],
        handler_args={
            # Counted from the connection's start: a request whose headers never
            # complete is closed after this long (and an idle keep-alive connection).
            "keepalive_timeout": config.handshake_timeout,
            "logger": http_logger(),
        },
    )
    app[SERVICE] = service
    app[COALESCER] = Coalescer()
    app[KEEPALIVE] = (
        Keepalive(config.ping_interval, config.ping_timeout) if config.ping_interval else None
    )
    gate = app[GATE] = Gate(config.max_handshakes, service.guard.refused.labels("max_handshakes"))
    service.metrics.watch(gate.live)
    app.router.add_get("/ws", _websocket)
    endpoints = Endpoints(service)
    handler = _endpoint(endpoints)
    for path in endpoints.paths:
        app.router.add_route("*", path, handler)
    add_api_routes(app, service)  # the HTTP API: 404 unless --api-key is set
    return app
