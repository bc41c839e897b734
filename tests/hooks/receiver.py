"""A real HTTP receiver on a loopback port for webhook tests: records every request and
answers as the test tells it (a status, a body, a delay)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    delay: float = 0.0
    gate: asyncio.Event | None = None  # answer only once the test sets it


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    # Called for each request (its index, from 0); the default answers 200.
    answer: Callable[[int, Received], Answer] = lambda i, r: Answer()
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Wait until ``count`` requests arrived in all; returns them all."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)


@contextlib.asynccontextmanager
async def receiving(path: str = "/hook") -> AsyncIterator[Receiver]:
    """An aiohttp server on 127.0.0.1, a free port; POST ``path`` is recorded."""
    receiver: Receiver | None = None

    async def handle(request: web.Request) -> web.Response:
        assert receiver is not None
        got = Received(request.path, dict(request.headers), await request.read())
        index = len(receiver.requests)
        async with receiver._arrived:
            receiver.requests.append(got)
            receiver._arrived.notify_all()
        answer = receiver.answer(index, got)
        if answer.gate is not None:
            await answer.gate.wait()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )

    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver = Receiver(f"http://127.0.0.1:{port}{path}")
    try:
        yield receiver
    finally:
        await runner.cleanup()


def closed_port_url() -> str:
    """A loopback URL nobody listens on (bound, then closed: connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
