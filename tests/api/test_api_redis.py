"""The server-side API across two instances sharing a private redis-server.

Instance A is the standalone aiohttp server, instance B the ASGI app under
uvicorn: one service, two transports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from cpc_signaling.client import ClientError
from cpc_signaling.protocol import Comment, CursorUpdate, JoinDocument, LeaveDocument

from ..helpers import (
    TIMEOUT,
    RunningServer,
    new_id,
    receive_until,
    running_asgi_server,
    running_server,
    until,
)
from ..redis.server import RedisServer, redis_server
from .test_api import AUTH, KEY, call, comment_body


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@contextlib.asynccontextmanager
async def two_instances(redis: RedisServer) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    options = {"redis_url": redis.url, "redis_prefix": f"t{new_id()[:8]}", "api_key": KEY}
    async with running_server(**options) as a, running_asgi_server(**options) as b:
        for srv in (a, b):
            assert srv.service.ready
        yield a, b


async def test_publish_presence_disconnect_across_instances(redis: RedisServer) -> None:
    doc = new_id()
    async with (
        two_instances(redis) as (a, b),
        a.client() as on_a,
        b.client(reconnect=False) as on_b,  # kicked below: no automatic way back in
    ):
        await on_a.join(doc)
        await on_b.join(doc)
        assert await on_a.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=on_b.user_id)
        await on_b.cursor(doc, 5, 6)
        assert isinstance(await on_a.receive(TIMEOUT), CursorUpdate)

        # Published through A's API: members on both instances get it.
        bot = new_id()
        status, _, _ = await call(
            a, "POST", f"/api/documents/{doc}/messages", comment_body(doc, bot, "hello"), AUTH
        )
        assert status == 202
        for client in (on_a, on_b):
            got = await receive_until(client, lambda m: isinstance(m, Comment))
            assert isinstance(got[-1], Comment) and got[-1].content == "hello"

        # Presence asked of either instance is the whole service's.
        for srv in (a, b):
            status, payload, _ = await call(
                srv, "GET", f"/api/documents/{doc}/presence", headers=AUTH
            )
            assert status == 200
            users = payload["users"]
            assert [u["user_id"] for u in users] == [on_a.user_id, on_b.user_id]
            assert "CursorUpdate" in users[1]["presence"][0]

        # A document with no member on the asked instance: read from Redis.
        other = new_id()
        async with b.client() as lonely:
            await lonely.join(other)
            present = await a.service.presence(other)
            assert [p.user_id for p in present] == [lonely.user_id]
            assert other not in a.service.hub.local_members

        # Disconnect asked of A closes the user's connection on B; A's member sees it leave.
        status, payload, _ = await call(
            a, "POST", f"/api/users/{on_b.user_id}/disconnect", headers=AUTH
        )
        assert status == 200
        assert payload == {"user_id": on_b.user_id, "closed_here": 0, "all_instances": True}
        got = await receive_until(on_a, lambda m: isinstance(m, LeaveDocument))
        assert got[-1] == LeaveDocument(document_id=doc, user_id=on_b.user_id)
        with pytest.raises(ClientError):
            while True:
                await on_b.receive(TIMEOUT)
        assert on_b.close_code == 1008


async def test_api_answers_503_while_redis_is_down() -> None:
    with redis_server() as own:
        async with running_server(redis_url=own.url, api_key=KEY) as srv:
            assert srv.service.ready
            own.stop()
            doc = new_id()
            await until(lambda: not srv.service.ready)  # until the instance notices
            status, payload, _ = await call(
                srv,
                "POST",
                f"/api/documents/{doc}/messages",
                comment_body(doc, new_id()),
                AUTH,
            )
            assert status == 503, payload
            assert payload["Error"]["code"] == "CONNECTION_ERROR"
            status, payload, _ = await call(
                srv, "GET", f"/api/documents/{doc}/presence", headers=AUTH
            )
            assert status == 503, json.dumps(payload)


async def test_control_channel_heals_after_a_redis_restart() -> None:
    with redis_server() as own:
        options = {"redis_url": own.url, "api_key": KEY}
        async with running_server(**options) as a, running_server(**options) as b:
            for srv in (a, b):
                await until(lambda srv=srv: srv.service.ready)  # type: ignore[misc]
            own.stop()
            await until(lambda: not b.service.ready)  # it notices the loss
            assert "cpc_redis_nodes_up 0.0" in b.service.metrics.render().decode()
            own.start()
            for srv in (a, b):
                await until(lambda srv=srv: srv.service.ready)  # type: ignore[misc]
            async with b.client(reconnect=False) as victim:
                await victim.join(new_id())
                assert await a.service.disconnect(victim.user_id) == 0
                with pytest.raises(ClientError):
                    while True:
                        await victim.receive(TIMEOUT)
                assert victim.close_code == 1008
