"""A join whose check finishes after its connection started closing is never applied.

The join webhook answers slowly (a real local HTTP receiver, held by a gate); the
joiner sends JoinDocument, then its connection closes, by the client or by the server
(error budget), before the answer (allow) comes. The other member must never see the
joiner present: no JoinDocument, no ghost LeaveDocument, and neither a late joiner's
snapshot nor the presence API lists it. Memory and Redis backends, both transports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
import websockets

from cpc_signaling.protocol import JoinDocument

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, new_id, receive_until, until
from ..redis.server import RedisServer, redis_server
from ..security.support import frame
from .receiver import Answer, receiving


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A private redis-server on a free port for this module."""
    with redis_server() as server:
        yield server


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("how", ["client", "server"])
async def test_a_join_checked_after_its_connection_started_closing_is_never_announced(
    server_factory: ServerFactory, backend: str, how: str, request: pytest.FixtureRequest
) -> None:
    doc, ghost = new_id(), new_id()
    gate = asyncio.Event()
    options: dict[str, object] = {"join_webhook_cache": 0}
    if backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis")
        options |= {"redis_url": redis.url, "redis_prefix": f"j{new_id()[:8]}"}
    async with (
        receiving() as hook,
        server_factory(join_webhook=hook.url, **options) as server,
        server.client(reconnect=False) as watcher,
    ):
        await watcher.join(doc)
        hook.answer = lambda i, r: Answer(200, gate=gate)
        async with websockets.connect(server.url) as ws:
            await ws.send(frame("JoinDocument", document_id=doc, user_id=ghost))
            await hook.wait_for(2, TIMEOUT)  # its check is in flight
            if how == "server":  # the server closes it (1008) while the check waits
                for _ in range(21):
                    await ws.send("garbage")
                with contextlib.suppress(websockets.ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        async for _ in ws:
                            pass
                assert ws.close_code == 1008
        hook.answer = lambda i, r: Answer(200)
        gate.set()
        await until(lambda: not server.service.joining.checks)  # the ghost's "allow" is handled
        async with server.client(reconnect=False) as late:
            snapshot = await late.join(doc)
            got = await receive_until(
                watcher, lambda m: m == JoinDocument(document_id=doc, user_id=late.user_id)
            )
        assert snapshot == [
            JoinDocument(document_id=doc, user_id=watcher.user_id),
            JoinDocument(document_id=doc, user_id=late.user_id),
        ]
        assert [m for m in got if getattr(m, "user_id", None) == ghost] == []
        users = [u.user_id for u in await server.service.presence(doc)]
        assert ghost not in users
