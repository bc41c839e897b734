"""The aiohttp transport: ``/ws`` plus ``/healthz``, ``/readyz`` and ``/metrics``.

Outgoing frames are framed once per message (one WebSocket text frame, server
side, so unmasked) and the same bytes are written to every recipient's
transport, without awaiting per recipient. A recipient whose socket buffer is
full gets an :class:`Outbox` instead, flushed when the buffer drains.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from aiohttp import WSMsgType, hdrs, web

from ..core import Connection, Send
from ..protocol import ErrorCode, ProtocolError
from .api import add_routes as add_api_routes
from .auth import bearer_token
from .demo import add_routes as add_browser_routes
from .metrics import CONTENT_TYPE
from .outbox import Outbox
from .service import Peer, Service

log = logging.getLogger("cpc_signaling.server")

SERVICE: web.AppKey[Service] = web.AppKey("service", Service)

# Past this many bytes waiting in the kernel-side transport buffer, frames wait
# in the outbox (where presence is conflated) instead.
WRITE_HIGH_WATER = 64 * 1024
FLUSH_INTERVAL = 0.01

_HEADER2 = struct.Struct("!BB").pack
_HEADER4 = struct.Struct("!BBH").pack
_HEADER10 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return _HEADER2(0x81, n) + payload
    if n < 65536:
        return _HEADER4(0x81, 126, n) + payload
    return _HEADER10(0x81, 127, n) + payload


def wire_bytes(send: Send[Peer]) -> bytes:
    """``send``'s frames as wire bytes, built once and cached on the send."""
    wire = send.wire
    if wire is None:
        frames = send.frames
        wire = send.wire = (
            text_frame(frames[0]) if len(frames) == 1 else b"".join(map(text_frame, frames))
        )
    return wire


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
                log.exception("write failed; closing the connection")
                peer.abort()


class WsPeer:
    """One aiohttp WebSocket, as the service reaches it.

    Fast path: frames go to ``_pending`` and the :class:`Coalescer` writes them
    once per loop iteration. Slow path (the kernel-side buffer holds more than
    ``WRITE_HIGH_WATER``, decided at a peer's first frame of an iteration):
    frames wait in the :class:`Outbox`, where presence is conflated, flushed
    every ``FLUSH_INTERVAL`` while the buffer allows.
    """

    __slots__ = (
        "_coalescer",
        "_flush_handle",
        "_outbox",
        "_pending",
        "_service",
        "_transport",
        "closed",
        "last_seen",
        "ping_sent",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        service: Service,
        coalescer: Coalescer | None = None,
    ) -> None:
        self.ws = ws
        transport = request.transport
        assert transport is not None
        self._transport = transport
        self._service = service
        self._coalescer = coalescer or Coalescer()
        self._outbox: Outbox | None = None  # created on first need: most peers never lag
        self._pending: list[bytes] | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self.closed = False
        self.last_seen = 0.0  # loop time of the last frame received (set by the handler)
        self.ping_sent = 0.0  # loop time of the unanswered ping, 0 when none

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """The :class:`Keepalive` sweep: ping after ``interval`` of silence; a ping
        unanswered for ``timeout`` means the peer is gone: drop the connection (the
        handler then runs ``on_close``, which leaves every document)."""
        if self.closed:
            return
        if self.ping_sent:
            if now - self.ping_sent >= timeout:
                log.info("connection closed: no pong within %ss", timeout)
                self.closed = True
                self._transport.close()
        elif now - self.last_seen >= interval:
            self.ping_sent = now
            self._transport.write(_PING)

    def deliver(self, send: Send[Peer]) -> None:
        wire = send.wire
        if wire is None:
            wire = wire_bytes(send)
        pending = self._pending
        if pending is not None:  # already writing this iteration
            pending.append(wire)
            return
        if self.closed:
            return
        if self._outbox or self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            self._enqueue(wire, send.key if len(send.frames) == 1 else None)
            return
        self._pending = [wire]
        self._coalescer.add(self)

    def write_pending(self) -> None:
        """The coalescer's turn: write this iteration's frames with one call."""
        pending = self._pending
        self._pending = None
        if pending is None or self.closed:
            return
        transport = self._transport
        if self.ws.closed or transport.is_closing():
            self.closed = True
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def abort(self) -> None:
        """Drop the connection at once (its handler then runs ``on_close``)."""
        self._pending = None
        self.closed = True
        self._transport.close()

    def _enqueue(self, wire: bytes, key: tuple[str, str, str] | None) -> None:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox(self._service.config.outbox_max_bytes)
        if outbox.push(wire, key):
            self._service.metrics.conflated.inc()
        if outbox.overflowed:
            log.info("slow reader over its %d-byte bound: closing", outbox.max_bytes)
            self._service.metrics.closes.labels("slow_reader").inc()
            outbox.take()
            self.close(1013, "reader too slow")
            return
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        outbox = self._outbox
        if outbox is None:
            return
        if self.closed or self.ws.closed or self._transport.is_closing():
            outbox.take()
            return
        if self._transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
            self._transport.write(b"".join(outbox.take()))
        if outbox:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(FLUSH_INTERVAL, self._flush)

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        if self._pending:
            self.write_pending()  # what was handed over before the close goes first
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        # drain=False: waiting for a stalled reader's buffer to drain would never end, and
        # the handler (hence on_close, the leaves) would wait with it. The close frame
        # still follows everything written before it.
        self._service.spawn(self.ws.close(code=code, message=reason.encode(), drain=False))


_PING = b"\x89\x00"  # a server's ping frame, empty payload


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


COALESCER: web.AppKey[Coalescer] = web.AppKey("coalescer", Coalescer)
KEEPALIVE: web.AppKey[Keepalive | None] = web.AppKey("keepalive")


async def _websocket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    if service.draining:
        raise web.HTTPServiceUnavailable(text="shutting down")
    if not service.guard.origin_allowed(request.headers.get(hdrs.ORIGIN)):
        # A browser page from another site: refused before the upgrade (docs/security.md).
        raise web.HTTPForbidden(text="origin not allowed\n")
    token = bearer_token(request.query.get("token"), request.headers.get(hdrs.AUTHORIZATION))
    config = service.config
    ws = web.WebSocketResponse(
        max_msg_size=config.max_message_bytes,
        autoping=False,  # pings and pongs are ours: see Keepalive
        compress=False,
        decode_text=False,
    )
    await ws.prepare(request)
    peer = WsPeer(ws, request, service, request.app[COALESCER])
    loop = asyncio.get_running_loop()
    keepalive = request.app[KEEPALIVE]
    peer.last_seen = loop.time()
    if keepalive is not None:
        keepalive.add(peer)
    admitted = service.admit(peer, token)
    if admitted is None:  # refused: the Error is sent and the close started
        try:
            async for _ in ws:
                pass
        finally:
            if keepalive is not None:
                keepalive.discard(peer)
        return ws
    conn: Connection[Peer] = admitted
    try:
        async for msg in ws:
            peer.last_seen = loop.time()
            if msg.type is WSMsgType.TEXT:
                pending = service.on_frame(conn, msg.data)
                if pending is not None:
                    await pending
            elif msg.type is WSMsgType.PONG:
                peer.ping_sent = 0.0
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.BINARY:
                service.metrics.bytes_in.inc(len(msg.data))
                service.reject(
                    conn,
                    ProtocolError(
                        ErrorCode.PARSE_ERROR, "binary frames are not accepted: send JSON text"
                    ),
                )
    finally:
        peer.closed = True
        if keepalive is not None:
            keepalive.discard(peer)
        service.on_close(conn)
    return ws


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    ready, text = request.app[SERVICE].readiness()
    return web.Response(status=200 if ready else 503, text=text)


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.flush_tally()
    body = service.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(service: Service) -> web.Application:
    """The aiohttp application serving ``service``."""
    app = web.Application()
    app[SERVICE] = service
    app[COALESCER] = Coalescer()
    config = service.config
    app[KEEPALIVE] = (
        Keepalive(config.ping_interval, config.ping_timeout) if config.ping_interval else None
    )
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    add_api_routes(app, service)  # the HTTP API: 404 unless --api-key is set
    add_browser_routes(app, demo=service.config.demo)  # /client.js; / unless --no-demo
    return app
