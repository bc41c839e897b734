"""The ASGI transport under uvicorn: what the shared protocol tests do not reach.

The protocol itself runs against the ASGI app through the parametrized ``server``
fixture (tests/server/, including 1009 and pings). Here: the app's own size limit, auth,
draining and slow readers, which depend on the transport, and mounting under a prefix.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from cpc_signaling.asgi import create_app, from_environment
from cpc_signaling.client import Client, ClientError
from cpc_signaling.protocol import (
    Comment,
    CursorUpdate,
    Error,
    ErrorCode,
    JoinDocument,
    LeaveDocument,
)
from cpc_signaling.server import Config
from cpc_signaling.tokens import mint_token

from ..helpers import TIMEOUT, new_id, receive_until, running_asgi_server, serving_uvicorn
from ..security.support import RawWebSocket

SECRET = "s" * 40


def frame(kind: str, **fields: object) -> str:
    return json.dumps({kind: fields})


async def test_app_enforces_its_limit_when_the_asgi_server_allows_more() -> None:
    # Mounted in someone else's app: uvicorn's ws_max_size is theirs (here 1 MiB).
    app = create_app(Config(max_message_bytes=1024))
    async with (
        serving_uvicorn(app, ws_max_size=1 << 20) as port,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws,
    ):
        doc, user = new_id(), new_id()
        await ws.send_str(frame("JoinDocument", document_id=doc, user_id=user))
        ack = await ws.receive(TIMEOUT)
        assert ack.type is aiohttp.WSMsgType.TEXT
        assert app.service.hub.present_users(doc) == [user]
        await ws.send_str("x" * 2000)
        msg = await ws.receive(TIMEOUT)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
        # ...and it left its documents.
        for _ in range(100):
            if not app.service.hub.present_users(doc):
                break
            await asyncio.sleep(0.01)
        assert app.service.hub.present_users(doc) == []


async def test_jwt_over_asgi() -> None:
    async with running_asgi_server(jwt_secret=SECRET) as srv:
        user, doc = new_id(), new_id()
        token = mint_token(sub=user, secret=SECRET, ttl=60)
        async with srv.client(user, token=token) as good:
            assert (await good.join(doc))[-1] == JoinDocument(document_id=doc, user_id=user)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(srv.url, params={"token": "not-a-token"}) as bad,
        ):
            msg = await bad.receive(TIMEOUT)
            assert msg.type is aiohttp.WSMsgType.TEXT
            assert json.loads(msg.data)["Error"]["code"] == ErrorCode.AUTH_ERROR
            closing = await bad.receive(TIMEOUT)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert bad.close_code == 1008


async def test_draining_refuses_handshakes_with_503() -> None:
    async with running_asgi_server() as srv, aiohttp.ClientSession() as session:
        srv.service.draining = True
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(srv.url)
            assert refused.value.status == 503
            async with session.get(srv.http + "/readyz") as resp:
                assert resp.status == 503
        finally:
            srv.service.draining = False


async def test_shutdown_closes_1001_and_announces_leaves() -> None:
    doc = new_id()
    async with running_asgi_server() as srv:
        a = await srv.client(reconnect=False).connect()
        await a.join(doc)
        assert srv.service.hub.present_users(doc) == [a.user_id]
    try:
        with pytest.raises(ClientError):
            await a.receive(TIMEOUT)  # the server drained on exit: closed with 1001
        assert a.close_code == 1001
        assert srv.service.hub.present_users(doc) == []
    finally:
        await a.close()


async def test_mounted_under_a_prefix_in_starlette() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    signaling = create_app(Config())
    host = Starlette(routes=[Mount("/rt", app=signaling)], lifespan=signaling.lifespan)
    async with serving_uvicorn(host) as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/rt/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"http://127.0.0.1:{port}/rt/metrics") as resp:
            assert "cpc_connections" in await resp.text()
        doc = new_id()
        async with (
            Client(f"ws://127.0.0.1:{port}/rt/ws", new_id()) as a,
            Client(f"ws://127.0.0.1:{port}/rt/ws", new_id()) as b,
        ):
            await a.join(doc)
            await b.join(doc)
            await a.receive(TIMEOUT)
            await b.cursor(doc, 3, 4)
            got = await a.receive(TIMEOUT)
            assert isinstance(got, CursorUpdate) and got.position.line == 3


async def test_slow_reader_is_closed_1013_and_leaves() -> None:
    # A reader that stops reading: past the bound on frames that cannot be dropped it
    # leaves at once, and finds the close code 1013 behind its backlog when it reads.
    bound = 64 * 1024
    async with running_asgi_server(
        outbox_max_bytes=bound, rate_limit=0, stored_rate_limit=0
    ) as srv:
        doc = new_id()
        async with srv.client() as writer, srv.client() as watcher:
            await writer.join(doc)
            await watcher.join(doc)
            await writer.receive(TIMEOUT)
            stalled_user = new_id()
            raw = await RawWebSocket.connect(srv.url)  # joins, then never reads
            await raw.send_text(frame("JoinDocument", document_id=doc, user_id=stalled_user))
            await receive_until(
                watcher, lambda m: m == JoinDocument(document_id=doc, user_id=stalled_user)
            )
            await receive_until(
                writer, lambda m: m == JoinDocument(document_id=doc, user_id=stalled_user)
            )
            text = "c" * 9000
            got: list[object] = []
            for i in range(3000):
                await writer.comment(doc, i, 0, text)
                # Paced by the watcher, which keeps up: only the stalled reader falls behind.
                got += await receive_until(
                    watcher, lambda m: isinstance(m, Comment | LeaveDocument)
                )
                if got[-1] == LeaveDocument(document_id=doc, user_id=stalled_user):
                    break
            assert got[-1] == LeaveDocument(document_id=doc, user_id=stalled_user)
            assert not any(isinstance(m, Error) for m in got)
            assert srv.service.metrics.closes.labels("slow_reader")._value.get() == 1
            frames = [f async for f in raw.frames(TIMEOUT)]
            raw.close()
            assert raw.close_code == 1013, (raw.close_code, len(frames))
            assert len(frames) < i  # the frames not yet written when it was closed are dropped


def test_from_environment_reads_the_cpc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPC_MAX_MESSAGE_BYTES", "2048")
    monkeypatch.setenv("CPC_DEMO", "false")
    app = from_environment()  # what `uvicorn --factory cpc_signaling.asgi:from_environment` runs
    assert app.config.max_message_bytes == 2048 and app.config.demo is False
