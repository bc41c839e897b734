"""The server's fast path keeps the WebSocket contract: pings, order, nothing lost."""

from __future__ import annotations

import aiohttp

from cpc_signaling.protocol import CursorUpdate

from ..helpers import TIMEOUT, RunningServer, new_id, running_server


async def test_a_clients_ping_gets_its_pong() -> None:
    async with (
        running_server() as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.url, autoping=False) as ws,
    ):
        await ws.ping(b"are you there")
        msg = await ws.receive(TIMEOUT)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")


async def test_a_burst_arrives_complete_and_in_order(server: RunningServer) -> None:
    """Frames handed over in one loop iteration are written together, in order."""
    doc = new_id()
    async with server.client() as a, server.client() as b:
        await a.join(doc)
        await b.join(doc)
        await a.receive(TIMEOUT)  # b's join
        for line in range(300):  # no await on delivery in between: one burst
            await b.cursor(doc, line, 1)
        lines: list[int] = []
        while len(lines) < 300:
            got = await a.receive(TIMEOUT)
            assert isinstance(got, CursorUpdate)
            lines.append(got.position.line)
        assert lines == list(range(300))
