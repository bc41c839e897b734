"""The Redis engine's correctness under failures, misconfiguration and hostile traffic.

Real ``cpc-signaling serve`` processes on a private ``redis-server``; each test is
a bug a review of the engine found, reproduced through the public surface.
"""

from __future__ import annotations

import asyncio
import signal

from redis.asyncio import Redis

from cpc_signaling.client import Client
from cpc_signaling.protocol import Comment, CursorUpdate, JoinDocument, LeaveDocument, Message

from ..helpers import TIMEOUT, ServerProcess, metric, new_id, receive_until
from .cluster import instances, readyz, running, spawn_instances, wait_ready
from .server import RedisServer


def _prefix(server: ServerProcess) -> str:
    args = list(server.proc.args)  # type: ignore[arg-type]
    return str(args[args.index("--redis-prefix") + 1])


def comments(messages: list[Message]) -> list[str]:
    return [m.content for m in messages if type(m) is Comment]


async def test_comments_of_an_outage_reach_redis_though_their_author_left(
    own_redis: RedisServer,
) -> None:
    """Written while Redis was down, by a user who left before it came back: the
    comment is still committed on restore, reaches the other instance's members,
    and stays in the snapshots of later joiners on both instances."""
    doc = new_id()
    async with (
        running(await spawn_instances(own_redis, 2)) as (s1, s2),
        Client(s1.url, new_id()) as author,
        Client(s1.url, new_id()) as w1,
        Client(s2.url, new_id()) as w2,
    ):
        for client in (author, w1, w2):
            await client.join(doc)
        await receive_until(w1, lambda m: type(m) is JoinDocument and m.user_id == w2.user_id)
        own_redis.stop()
        await asyncio.gather(wait_ready(s1, False), wait_ready(s2, False))
        await author.comment(doc, 1, 1, "written offline")
        await receive_until(w1, lambda m: type(m) is Comment)  # sequenced locally on s1
        await author.leave(doc)
        own_redis.start()
        await asyncio.gather(wait_ready(s1, True), wait_ready(s2, True))
        got = await receive_until(w2, lambda m: type(m) is Comment)
        assert comments(got) == ["written offline"]
        for server in (s1, s2):
            async with Client(server.url, new_id()) as late:
                assert comments(await late.join(doc)) == ["written offline"], server.url
        # Still there after s1 reloads the document (its replica is Redis's again).
        await w1.leave(doc)
        async with Client(s1.url, new_id()) as later:
            assert comments(await later.join(doc)) == ["written offline"]


async def test_a_reaped_instance_that_is_alive_never_tells_its_clients_they_left(
    redis: RedisServer,
) -> None:
    """Stalled (SIGSTOP) past the instance timeout, s1 is reaped by s2; when it runs
    again its clients never receive their own leave, and they stay members."""
    doc = new_id()
    # The stall (about 2 s) is shorter than any socket timeout of the engine.
    async with (
        instances(redis, 2, "--heartbeat-interval", "0.5", "--instance-timeout", "1.5") as (
            s1,
            s2,
        ),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await receive_until(a, lambda m: type(m) is JoinDocument)
        s1.signal(signal.SIGSTOP)
        try:
            await receive_until(b, lambda m: m == LeaveDocument(document_id=doc, user_id=a.user_id))
        finally:
            s1.signal(signal.SIGCONT)
        # s1 re-registers a: the others see a come back ...
        await receive_until(b, lambda m: m == JoinDocument(document_id=doc, user_id=a.user_id))
        await a.cursor(doc, 7, 7)
        got = await receive_until(b, lambda m: type(m) is CursorUpdate)
        assert got[-1].user_id == a.user_id  # type: ignore[union-attr]
        # ... and a never left: no leave of its own, and b's traffic still reaches it.
        await b.cursor(doc, 3, 3)
        got = await receive_until(a, lambda m: type(m) is CursorUpdate)
        assert LeaveDocument(document_id=doc, user_id=a.user_id) not in got, got
        assert got[-1].user_id == b.user_id  # type: ignore[union-attr]


async def test_a_quiet_listener_is_not_a_failure(redis: RedisServer) -> None:
    """No Redis message for longer than any socket timeout (heartbeats every 6 s):
    the subscriber keeps listening; nothing is torn down or resynced."""
    doc = new_id()
    async with (
        instances(redis, 2, "--heartbeat-interval", "6", "--instance-timeout", "20") as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await receive_until(a, lambda m: type(m) is JoinDocument)
        await asyncio.sleep(6.5)  # a quiet spell past 5 s: nothing may happen in it
        for server in (s1, s2):
            assert await metric(server.http, "cpc_backend_failures_total") == 0, server.lines[-10:]
        await b.cursor(doc, 2, 2)
        got = await receive_until(a, lambda m: type(m) is CursorUpdate)
        assert [type(m) for m in got] == [CursorUpdate]


async def test_instances_configured_differently_keep_one_truth(redis: RedisServer) -> None:
    """s1 caps members and stored messages lower than s2: whatever each instance's
    configuration, every replica follows the outcomes Redis decided."""
    prefix = "t" + new_id()[:8]
    low = ("--max-members-per-document", "3", "--max-stored-per-document", "2")
    s1 = (await spawn_instances(redis, 1, *low, prefix=prefix))[0]
    s2 = (await spawn_instances(redis, 1, prefix=prefix, first=1))[0]
    members, stored = new_id(), new_id()
    async with (
        running([s1, s2]),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
        Client(s2.url, new_id()) as c,
        Client(s2.url, new_id()) as d,
    ):
        # Members: d's join is accepted by Redis (s2's cap); s1 must not refuse it.
        for client in (a, b, c, d):
            await client.join(members)
        await d.cursor(members, 4, 4)
        got = await receive_until(a, lambda m: type(m) is CursorUpdate)
        assert [(type(m), m.user_id) for m in got] == [  # type: ignore[union-attr]
            (JoinDocument, b.user_id),
            (JoinDocument, c.user_id),
            (JoinDocument, d.user_id),
            (CursorUpdate, d.user_id),
        ]
        # Stored messages: four kept by Redis (s2's cap), four in every snapshot.
        await a.join(stored)
        await b.join(stored)
        for n in range(4):
            await b.comment(stored, 1, 1, f"c{n}")
        await receive_until(a, lambda m: type(m) is Comment and m.content == "c3")
        async with Client(s1.url, new_id()) as on1, Client(s2.url, new_id()) as on2:
            assert comments(await on1.join(stored)) == comments(await on2.join(stored))
        # The instance that started second warns that the limits differ.
        assert any("has other limits" in line for line in s2.lines), s2.lines[-10:]


async def test_another_database_on_the_same_redis_is_another_world(redis: RedisServer) -> None:
    """Two deployments with the same prefix on databases 3 and 7 of one Redis: one's
    traffic never reaches or disturbs the other."""
    prefix = "t" + new_id()[:8]
    base = redis.url.rsplit("/", 1)[0]
    s7 = (await spawn_instances(redis, 1, prefix=prefix, url=base + "/7"))[0]
    s3 = (await spawn_instances(redis, 1, prefix=prefix, url=base + "/3"))[0]
    doc = new_id()
    async with (
        running([s7, s3]),
        Client(s7.url, new_id()) as a,
        Client(s3.url, new_id()) as x,
    ):
        await a.join(doc)
        await x.join(doc)
        for n in range(3):
            await x.cursor(doc, n, n)
        await x.comment(doc, 1, 1, "elsewhere")
        await x.leave(doc)
        async with Client(s7.url, new_id()) as b:
            await b.join(doc)
            got = await receive_until(a, lambda m: type(m) is JoinDocument)
            assert got == [JoinDocument(document_id=doc, user_id=b.user_id)]
        assert await metric(s7.http, "cpc_backend_failures_total") == 0


async def test_a_malformed_message_is_dropped_and_counted(redis: RedisServer) -> None:
    """Garbage published on every channel the instances listen on: each instance
    drops it, counts it, and goes on delivering without a resync."""
    doc = new_id()
    async with (
        instances(redis, 2) as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await receive_until(a, lambda m: type(m) is JoinDocument)
        channels = redis.strings("PUBSUB", "CHANNELS", _prefix(s1) + "*")
        assert channels
        for channel in channels:
            for junk in ("garbage", "1 x \x93", "\x93\xa1F"):
                redis.command("PUBLISH", channel, junk)
        await b.cursor(doc, 2, 2)
        got = await receive_until(a, lambda m: type(m) is CursorUpdate)
        assert [type(m) for m in got] == [CursorUpdate]
        for server in (s1, s2):
            assert await metric(server.http, "cpc_backend_failures_total") == 0
            assert await metric(server.http, "cpc_backend_malformed_total") >= 1


async def followed(redis: RedisServer, prefix: str, docs: list[str]) -> list[str]:
    """Which of ``docs`` Redis delivers to an instance: an instance follows them
    (``P:doc:D`` field ``f``), or (an engine of a channel per document) a channel of
    theirs is subscribed."""
    client = Redis.from_url(redis.url)
    try:
        channels = [
            str(c, "utf-8") if isinstance(c, bytes) else c
            for c in await client.pubsub_channels(prefix + "*")
        ]
        found = []
        for doc in docs:
            if any(doc in c for c in channels) or await client.hget(f"{prefix}:doc:{doc}", "f"):
                found.append(doc)
        return found
    finally:
        await client.aclose()


async def test_documents_let_go_during_a_restore_are_not_followed(redis: RedisServer) -> None:
    """Documents joined while the instance restores (its subscriber connection was
    killed), then let go before the restore ends: once everything settled, Redis
    delivers nothing of those documents to the instance any more."""
    async with (
        instances(redis, 1, "--max-documents-per-connection", "300", "--redis-linger", "0") as (
            s1,
        ),
        Client(s1.url, new_id()) as many,
        Client(s1.url, new_id()) as more,
        Client(s1.url, new_id()) as most,
    ):
        prefix = _prefix(s1)
        # Many followed documents: the restore takes a while.
        followed_first = [new_id() for _ in range(200)]
        for doc in followed_first:
            await many.join(doc)
        brief = [new_id() for _ in range(20)]
        clients = [Client(s1.url, new_id(), reconnect=False) for _ in brief]
        await asyncio.gather(*(c.connect() for c in clients))
        redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_ready(s1, False)
        async with asyncio.timeout(TIMEOUT):  # the restore has begun
            while not await followed(redis, prefix, followed_first[:1]):  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        # Joined while the restore runs: followed once it has restored the others ...
        for client, doc in zip(clients, brief, strict=True):
            await client.send(JoinDocument(document_id=doc, user_id=client.user_id))
        for _ in range(280):  # ... before these, which keep it restoring a while longer
            for client in (more, most):
                await client.send(JoinDocument(document_id=new_id(), user_id=client.user_id))
        async with asyncio.timeout(TIMEOUT):
            while await followed(redis, prefix, brief) != brief:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        await asyncio.gather(*(c.close() for c in clients))  # let go meanwhile
        assert await readyz(s1) == 503  # still restoring when they left
        await wait_ready(s1, True)
        # A barrier: a document joined and left after the restore.
        marker = new_id()
        await many.join(marker)
        await many.leave(marker)
        async with asyncio.timeout(TIMEOUT):
            while await followed(redis, prefix, [marker]):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert await followed(redis, prefix, brief) == []
