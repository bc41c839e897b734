"""Many instances, one service: real processes, a private redis-server, real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from cpc_signaling.client import Client
from cpc_signaling.protocol import (
    Comment,
    CursorUpdate,
    Error,
    JoinDocument,
    LeaveDocument,
    Message,
)

from ..helpers import TIMEOUT, metric, new_id, receive_until, until, until_metric
from .cluster import instances, spawn_instances, wait_ready
from .server import RedisServer


def user_of(message: Message) -> str:
    assert not isinstance(message, Error), message
    return message.user_id


def joins(messages: list[Message]) -> list[str]:
    return [m.user_id for m in messages if type(m) is JoinDocument]


async def test_snapshot_and_fanout_across_instances(redis: RedisServer) -> None:
    doc = new_id()
    async with (
        instances(redis, 3) as (s1, s2, s3),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        if True:
            async with Client(s3.url, new_id()) as w:
                await w.join(doc)
                await a.join(doc)
                await a.cursor(doc, 3, 4)
                await a.comment(doc, 1, 0, "first")
                await a.cursor(doc, 5, 6)  # supersedes the first cursor
                # Once an instance delivered the last one, all are in the shared state.
                await receive_until(w, lambda m: type(m) is CursorUpdate and m.position.line == 5)
            snapshot = await b.join(doc)
            assert [type(m) for m in snapshot] == [
                JoinDocument,
                CursorUpdate,
                Comment,
                JoinDocument,
            ]
            assert joins(snapshot) == [a.user_id, b.user_id]
            cursor = snapshot[1]
            assert isinstance(cursor, CursorUpdate) and cursor.position.line == 5
            got = await receive_until(a, lambda m: type(m) is JoinDocument)
            assert [(type(m), user_of(m)) for m in got] == [
                (LeaveDocument, w.user_id),
                (JoinDocument, b.user_id),
            ]

            async with Client(s3.url, new_id()) as c:
                assert joins(await c.join(doc)) == [a.user_id, b.user_id, c.user_id]
                await b.cursor(doc, 9, 9)
                for peer in (a, c):
                    got = await receive_until(peer, lambda m: type(m) is CursorUpdate)
                    assert next(m for m in got if type(m) is CursorUpdate).user_id == b.user_id
                # Per-sender order across instances.
                for n in range(30):
                    await a.cursor(doc, n, 0)
                got = await receive_until(
                    c, lambda m: type(m) is CursorUpdate and m.position.line == 29
                )
                lines = [m.position.line for m in got if type(m) is CursorUpdate]
                assert lines == sorted(lines) and lines[-1] == 29
                await b.leave(doc)
                got = await receive_until(c, lambda m: type(m) is LeaveDocument)
                assert got[-1] == LeaveDocument(document_id=doc, user_id=b.user_id)


async def test_one_user_on_two_instances_is_announced_once(redis: RedisServer) -> None:
    doc, user = new_id(), new_id()
    async with instances(redis, 3) as (s1, s2, s3), Client(s3.url, new_id()) as watcher:
        await watcher.join(doc)
        tab1, tab2 = Client(s1.url, user), Client(s2.url, user)
        await tab1.connect()
        await tab2.connect()
        try:
            await tab1.join(doc)
            snapshot = await tab2.join(doc)
            assert joins(snapshot) == [watcher.user_id, user]
            await tab2.cursor(doc, 1, 1)  # reaches the other tab too
            got = await receive_until(tab1, lambda m: type(m) is CursorUpdate)
            assert [type(m) for m in got] == [CursorUpdate]
            await tab1.leave(doc)
            await tab2.leave(doc)
            got = await receive_until(watcher, lambda m: type(m) is LeaveDocument)
            # One join, then the cursor, then one leave: nothing twice.
            assert [type(m) for m in got] == [JoinDocument, CursorUpdate, LeaveDocument]
        finally:
            await tab1.close()
            await tab2.close()


async def test_kill_9_announces_leaves_within_the_bound(redis: RedisServer) -> None:
    doc, multi = new_id(), new_id()
    async with (
        instances(redis, 2) as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s1.url, multi) as tab1,
    ):
        b = Client(s2.url, new_id(), reconnect=False)
        tab2 = Client(s2.url, multi, reconnect=False)  # the same user, on the doomed instance
        await b.connect()
        await tab2.connect()
        await a.join(doc)
        await tab1.join(doc)
        await tab2.join(doc)
        await b.join(doc)
        await receive_until(a, lambda m: type(m) is JoinDocument and m.user_id == b.user_id)
        killed = time.monotonic()
        os.kill(s2.proc.pid, signal.SIGKILL)
        got = await receive_until(a, lambda m: type(m) is LeaveDocument, timeout=4 * TIMEOUT)
        elapsed = time.monotonic() - killed
        assert got == [LeaveDocument(document_id=doc, user_id=b.user_id)]
        # heartbeat 0.3 s, timeout 1.2 s: detected within timeout + one interval (+ slack).
        assert elapsed < 1.2 + 0.3 + 1.5, elapsed
        print(f"crash-to-leave: {elapsed:.2f} s (heartbeat 0.3 s, instance timeout 1.2 s)")
        async with Client(s1.url, new_id()) as c:
            # No zombie; the user still connected through s1 stays, never announced gone.
            assert joins(await c.join(doc)) == [a.user_id, multi, c.user_id]
        got = await receive_until(a, lambda m: type(m) is LeaveDocument)
        assert got == [
            JoinDocument(document_id=doc, user_id=c.user_id),
            LeaveDocument(document_id=doc, user_id=c.user_id),
        ]
        assert await metric(s1.http, "cpc_backend_reaped_total") == 2
        await b.close()
        await tab2.close()


async def test_sigterm_drain_announces_leaves_at_once(redis: RedisServer) -> None:
    doc, user = new_id(), new_id()
    # A long instance timeout: the leave must come from the drain, not from a reap.
    async with (
        instances(redis, 2, "--instance-timeout", "60") as (s1, s2),
        Client(s1.url, new_id()) as a,
    ):
        if True:
            b = Client(s2.url, user, reconnect=False)
            b_other = Client(s2.url, user, reconnect=False)
            tab = Client(s1.url, user)  # the same user stays through s1
            for c in (b, b_other, tab):
                await c.connect()
            await a.join(doc)
            await b.join(doc)
            await b_other.join(doc)
            await tab.join(doc)
            await b.join(new_id())
            await a.receive(TIMEOUT)
            stopped = time.monotonic()
            s2.signal(signal.SIGTERM)
            assert await asyncio.to_thread(s2.proc.wait, 10) == 0
            assert time.monotonic() - stopped < 3
            assert b.close_code == 1001 or (await _closed(b)) == 1001
            # The user is still present through s1: nobody is told it left.
            async with Client(s1.url, new_id()) as c:
                assert sorted(joins(await c.join(doc))) == sorted([a.user_id, user, c.user_id])
            await tab.close()
            got = await receive_until(a, lambda m: type(m) is LeaveDocument, timeout=3)
            assert [type(m) for m in got] == [JoinDocument, LeaveDocument]  # c, then user
            assert redis.command("EXISTS", f"{_prefix(s2)}:alive:inst1") == b":0\r\n"
            for c in (b, b_other):
                await c.close()


async def _closed(client: Client) -> int | None:
    await until(lambda: not client.connected)
    return client.close_code


def _prefix(server: object) -> str:
    args = server.proc.args  # type: ignore[attr-defined]
    return str(args[args.index("--redis-prefix") + 1])


async def test_redis_restart_heals_without_restarting_instances(own_redis: RedisServer) -> None:
    doc = new_id()
    servers = await spawn_instances(own_redis, 2)
    s1, s2 = servers
    try:
        async with (
            Client(s1.url, new_id()) as a,
            Client(s1.url, new_id()) as a2,
            Client(s2.url, new_id()) as b,
        ):
            await a.join(doc)
            await b.join(doc)
            await a.cursor(doc, 7, 7)
            await receive_until(b, lambda m: type(m) is CursorUpdate)
            await receive_until(a, lambda m: type(m) is JoinDocument)

            own_redis.stop()
            await asyncio.gather(wait_ready(s1, False), wait_ready(s2, False))
            # Local fan-out goes on while Redis is away.
            assert joins(await a2.join(doc)) == [a.user_id, b.user_id, a2.user_id]
            await a2.cursor(doc, 1, 2)
            got = await receive_until(a, lambda m: type(m) is CursorUpdate)
            assert [user_of(m) for m in got] == [a2.user_id, a2.user_id]

            own_redis.start()  # empty: everything Redis held is gone
            restarted = time.monotonic()
            await asyncio.gather(wait_ready(s1, True), wait_ready(s2, True))
            healed = time.monotonic() - restarted
            print(f"heal after Redis restart: {healed:.2f} s to /readyz 200 on both")
            # b learns who joined while Redis was away, with their presence.
            got = await receive_until(
                b, lambda m: type(m) is CursorUpdate and m.user_id == a2.user_id
            )
            assert [(type(m), user_of(m)) for m in got if not isinstance(m, CursorUpdate)] == [
                (JoinDocument, a2.user_id)
            ]
            # Presence re-appears in Redis: a newcomer sees everyone.
            async with Client(s2.url, new_id()) as c:
                snapshot = await c.join(doc)
                assert sorted(joins(snapshot)) == sorted(
                    [a.user_id, a2.user_id, b.user_id, c.user_id]
                )
                assert {m.user_id for m in snapshot if type(m) is CursorUpdate} == {
                    a.user_id,
                    a2.user_id,
                }
            # Messages flow across instances again.
            await b.cursor(doc, 3, 3)
            got = await receive_until(a, lambda m: type(m) is CursorUpdate)
            assert got[-1].user_id == b.user_id  # type: ignore[union-attr]
            assert await metric(s1.http, "cpc_backend_state_changes_total") >= 2
    finally:
        for server in servers:
            server.kill()
            server.proc.wait(5)


async def test_killed_listener_connection_is_noticed_and_healed(redis: RedisServer) -> None:
    doc = new_id()
    async with (
        instances(redis, 2) as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        if True:
            await a.join(doc)
            await b.join(doc)
            await a.receive(TIMEOUT)
            # Kill every pub/sub connection: the listeners must notice and recover.
            redis.command("CLIENT", "KILL", "TYPE", "pubsub")
            await until_metric(s1.http, "cpc_backend_failures_total", lambda n: n >= 1, 3 * TIMEOUT)
            await asyncio.gather(wait_ready(s1, True), wait_ready(s2, True))
            await b.cursor(doc, 2, 2)
            got = await receive_until(a, lambda m: type(m) is CursorUpdate)
            assert got[-1].user_id == b.user_id  # type: ignore[union-attr]
            assert not [m for m in got if type(m) in (JoinDocument, LeaveDocument)]


async def test_redis_missing_at_start_then_arriving(tmp_path: object) -> None:
    late = RedisServer()  # not started yet: nothing listens on its port
    servers = await spawn_instances(late, 1, check_ready=False)
    (s1,) = servers
    try:
        await wait_ready(s1, False)
        doc = new_id()
        async with Client(s1.url, new_id()) as a, Client(s1.url, new_id()) as b:
            await a.join(doc)  # served locally meanwhile
            await b.join(doc)
            await receive_until(a, lambda m: type(m) is JoinDocument)
            late.start()
            await wait_ready(s1, True)
            assert sorted(late.strings("ZRANGE", f"{_prefix(s1)}:doc:{doc}:users", "0", "-1")) == (
                sorted([a.user_id, b.user_id])
            )
            await b.cursor(doc, 1, 1)
            await receive_until(a, lambda m: type(m) is CursorUpdate)
        assert any("not ready" in line for line in s1.lines)
    finally:
        s1.kill()
        s1.proc.wait(5)
        late.close()


async def test_join_while_the_last_member_leaves_keeps_stored_messages(
    redis: RedisServer,
) -> None:
    async with instances(redis, 1) as (s1,):
        for _ in range(5):
            doc = new_id()
            async with Client(s1.url, new_id()) as a, Client(s1.url, new_id()) as b:
                await a.join(doc)
                await a.comment(doc, 1, 1, "kept")
                # b's join is claimed while a's leave is still on its way through Redis.
                leave = asyncio.ensure_future(a.leave(doc))
                snapshot = await b.join(doc)
                await leave
                # a may still be there (its leave sequenced after b's join) or not;
                # the comment must be in the snapshot either way.
                assert [type(m) for m in snapshot] in (
                    [Comment, JoinDocument],
                    [JoinDocument, Comment, JoinDocument],
                ), snapshot


async def test_flushall_is_noticed_and_state_is_rebuilt(redis: RedisServer) -> None:
    doc = new_id()
    async with (
        instances(redis, 2) as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await b.cursor(doc, 4, 4)
        await receive_until(a, lambda m: type(m) is CursorUpdate)
        prefix = _prefix(s1)
        redis.command("FLUSHALL")
        # Both notice (their liveness keys vanished) and re-register.
        for s in (s1, s2):
            await until_metric(s.http, "cpc_backend_failures_total", lambda n: n >= 1, 3 * TIMEOUT)
        await until(
            lambda: len(redis.strings("ZRANGE", f"{prefix}:doc:{doc}:users", "0", "-1")) >= 2,
            3 * TIMEOUT,
        )
        await asyncio.gather(wait_ready(s1, True), wait_ready(s2, True))
        async with Client(s1.url, new_id()) as c:
            snapshot = await c.join(doc)
            assert sorted(joins(snapshot)[:-1]) == sorted([a.user_id, b.user_id])
            assert [user_of(m) for m in snapshot if type(m) is CursorUpdate] == [b.user_id]
        await b.cursor(doc, 5, 5)
        got = await receive_until(a, lambda m: type(m) is CursorUpdate)
        # a saw c come and go, b's cursor; never b leaving.
        assert LeaveDocument(document_id=doc, user_id=b.user_id) not in got
        assert user_of(got[-1]) == b.user_id


async def test_a_stalled_instance_declared_dead_comes_back(redis: RedisServer) -> None:
    """Stopped past the instance timeout (SIGSTOP), an instance's users are announced
    gone; once it runs again it notices, restores them, and they are back for all."""
    doc = new_id()
    async with (
        instances(redis, 2) as (s1, s2),
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
        await receive_until(b, lambda m: m == JoinDocument(document_id=doc, user_id=a.user_id))
        await a.cursor(doc, 7, 7)
        got = await receive_until(b, lambda m: type(m) is CursorUpdate)
        assert user_of(got[-1]) == a.user_id


async def test_user_info_crosses_instances(redis: RedisServer) -> None:
    """A user's info (open mode: from its JoinDocument) reaches members on another
    instance, and the snapshots of later joiners wherever they are."""
    doc = new_id()
    info = {"color": "#f00", "name": "Ada"}
    async with (
        instances(redis, 3) as (s1, s2, s3),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        await b.join(doc)
        await a.send(JoinDocument(document_id=doc, user_id=a.user_id, info=info))
        snapshot = await receive_until(
            a, lambda m: type(m) is JoinDocument and m.user_id == a.user_id
        )
        assert snapshot == [
            JoinDocument(document_id=doc, user_id=b.user_id),
            JoinDocument(document_id=doc, user_id=a.user_id, info=info),  # the ack
        ]
        got = await receive_until(b, lambda m: type(m) is JoinDocument)
        assert got == [JoinDocument(document_id=doc, user_id=a.user_id, info=info)]
        for server in (s2, s3):  # s3 follows the document only now: it loads it
            async with Client(server.url, new_id()) as late:
                snapshot = await late.join(doc)
                announced = [m for m in snapshot if type(m) is JoinDocument][:-1]
                assert announced == [
                    JoinDocument(document_id=doc, user_id=b.user_id),
                    JoinDocument(document_id=doc, user_id=a.user_id, info=info),
                ]
