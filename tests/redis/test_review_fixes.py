"""Regression tests for the Redis backend review (reloads, attach/detach, overload)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cpc_signaling.backends import BackendStartError
from cpc_signaling.backends.redis import RedisBackend, RedisOptions
from cpc_signaling.backends.redis.node import Mode, Node, _Lost
from cpc_signaling.client import Client
from cpc_signaling.core import Hub
from cpc_signaling.protocol import Comment, Error, ErrorCode, JoinDocument, LeaveDocument

from ..helpers import TIMEOUT, new_id, receive_until, running_server, until
from .cluster import followers
from .server import RedisServer


def _node(backend: object) -> Node:
    """The (one) Redis node of a service's backend."""
    assert isinstance(backend, RedisBackend)
    (node,) = backend.nodes
    return node


def _skip_a_seq(redis: RedisServer, prefix: str, doc: str) -> None:
    """Make the next envelope of ``doc`` look like one was lost: a sequence gap."""
    redis.command("INCR", f"{prefix}:doc:{doc}:seq")


async def _applied(hub: Hub[Any], doc: str, seq: int) -> None:
    await until(lambda: (state := hub.documents.get(doc)) is not None and state.seq >= seq)


async def test_own_join_and_leave_skipped_by_a_reload_still_get_their_local_side(
    redis: RedisServer,
) -> None:
    prefix = "r" + new_id()[:8]
    doc = new_id()
    async with running_server(redis_url=redis.url, redis_prefix=prefix) as running:
        hub = running.service.hub
        async with Client(running.url, new_id()) as a, Client(running.url, new_id()) as b:
            await a.join(doc)
            await a.comment(doc, 1, 1, "before")
            await _applied(running.service.hub, doc, 2)  # a's join and comment came back
            # b's Joined arrives after a gap: the reload's state already holds it.
            _skip_a_seq(redis, prefix, doc)
            snapshot = await b.join(doc, timeout=TIMEOUT)
            users = [m.user_id for m in snapshot if type(m) is JoinDocument]
            assert users == [a.user_id, b.user_id]  # a, then b's own acknowledgement
            assert [m.content for m in snapshot if type(m) is Comment] == ["before"]
            assert len(hub.local_members[doc]) == 2
            # Live after the cut, exactly once.
            await a.comment(doc, 1, 1, "after")
            got = await receive_until(b, lambda m: type(m) is Comment)
            assert [m.content for m in got if type(m) is Comment] == ["after"]

            # b's Left arrives after a gap: b still gets its ack and is no member.
            _skip_a_seq(redis, prefix, doc)
            await b.leave(doc, timeout=TIMEOUT)
            got = await receive_until(
                a, lambda m: type(m) is LeaveDocument and m.user_id == b.user_id
            )
            assert len(hub.local_members[doc]) == 1


async def test_attach_attach_detach_detach_leaves_no_subscription(redis: RedisServer) -> None:
    prefix = "a" + new_id()[:8]
    options = RedisOptions.from_urls(redis.url, "att" + new_id()[:6], prefix=prefix)
    backend = RedisBackend(options)
    await backend.start(lambda doc, event, own, decided: None)
    try:
        assert backend.ready
        doc = new_id()
        assert await backend.attach(doc) is not None
        await backend.attach(doc)
        assert followers(redis, prefix, doc) == [options.instance_id]
        await backend.detach(doc)
        await backend.detach(doc)
        assert _node(backend).docs == {}
        assert followers(redis, prefix, doc) == []
    finally:
        await backend.close()


@pytest.mark.parametrize("linger", [0.0, 30.0])
async def test_join_racing_the_last_leave_reattaches_after_the_detach(
    redis: RedisServer, linger: float
) -> None:
    prefix = "d" + new_id()[:8]
    async with running_server(
        redis_url=redis.url, redis_prefix=prefix, redis_linger=linger
    ) as running:
        service = running.service
        backend = service.backend
        assert isinstance(backend, RedisBackend)
        detach = backend.detach

        async def slow_detach(document_id: str) -> None:
            await asyncio.sleep(0.1)  # widen the window a join can fall into
            await detach(document_id)

        backend.detach = slow_detach  # type: ignore[method-assign]
        async with Client(running.url, new_id()) as a, Client(running.url, new_id()) as b:
            for _ in range(3):
                doc = new_id()
                await a.join(doc)
                await a.comment(doc, 1, 1, "kept")
                await _applied(service.hub, doc, 2)
                await a.leave(doc)
                snapshot = await b.join(doc)  # while a's leave detaches the document
                assert [m.content for m in snapshot if type(m) is Comment] == ["kept"]
                await b.leave(doc)
            node = _node(backend)
            following = service.following
            await until(
                lambda: (
                    not service.hub.local_members
                    and not following.detaching
                    and all(d.lingering is not None for d in node.docs.values())
                )
            )
            if linger:  # still followed, for a quick join again; the hub let go
                assert len(node.docs) == 3
                assert not service.hub.documents
            else:
                assert not node.docs
                assert redis.strings("KEYS", f"{prefix}:follows:*") == []


async def test_overload_refuses_with_connection_error_never_drops_silently(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpc_signaling.backends.redis import node as redis_node

    monkeypatch.setattr(redis_node, "MAX_PENDING", 2)
    doc = new_id()
    prefix = "o" + new_id()[:8]
    async with (
        running_server(redis_url=redis.url, redis_prefix=prefix) as running,
        Client(running.url, new_id()) as a,
        Client(running.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        # Redis stalls: the writer's batch waits, the queue fills up.
        stall = asyncio.ensure_future(asyncio.to_thread(redis.command, "DEBUG", "SLEEP", "0.5"))
        await asyncio.sleep(0.1)
        for n in range(6):
            await a.comment(doc, 1, 1, f"c{n}")
        await stall
        errors = await receive_until(
            a, lambda m: type(m) is Error and m.code == ErrorCode.CONNECTION_ERROR
        )
        error = errors[-1]
        assert type(error) is Error and "overloaded" in error.message
        # Every comment b gets is one a was not told about; the last one marks the end.
        await a.comment(doc, 1, 1, "last")
        got = await receive_until(b, lambda m: type(m) is Comment and m.content == "last")
        delivered = [m.content for m in got if type(m) is Comment][:-1]
        refused = running.service.metrics.registry.get_sample_value(
            "cpc_backend_refused_total", {"kind": "Comment"}
        )
        assert refused is not None and refused >= 1
        assert len(delivered) + refused == 6
        assert delivered == [f"c{n}" for n in range(len(delivered))]


async def test_drain_while_restoring_still_delivers_leaves_and_retires(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold, held, gate = False, asyncio.Event(), asyncio.Event()
    sync = Node._sync_memberships

    async def slow_sync(self: Node, *args: Any) -> Any:
        if hold:
            held.set()
            await gate.wait()
        return await sync(self, *args)

    monkeypatch.setattr(Node, "_sync_memberships", slow_sync)
    prefix, doc = "s" + new_id()[:8], new_id()
    gone = "gone" + new_id()[:6]
    async with (
        running_server(redis_url=redis.url, redis_prefix=prefix) as stays,
        running_server(redis_url=redis.url, redis_prefix=prefix, instance_id=gone) as goes,
        Client(stays.url, new_id()) as a,
        Client(goes.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await receive_until(a, lambda m: type(m) is JoinDocument and m.user_id == b.user_id)
        node = _node(goes.service.backend)
        hold = True
        node.trouble(_Lost("a test outage"))
        await asyncio.wait_for(held.wait(), TIMEOUT)
        assert node.mode is Mode.RESTORING
        # SIGTERM now: the restore finishes meanwhile, and the leaves still go out.
        asyncio.get_running_loop().call_later(0.2, gate.set)
        await goes.service.drain()
        await goes.service.close()
        await receive_until(
            a, lambda m: type(m) is LeaveDocument and m.user_id == b.user_id, timeout=2.0
        )
        assert redis.command("EXISTS", f"{prefix}:alive:{gone}") == b":0\r\n"  # retired


async def test_events_redis_ran_before_a_failure_are_not_applied_twice(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks after Redis ran a flush but before its reply was read:
    the flush's events are applied here (locally), and the restore does not commit
    its comment a second time."""
    doc = new_id()
    async with (
        running_server(redis_url=redis.url, redis_prefix="e" + new_id()[:8]) as running,
        Client(running.url, new_id()) as a,
        Client(running.url, new_id()) as b,
    ):
        node = _node(running.service.backend)
        await a.join(doc)
        await b.join(doc)
        answered = Node._answered_flush
        lost = False

        def lose_the_reply(self: Node, flush: Any, reply: Any) -> None:
            nonlocal lost
            if lost or not any(
                type(e).__name__ == "Relayed" for g in flush.groups.values() for e in g
            ):
                return answered(self, flush, reply)
            lost = True  # Redis ran it; the reply is lost with the connection
            assert self.conn is not None
            self.conn.close()

        monkeypatch.setattr(Node, "_answered_flush", lose_the_reply)
        await a.comment(doc, 1, 1, "once")
        await until(lambda: lost and node.ready)
        await a.comment(doc, 1, 1, "end")
        got = await receive_until(b, lambda m: type(m) is Comment and m.content == "end")
        assert [m.content for m in got if type(m) is Comment] == ["once", "end"]
        async with Client(running.url, new_id()) as c:
            assert [m.content for m in await c.join(doc) if type(m) is Comment] == ["once", "end"]


async def test_an_instance_id_in_use_is_refused_and_a_crashed_ones_is_reclaimed(
    redis: RedisServer,
) -> None:
    same = "same" + new_id()[:6]
    options = RedisOptions.from_urls(
        redis.url,
        same,
        prefix="i" + new_id()[:8],
        instance_timeout=0.6,
        heartbeat_interval=0.2,
    )

    def ignore(*args: object) -> None:
        return None

    first = RedisBackend(options)
    await first.start(ignore)
    try:
        assert first.ready
        second = RedisBackend(options)
        with pytest.raises(BackendStartError, match="in use"):
            await second.start(ignore)
        assert _node(second)._supervisor is None  # never served
    finally:
        # A crash: no retire, the registration is left to expire.
        node = _node(first)
        assert node._supervisor is not None
        node._supervisor.cancel()
        await asyncio.gather(node._supervisor, return_exceptions=True)
        node._disconnect()
    restarted = RedisBackend(options)
    await restarted.start(ignore)
    try:
        await until(lambda: restarted.ready)
    finally:
        await restarted.close()


async def test_stored_messages_of_an_outage_reach_everyone_once_after_restore(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold, held, gate = False, asyncio.Event(), asyncio.Event()
    connect = Node._connect

    async def slow_connect(self: Node) -> None:
        if hold and self.instance_id.startswith("out"):
            held.set()
            await gate.wait()
        await connect(self)

    monkeypatch.setattr(Node, "_connect", slow_connect)
    prefix, doc = "m" + new_id()[:8], new_id()
    async with (
        running_server(
            redis_url=redis.url, redis_prefix=prefix, instance_id="out" + new_id()[:6]
        ) as out,
        running_server(redis_url=redis.url, redis_prefix=prefix) as up,
        Client(out.url, new_id()) as a,
        Client(out.url, new_id()) as c,
        Client(up.url, new_id()) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await a.comment(doc, 1, 1, "before")
        await receive_until(b, lambda m: type(m) is Comment)
        hold = True
        _node(out.service.backend).trouble(_Lost("a test outage"))
        await asyncio.wait_for(held.wait(), TIMEOUT)  # out is down, and stays down
        await b.comment(doc, 1, 1, "remote")  # out's members miss it for now
        await a.comment(doc, 1, 1, "local")  # sequenced on out only
        snapshot = await c.join(doc)  # a join during the outage: out's replica
        assert [m.content for m in snapshot if type(m) is Comment] == ["before", "local"]
        gate.set()
        got_b = await receive_until(b, lambda m: type(m) is Comment and m.content == "local")
        assert [m.content for m in got_b if type(m) is Comment] == ["local"]
        await b.comment(doc, 1, 1, "end")
        for client in (a, c):
            got = await receive_until(client, lambda m: type(m) is Comment and m.content == "end")
            assert [m.content for m in got if type(m) is Comment] == ["remote", "end"]
