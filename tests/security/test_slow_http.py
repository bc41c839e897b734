"""Slow HTTP: a request whose headers never complete, and many of them at once.

The standalone server closes a connection that has not sent a complete request
within ``--handshake-timeout`` (default 10 s), and holds at most
``--max-handshakes`` connections that are not WebSockets; past it a new
connection gets 503 before anything of it is read. Under ASGI both are the
ASGI server's: uvicorn has no header timeout, and ``--limit-concurrency`` is
what caps connections (docs/embedding.md); the last test holds uvicorn to what
that page says.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp

from cpc_signaling.asgi import create_app
from cpc_signaling.server import Config
from cpc_signaling.server.app import GATE

from ..helpers import TIMEOUT, UNIT, new_id, running_server, serving_uvicorn, spawn_server, until
from .support import join_raw

PARTIAL = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"  # and never the blank line


async def slow_request(port: int) -> socket.socket:
    """A connection that sends part of a request's headers, then nothing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, PARTIAL)
    return sock


async def closed_within(sock: socket.socket, timeout: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails past ``timeout``."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await loop.sock_recv(sock, 4096):
                    break
            except ConnectionError:
                break
    return time.monotonic() - started


async def test_a_request_whose_headers_never_complete_is_closed() -> None:
    server = await spawn_server(["--handshake-timeout", "1"])
    try:
        port = int(server.http.rsplit(":", 1)[1])
        sock = await slow_request(port)
        try:
            elapsed = await closed_within(sock, 1 + 2 * UNIT)
        finally:
            sock.close()
        assert elapsed > 0.5, elapsed  # not refused: timed out
    finally:
        assert server.stop() == 0
    assert Config().handshake_timeout == 10.0  # the default: within the 10 s required


async def http_status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status


async def test_handshakes_in_progress_are_capped_and_websockets_do_not_count() -> None:
    async with running_server(max_handshakes=3, handshake_timeout=1) as srv:
        assert srv.runner is not None
        gate = srv.runner.app[GATE]
        port = int(srv.http.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as session:
            sockets = [await session.ws_connect(srv.url) for _ in range(4)]  # not counted
            slow = [await slow_request(port) for _ in range(3)]
            try:
                await until(lambda: gate.pending >= 3)  # the server's own count
                assert await http_status(srv.http + "/healthz") == 503  # a 4th: refused
                for ws in sockets:  # the WebSockets serve on
                    await join_raw(ws, new_id(), new_id())
            finally:
                for ws in sockets:
                    await ws.close()
            # The slow ones time out: room again.
            for sock in slow:
                await closed_within(sock, 1 + 2 * UNIT)
                sock.close()
            assert await http_status(srv.http + "/healthz") == 200
        assert srv.service.guard.refused.labels("max_handshakes")._value.get() == 1


async def test_uvicorn_limit_concurrency_caps_what_the_asgi_app_cannot_see() -> None:
    app = create_app(Config())
    async with serving_uvicorn(app, limit_concurrency=3) as port:
        slow = [await slow_request(port) for _ in range(3)]
        try:
            assert await http_status(f"http://127.0.0.1:{port}/healthz") == 503
        finally:
            for sock in slow:
                sock.close()
        async with asyncio.timeout(TIMEOUT):  # their slots are free again
            while await http_status(f"http://127.0.0.1:{port}/healthz") != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
