"""Bounded in Redis: history budgets, no reload amplification, paged reads, the
eviction policy."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cpc_signaling.backends.redis.options import NodeAddress
from cpc_signaling.backends.redis.resp import Connection
from cpc_signaling.backends.redis.store import PAGE_BYTES, Limits, RedisStore
from cpc_signaling.backends.redis.wire import Channels
from cpc_signaling.client import Client
from cpc_signaling.core import DocumentState, Joined, Relayed
from cpc_signaling.protocol import Comment, Position, encode

from ..helpers import new_id, spawn_server
from .cluster import instances, running, spawn_instances
from .server import RedisServer, redis_server

TS = "2026-01-01T00:00:00Z"


def comment(doc: str, user: str, n: int, size: int) -> bytes:
    content = f"{n:05d}" + "x" * (size - 5)
    return encode(
        Comment(
            document_id=doc, user_id=user, position=Position(line=n, column=0), content=content,
            timestamp=TS,
        )
    )  # fmt: skip


async def test_repeated_joins_cost_redis_output_for_their_frames_not_the_history(
    redis: RedisServer,
) -> None:
    """A 3 MB history, then 20 join/leave cycles on one instance: each first local
    join used to load the whole history from Redis (60 MB of output); now the
    document stays followed a while after its last member left, and the cycles cost
    Redis output in proportion to their own few frames."""
    doc = new_id()
    async with (
        instances(redis, 1, "--rate-limit", "0", "--stored-rate-limit", "0") as (s1,),
        Client(s1.url, new_id()) as author,
    ):
        await author.join(doc)
        for n in range(300):
            await author.comment(doc, n, 0, f"{n:05d}" + "x" * 9_995)
        await author.leave(doc)  # the document has no member left here
        before = redis.info("total_net_output_bytes")
        for _ in range(20):
            async with Client(s1.url, new_id()) as visitor:
                snapshot = await visitor.join(doc)
                assert len([m for m in snapshot if type(m) is Comment]) == 300
                await visitor.leave(doc)
        spent = redis.info("total_net_output_bytes") - before
        print(f"20 join/leave cycles on a 3 MB document: {spent:,} bytes of Redis output")
        assert spent < 200_000, spent


@pytest.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisStore]:
    prefix = "b" + new_id()[:8]
    conn = await Connection.open(NodeAddress.parse(redis.url), name="test")
    made = RedisStore(
        conn,
        prefix=prefix,
        channels=Channels(prefix, 0),
        instance_id="i1",
        limits=Limits(max_stored=10_000, max_bytes=2 << 20),
    )
    await made.load_scripts()
    await made.register(secrets.token_hex(8), "", 60.0)
    try:
        yield made
    finally:
        conn.close()


async def test_a_large_history_is_read_a_page_at_a_time(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOAD and ATTACH answer at most about a page of stored messages; the rest is
    read a page per call, and the state is the reference state."""
    doc, user = new_id(), new_id()
    frames = [comment(doc, user, n, 4_000) for n in range(600)]  # 2.4 MB: over the 2 MB budget
    await store.commit([(doc, Relayed("", user, "Comment", f)) for f in frames])
    reference = DocumentState(doc, max_stored=10_000, max_stored_bytes=2 << 20)
    for f in frames:
        reference.apply(Relayed("", user, "Comment", f), max_members=1000)
    replies: list[int] = []
    call = RedisStore.call

    async def measured(self: RedisStore, name: str, *args: Any) -> Any:
        reply = await call(self, name, *args)
        if name in ("load", "stored"):
            replies.append(sum(len(x) for x in reply if isinstance(x, bytes)))
            replies[-1] += sum(len(x) for x in (reply[5] if name == "load" else ()))
        return reply

    monkeypatch.setattr(RedisStore, "call", measured)
    state = await store.load(doc)
    assert list(state.stored) == list(reference.stored)
    assert len(replies) > 8
    assert max(replies) <= PAGE_BYTES + 4_200, replies


async def test_messages_dropped_while_paging_are_dropped_from_the_state_too(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two pages other events push the oldest messages out of the budget: the
    state holds what Redis keeps from the oldest still there, nothing older."""
    doc, user = new_id(), new_id()
    frames = [comment(doc, user, n, 4_000) for n in range(300)]
    await store.commit([(doc, Joined("i1/1", user))])
    await store.commit([(doc, Relayed("i1/1", user, "Comment", f)) for f in frames])
    later = [comment(doc, user, 1000 + n, 4_000) for n in range(300)]
    call = RedisStore.call
    pushed = False

    async def interleaved(self: RedisStore, name: str, *args: Any) -> Any:
        nonlocal pushed
        if name == "stored" and not pushed:
            pushed = True  # 1.2 MB more: past the first page, the oldest go
            await self.commit([(doc, Relayed("i1/1", user, "Comment", f)) for f in later])
        return await call(self, name, *args)

    monkeypatch.setattr(RedisStore, "call", interleaved)
    loaded = await store.attach(doc)
    assert loaded is not None and pushed
    kept = list(loaded.state.stored)
    assert 0 < loaded.head < len(frames)  # the oldest still kept when the rest was read ...
    assert kept == frames[loaded.head :]  # ... and everything after it, up to the cut


async def test_an_evicting_redis_is_warned_about_and_refused_when_strict() -> None:
    with redis_server("--maxmemory-policy", "allkeys-lru") as evicting:
        (s1,) = await spawn_instances(evicting, 1)
        async with running([s1]):
            assert any("maxmemory-policy is allkeys-lru" in line for line in s1.lines)
        with pytest.raises(RuntimeError, match="noeviction"):
            await spawn_server(
                ["--redis-url", evicting.url, "--redis-strict", "--instance-id", "strict"]
            )


async def test_a_redis_that_forbids_config_is_warned_about() -> None:
    with redis_server("--rename-command", "CONFIG", "") as managed:
        (s1,) = await spawn_instances(managed, 1)
        async with running([s1]):
            await asyncio.sleep(0)
            assert any("could not check maxmemory-policy" in line for line in s1.lines)


async def test_memberships_are_read_a_page_at_a_time(store: RedisStore) -> None:
    """A restore diffs this instance's memberships with what it holds: read with
    SSCAN, a page per call, however many there are."""
    user = new_id()
    joins = [(new_id(), Joined(f"i1/{n}", user)) for n in range(2_500)]
    for start in range(0, len(joins), 500):
        await store.commit(joins[start : start + 500])
    members = await store.members("inst")
    assert members == {f"{doc} {event.conn}" for doc, event in joins}
