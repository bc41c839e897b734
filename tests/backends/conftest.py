"""The conformance harness: the same tests against the memory and the Redis roles."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cpc_signaling.backends import (
    Broker,
    MemoryBroker,
    MemoryBus,
    MemoryPresenceStore,
    PresenceStore,
)
from cpc_signaling.core import Event

from ..helpers import TIMEOUT, new_id
from ..redis.server import RedisServer, redis_server


@dataclass
class Inbox:
    """What one broker delivered: (document, seq, origin, event), in arrival order."""

    items: list[tuple[str, int, str, Event]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, doc: str, seq: int, origin: str, event: Event) -> None:
        self.items.append((doc, seq, origin, event))
        self.changed.set()

    async def wait_for(self, count: int) -> list[tuple[str, int, str, Event]]:
        async with asyncio.timeout(TIMEOUT):
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.items


class Harness:
    """Makes stores and brokers of one kind that share one backing "Redis"."""

    kind: str

    async def store(
        self, instance_id: str = "i1", *, max_members: int = 1000, max_stored: int = 1000
    ) -> PresenceStore:
        raise NotImplementedError

    async def broker(self, inbox: Inbox, instance_id: str = "i1") -> Broker:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class MemoryHarness(Harness):
    kind = "memory"

    def __init__(self) -> None:
        self.bus = MemoryBus()
        self.stores: dict[tuple[int, int], MemoryPresenceStore] = {}

    async def store(
        self, instance_id: str = "i1", *, max_members: int = 1000, max_stored: int = 1000
    ) -> PresenceStore:
        # One canonical state per limits (as one Redis is for every instance).
        key = (max_members, max_stored)
        if key not in self.stores:
            self.stores[key] = MemoryPresenceStore(
                self.bus, instance_id=instance_id, max_members=max_members, max_stored=max_stored
            )
        return self.stores[key]

    async def broker(self, inbox: Inbox, instance_id: str = "i1") -> Broker:
        return MemoryBroker(self.bus, inbox)


class RedisHarness(Harness):
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        from cpc_signaling.backends.redis import _client

        self.server = server
        self.prefix = "t" + new_id()[:8]
        self._client = _client
        self.clients: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.brokers: list[Any] = []

    async def store(
        self, instance_id: str = "i1", *, max_members: int = 1000, max_stored: int = 1000
    ) -> PresenceStore:
        from cpc_signaling.backends.redis import RedisPresenceStore

        client = self._client(self.server.url)
        self.clients.append(client)
        return RedisPresenceStore(
            client,
            prefix=self.prefix,
            instance_id=instance_id,
            max_members=max_members,
            max_stored=max_stored,
        )

    async def broker(self, inbox: Inbox, instance_id: str = "i1") -> Broker:
        from cpc_signaling.backends.redis import RedisBroker

        client = self._client(self.server.url)
        self.clients.append(client)
        broker = RedisBroker(client, prefix=self.prefix, instance_id=instance_id, deliver=inbox)
        await broker.open()
        self.brokers.append(broker)
        self.tasks.append(asyncio.create_task(broker.listen()))
        return broker

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for broker in self.brokers:
            await broker.close()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()


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
