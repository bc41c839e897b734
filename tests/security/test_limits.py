"""Origin check, rate limit and connection caps over real sockets."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from cpc_signaling.client import Client
from cpc_signaling.core.ratelimit import Notices, TokenBucket
from cpc_signaling.protocol import (
    Annotation,
    Comment,
    CursorUpdate,
    Error,
    ErrorCode,
    JoinDocument,
    PresenceStatus,
)

from ..conftest import ServerFactory
from ..helpers import metric, new_id, receive_until, running_server
from .support import SECRET, TS, connect_and_collect, frame, join_raw, token

# -- origin -----------------------------------------------------------------------------------


async def test_origin_refused_before_the_upgrade() -> None:
    async with running_server(allowed_origins="https://app.example,http://localhost:3000") as srv:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(srv.url, headers={"Origin": "https://evil.example"})
            assert refused.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(srv.url, headers={"Origin": "null"})
            for origin in ("https://app.example", "http://LOCALHOST:3000"):
                async with session.ws_connect(srv.url, headers={"Origin": origin}) as ws:
                    await join_raw(ws, new_id(), new_id())
            # No Origin header: not a browser; allowed (the token, if any, authenticates).
            async with session.ws_connect(srv.url) as ws:
                await join_raw(ws, new_id(), new_id())
        assert await metric(srv.http, "cpc_connections_refused_total") == 2


async def test_any_origin_by_default() -> None:
    async with (
        running_server() as srv,
        aiohttp.ClientSession() as session,
        session.ws_connect(srv.url, headers={"Origin": "https://a.example"}) as ws,
    ):
        await join_raw(ws, new_id(), new_id())


# -- rate limit ---------------------------------------------------------------------------------


def test_token_bucket_unit() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert bucket.take(100.0) and bucket.tokens == 4  # refills to burst, no more
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0)
    notices = Notices(1.0)
    assert notices.due(0.0) and not notices.due(0.5) and notices.due(1.0)


def test_default_rate_never_limits_a_60hz_cursor_in_three_documents() -> None:
    rng = random.Random(4)
    bucket = TokenBucket(rate=200, burst=400, now=0.0)
    for tick in range(60 * 120):  # two minutes of 60 Hz frames with up to 30 ms of jitter
        now = tick / 60 + rng.uniform(0, 0.03)
        assert all(bucket.take(now) for _ in range(3)), tick


async def test_rate_limit_drops_and_tells_at_most_once_a_second() -> None:
    async with running_server(rate_limit=20, rate_burst=10, error_limit=1000) as srv:
        doc = new_id()
        async with srv.client() as watcher, srv.client() as sender:
            await watcher.join(doc)
            await sender.join(doc)  # 1 of the 10
            await receive_until(watcher, lambda m: isinstance(m, JoinDocument))
            for i in range(100):
                await sender.cursor(doc, i, 0)
            errors = await receive_until(sender, lambda m: isinstance(m, Error))
            assert errors[-1].code == ErrorCode.CONNECTION_ERROR  # type: ignore[union-attr]
            assert "rate limited" in errors[-1].message  # type: ignore[union-attr]
            # A marker after a pause: the bucket has refilled a little.
            await asyncio.sleep(0.2)
            await sender.cursor(doc, 999, 0)
            got = await receive_until(
                watcher, lambda m: isinstance(m, CursorUpdate) and m.position.line == 999
            )
            delivered = [m for m in got if isinstance(m, CursorUpdate)]
            # The burst (9 tokens left after the join) plus what refilled while sending.
            assert 9 <= len(delivered) - 1 <= 20, len(delivered)
            lines = [m.position.line for m in delivered[:-1]]
            assert lines == sorted(lines)  # what passes keeps its order
            # More floods within the same second: no second notice.
            for i in range(50):
                await sender.cursor(doc, i, 1)
            with pytest.raises(TimeoutError):
                await sender.receive(0.3)
            dropped = await metric(srv.http, "cpc_rate_limited_total")
            assert dropped >= 100 - 20, dropped
            # After the notice interval a new flood gets one new notice.
            await asyncio.sleep(0.8)
            for i in range(50):
                await sender.cursor(doc, i, 2)
            again = await receive_until(sender, lambda m: isinstance(m, Error))
            assert again[-1].code == ErrorCode.CONNECTION_ERROR  # type: ignore[union-attr]
            assert sender.connected


async def test_rate_limit_zero_disables() -> None:
    async with running_server(rate_limit=0) as srv:
        doc = new_id()
        async with srv.client() as watcher, srv.client() as sender:
            await watcher.join(doc)
            await sender.join(doc)
            await receive_until(watcher, lambda m: isinstance(m, JoinDocument))
            for i in range(1000):
                await sender.cursor(doc, i, 0)
            got = await receive_until(
                watcher, lambda m: isinstance(m, CursorUpdate) and m.position.line == 999
            )
            assert len([m for m in got if isinstance(m, CursorUpdate)]) == 1000
        assert await metric(srv.http, "cpc_rate_limited_total") == 0


async def test_paced_cursor_traffic_in_three_documents_is_never_limited() -> None:
    async with running_server() as srv:
        docs = [new_id() for _ in range(3)]
        async with srv.client() as watcher, srv.client() as sender:
            for doc in docs:
                await watcher.join(doc)
                await sender.join(doc)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for tick in range(60):  # one second at 60 Hz, in each of three documents
                for doc in docs:
                    await sender.cursor(doc, tick, 0)
                await asyncio.sleep(max(0.0, start + (tick + 1) / 60 - loop.time()))
            await receive_until(
                watcher,
                lambda m: (
                    isinstance(m, CursorUpdate)
                    and m.position.line == 59
                    and m.document_id == docs[-1]
                ),
            )
        assert await metric(srv.http, "cpc_rate_limited_total") == 0


# -- stored rate (annotations and comments) -------------------------------------------------------


async def test_stored_rate_limit_refuses_a_comment_flood_and_spares_presence(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as srv:  # defaults: 10 annotations/comments a second, burst 20
        doc = new_id()
        async with srv.client() as watcher, srv.client() as sender:
            await watcher.join(doc)
            await sender.join(doc)
            await receive_until(watcher, lambda m: isinstance(m, JoinDocument))
            for i in range(40):
                await sender.comment(doc, i, 0, f"flood {i}")
                await sender.cursor(doc, i, 0)  # presence: only the general rate applies
            await sender.status(doc, "marker")
            got = await receive_until(watcher, lambda m: isinstance(m, PresenceStatus))
            comments = [m.position.line for m in got if isinstance(m, Comment)]
            cursors = [m.position.line for m in got if isinstance(m, CursorUpdate)]
            assert cursors == list(range(40))
            assert 20 <= len(comments) <= 30, comments  # the burst, and what refilled
            assert comments == list(range(len(comments)))  # the first ones, in order
            notice = await receive_until(sender, lambda m: isinstance(m, Error))
            assert notice[-1].code == ErrorCode.CONNECTION_ERROR  # type: ignore[union-attr]
            assert "annotations and comments" in notice[-1].message  # type: ignore[union-attr]
            with pytest.raises(TimeoutError):  # one notice a second, not one per drop
                await sender.receive(0.3)
            assert sender.connected
            dropped = await metric(srv.http, "cpc_stored_rate_limited_total")
            assert dropped == 40 - len(comments)
            assert await metric(srv.http, "cpc_rate_limited_total") == 0
            # A second later the bucket has refilled: comments pass again.
            await asyncio.sleep(1.0)
            await sender.comment(doc, 99, 0, "later")
            later = await receive_until(watcher, lambda m: isinstance(m, Comment))
            assert later[-1].position.line == 99  # type: ignore[union-attr]


async def test_stored_rate_limit_zero_disables(server_factory: ServerFactory) -> None:
    async with server_factory(stored_rate_limit=0) as srv:
        doc = new_id()
        async with srv.client() as watcher, srv.client() as sender:
            await watcher.join(doc)
            await sender.join(doc)
            await receive_until(watcher, lambda m: isinstance(m, JoinDocument))
            for i in range(100):
                await sender.send_raw(
                    frame(
                        "Annotation",
                        document_id=doc,
                        user_id=sender.user_id,
                        position={"line": i, "column": 0},
                        content=f"note {i}",
                        timestamp=TS,
                    )
                )
            got = await receive_until(
                watcher, lambda m: isinstance(m, Annotation) and m.position.line == 99
            )
            assert len([m for m in got if isinstance(m, Annotation)]) == 100
        assert await metric(srv.http, "cpc_stored_rate_limited_total") == 0


# -- connection caps ------------------------------------------------------------------------------


async def test_process_connection_cap() -> None:
    async with running_server(max_connections=2) as srv:
        async with srv.client() as a, srv.client() as b:
            await a.join(new_id())
            await b.join(new_id())
            refused = await connect_and_collect(srv.url)
            assert refused.close_code == 1013
            assert [e["code"] for e in refused.errors] == [ErrorCode.CONNECTION_ERROR]
        # Room again once they left.
        async with srv.client() as c:
            await c.join(new_id())
        assert await metric(srv.http, "cpc_connections_refused_total") == 1


async def test_per_user_connection_cap() -> None:
    async with running_server(jwt_secret=SECRET, max_connections_per_user=2) as srv:
        user, other = new_id(), new_id()
        tabs = [Client(srv.url, user, token=token(user), reconnect=False) for _ in range(2)]
        for tab in tabs:
            await tab.connect()
            await tab.join(new_id())
        try:
            refused = await connect_and_collect(srv.url, params={"token": token(user)})
            assert refused.close_code == 1013
            assert refused.errors[0]["code"] == ErrorCode.CONNECTION_ERROR
            assert user in refused.errors[0]["message"]
            async with Client(srv.url, other, token=token(other), reconnect=False) as c:
                await c.join(new_id())  # another user is not affected
        finally:
            await tabs[0].close()
        async with (  # one tab closed: room for one more
            aiohttp.ClientSession() as session,
            session.ws_connect(srv.url, params={"token": token(user)}) as ws,
        ):
            await join_raw(ws, new_id(), user)
        await tabs[1].close()
        assert srv.service.guard.users() == 0


async def test_error_budget_still_applies_to_garbage() -> None:
    async with running_server() as srv:
        outcome = await connect_and_collect(srv.url, send=["nope"] * 30)
        assert outcome.close_code == 1008
        assert len(outcome.errors) == 21
        assert {e["code"] for e in outcome.errors} == {ErrorCode.PARSE_ERROR}


async def test_oversized_frame_closes_1009() -> None:
    async with running_server(max_message_bytes=1024) as srv:
        big = frame(
            "Comment",
            document_id=new_id(),
            user_id=new_id(),
            position={"line": 0, "column": 0},
            content="x" * 2000,
            timestamp=TS,
        )
        outcome = await connect_and_collect(srv.url, send=[big])
        assert outcome.close_code == 1009
