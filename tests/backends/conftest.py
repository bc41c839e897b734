"""The conformance harness: the same tests against the memory and the Redis store."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from cpc_signaling.backends import MemoryBus, MemoryStore, Store
from cpc_signaling.core import Event

from ..helpers import TIMEOUT, new_id
from ..redis.server import RedisServer, redis_server

Delivered = tuple[str, int, str, Event, int]
"""(document, seq, origin, event, decided), one per event."""


@dataclass
class Inbox:
    """What one instance was delivered, one item per event, in arrival order."""

    items: list[Delivered] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(
        self, doc: str, first: int, origin: str, events: Sequence[Event], decided: Sequence[int]
    ) -> None:
        for n, (event, outcome) in enumerate(zip(events, decided, strict=True)):
            self.items.append((doc, first + n, origin, event, outcome))
        self.changed.set()

    async def wait_for(self, count: int) -> list[Delivered]:
        async with asyncio.timeout(TIMEOUT):
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.items


class Harness:
    """Makes stores of one kind that share one backing "Redis"; each store is one
    instance's view, delivering other instances' events of followed documents to
    its inbox."""

    kind: str

    async def store(
        self,
        instance_id: str = "i1",
        *,
        max_members: int = 1000,
        max_stored: int = 1000,
        max_stored_bytes: int = 1 << 30,
        inbox: Inbox | None = None,
    ) -> Store:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class MemoryHarness(Harness):
    kind = "memory"

    def __init__(self) -> None:
        self.bus = MemoryBus()

    async def store(
        self,
        instance_id: str = "i1",
        *,
        max_members: int = 1000,
        max_stored: int = 1000,
        max_stored_bytes: int = 1 << 30,
        inbox: Inbox | None = None,
    ) -> Store:
        store = MemoryStore(
            self.bus,
            instance_id=instance_id,
            max_members=max_members,
            max_stored=max_stored,
            max_stored_bytes=max_stored_bytes,
        )
        if inbox is not None:
            store.subscribe(inbox)
        return store


class RedisHarness(Harness):
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.prefix = "t" + new_id()[:8]
        self.conns: list[object] = []

    async def store(
        self,
        instance_id: str = "i1",
        *,
        max_members: int = 1000,
        max_stored: int = 1000,
        max_stored_bytes: int = 1 << 30,
        inbox: Inbox | None = None,
    ) -> Store:
        from cpc_signaling.backends.redis.options import NodeAddress
        from cpc_signaling.backends.redis.resp import Connection
        from cpc_signaling.backends.redis.store import Limits, RedisStore
        from cpc_signaling.backends.redis.wire import Channels, decode_batch

        channels = Channels(self.prefix, 0)

        def on_message(channel: bytes, data: bytes) -> None:
            if inbox is not None:
                batch = decode_batch(data)
                for block in batch.blocks:
                    inbox(block.doc, block.first, batch.origin, block.events, block.decided)

        conn = await Connection.open(
            NodeAddress.parse(self.server.url), name="conformance", on_message=on_message
        )
        self.conns.append(conn)
        store = RedisStore(
            conn,
            prefix=self.prefix,
            channels=channels,
            instance_id=instance_id,
            limits=Limits(
                max_members=max_members, max_stored=max_stored, max_bytes=max_stored_bytes
            ),
        )
        await store.load_scripts()
        registered, _, _ = await store.register(secrets.token_hex(8), "", 60.0)
        assert registered
        if inbox is not None:
            await conn.subscribe(channels.inbox(instance_id))
        return store

    async def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def redis_for_conformance() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def harness(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Harness]:
    made: Harness
    if request.param == "memory":
        made = MemoryHarness()
    else:
        made = RedisHarness(request.getfixturevalue("redis_for_conformance"))
    try:
        yield made
    finally:
        await made.close()
