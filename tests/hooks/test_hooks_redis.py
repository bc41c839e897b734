"""Events out over Redis: each event reaches the application once per service, not once
per instance (the instance where it happened sends it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cpc_signaling.client import Client
from cpc_signaling.protocol import Annotation, Comment, JoinDocument, LeaveDocument, Position

from ..helpers import (
    TIMEOUT,
    UNIT,
    RunningServer,
    new_id,
    receive_until,
    running_asgi_server,
    running_server,
    spawn_server,
)
from ..redis.server import RedisServer, redis_server
from .receiver import Receiver, receiving


def batches(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.requests]


def events(receiver: Receiver) -> list[dict[str, Any]]:
    return [e for b in batches(receiver) for e in b["events"]]


async def until_events(receiver: Receiver, count: int, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while len(events(receiver)) < count:
            await receiver.wait_for(len(receiver.requests) + 1, timeout)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A private redis-server on a free port for this module."""
    with redis_server() as server:
        yield server


@contextlib.asynccontextmanager
async def two_instances(
    redis: RedisServer, hook: Receiver
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Instance A (aiohttp) and B (ASGI), one service over a private Redis, one webhook."""
    options = {
        "redis_url": redis.url,
        "redis_prefix": f"h{new_id()[:8]}",
        "event_webhook": hook.url,
    }
    async with running_server(**options) as a, running_asgi_server(**options) as b:
        assert a.service.ready and b.service.ready
        yield a, b


def total(servers: tuple[RunningServer, ...], name: str, **labels: str) -> float:
    return sum(s.service.metrics.registry.get_sample_value(name, labels) or 0.0 for s in servers)


async def test_each_event_is_sent_once_by_the_instance_where_it_happened(
    redis: RedisServer,
) -> None:
    doc, quiet_doc = new_id(), new_id()
    alice, bob = new_id(), new_id()
    async with receiving() as hook, two_instances(redis, hook) as (a, b):
        async with (
            Client(a.url, alice, reconnect=False) as alice_a,
            Client(b.url, bob, reconnect=False) as bob_b,
            Client(a.url, bob, reconnect=False) as bob_a,  # bob's second tab, on A
        ):
            await alice_a.join(doc)
            await bob_b.join(doc)
            await bob_a.join(doc)
            await alice_a.comment(doc, 1, 0, "from A")
            await bob_b.annotate(doc, 2, 0, "from B")
            await receive_until(alice_a, lambda m: isinstance(m, Annotation))
            # Published through B's API into a document nobody follows.
            b.service.publish(
                Comment(
                    document_id=quiet_doc,
                    user_id=new_id(),
                    position=Position(line=0, column=0),
                    content="from B's API",
                    timestamp="2026-12-01T10:00:00Z",
                )
            )
            await bob_a.leave(doc)  # bob is still present through B: no event
            await bob_b.leave(doc)  # bob's last connection: one leave, from B
            got = await receive_until(alice_a, lambda m: isinstance(m, LeaveDocument))
            assert got[-1] == LeaveDocument(document_id=doc, user_id=bob)
            await alice_a.leave(doc)
        await until_events(hook, 7)
        for server in (a, b):  # everything queued was delivered
            assert server.service.hooks.events is not None
            assert len(server.service.hooks.events) == 0
        # Both instances applied every event of `doc` (each had a member there), yet the
        # queues of both together took each event once.
        assert total((a, b), "cpc_hook_events_total", type="join") == 2
        assert total((a, b), "cpc_hook_events_total", type="leave") == 2
        assert total((a, b), "cpc_hook_events_total", type="comment") == 2
        assert total((a, b), "cpc_hook_events_total", type="annotation") == 1
        sent_by = {
            (e["type"], e["user_id"], e.get("message", {}).get("Comment", {}).get("content")): (
                batch["instance_id"]
            )
            for batch in batches(hook)
            for e in batch["events"]
        }
    ids = [e["id"] for e in events(hook)]
    assert len(ids) == len(set(ids)) == 7
    a_id, b_id = a.service.instance_id, b.service.instance_id
    assert sent_by[("join", alice, None)] == a_id
    assert sent_by[("join", bob, None)] == b_id
    assert sent_by[("comment", alice, "from A")] == a_id
    assert sent_by[("leave", bob, None)] == b_id
    assert sent_by[("leave", alice, None)] == a_id
    assert [v for k, v in sent_by.items() if k[2] == "from B's API"] == [b_id]


async def test_the_users_of_a_dead_instance_leave_once(redis: RedisServer) -> None:
    """An instance killed without warning: the instance that reaps its memberships sends
    the leaves, once."""
    doc, alone = new_id(), new_id()  # alone: only the victim is there
    prefix = f"h{new_id()[:8]}"
    async with receiving() as hook:
        flags = [
            *("--redis-url", redis.url, "--redis-prefix", prefix, "--event-webhook", hook.url),
            *("--heartbeat-interval", "0.5", "--instance-timeout", "2"),
        ]
        doomed = await spawn_server(flags)
        survivor = await spawn_server(flags)
        try:
            async with (
                Client(survivor.url, new_id(), reconnect=False) as watcher,
                Client(doomed.url, new_id(), reconnect=False) as victim,
            ):
                await watcher.join(doc)
                await victim.join(doc)
                await victim.join(alone)
                await receive_until(watcher, lambda m: isinstance(m, JoinDocument))
                await until_events(hook, 3)
                doomed.signal(signal.SIGKILL)
                got = await receive_until(
                    watcher, lambda m: isinstance(m, LeaveDocument), 15 * UNIT
                )
                assert got[-1] == LeaveDocument(document_id=doc, user_id=victim.user_id)
                await until_events(hook, 5, 15 * UNIT)
            await until_events(hook, 6, 15 * UNIT)  # the watcher's own leave
        finally:
            doomed.kill()
            await asyncio.to_thread(survivor.stop)  # the receiver answers meanwhile
    leaves = sorted((e["document_id"], e["user_id"]) for e in events(hook) if e["type"] == "leave")
    assert leaves == sorted(
        [(doc, victim.user_id), (alone, victim.user_id), (doc, watcher.user_id)]
    )
