"""Past one Redis node: documents partitioned over three redis-servers."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from cpc_signaling.backends.redis import shard
from cpc_signaling.client import Client, ClientError
from cpc_signaling.protocol import CursorUpdate, JoinDocument, LeaveDocument

from ..helpers import TIMEOUT, metric, new_id, receive_until, running_server, until, until_metric
from .cluster import readyz, running, spawn_instances, wait_ready
from .server import RedisServer

NODES = 3


@contextlib.contextmanager
def nodes() -> Iterator[list[RedisServer]]:
    servers = [RedisServer() for _ in range(NODES)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="module")
def three() -> Iterator[list[RedisServer]]:
    with nodes() as servers:
        yield servers


@pytest.fixture
def own_three() -> Iterator[list[RedisServer]]:
    with nodes() as servers:
        yield servers


def url_of(servers: list[RedisServer]) -> str:
    return ",".join(server.url for server in servers)


def one_per_node() -> list[str]:
    """A document id for each node, in node order."""
    docs: dict[int, str] = {}
    while len(docs) < NODES:
        doc = new_id()
        docs.setdefault(shard(doc, NODES), doc)
    return [docs[n] for n in range(NODES)]


async def test_documents_on_three_nodes_are_one_service(three: list[RedisServer]) -> None:
    prefix = "s" + new_id()[:8]
    docs = one_per_node()
    async with (
        running(await spawn_instances(three[0], 2, prefix=prefix, url=url_of(three))) as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s2.url, new_id()) as b,
    ):
        for doc in docs:
            await a.join(doc)
            await b.join(doc)
            await receive_until(
                a, lambda m, doc=doc: type(m) is JoinDocument and m.document_id == doc
            )
            await b.cursor(doc, 4, 4)
            got = await receive_until(a, lambda m: type(m) is CursorUpdate)
            cursor = got[-1]
            assert isinstance(cursor, CursorUpdate)
            assert (cursor.document_id, cursor.user_id, cursor.position.line) == (doc, b.user_id, 4)
        # Each node holds its own documents' keys, and only those.
        for n, server in enumerate(three):
            for m, doc in enumerate(docs):
                held = server.command("EXISTS", f"{prefix}:doc:{doc}") == b":1\r\n"
                assert held == (n == m), (n, m)
        async with Client(s1.url, new_id()) as late:
            for doc in docs:
                snapshot = await late.join(doc)
                assert [m.user_id for m in snapshot if type(m) is JoinDocument] == [
                    a.user_id,
                    b.user_id,
                    late.user_id,
                ]
                assert [m.user_id for m in snapshot if type(m) is CursorUpdate] == [b.user_id]


async def test_kill_9_is_reaped_on_every_node(three: list[RedisServer]) -> None:
    prefix = "k" + new_id()[:8]
    docs = one_per_node()
    async with (
        running(await spawn_instances(three[0], 2, prefix=prefix, url=url_of(three))) as (s1, s2),
        Client(s1.url, new_id()) as a,
    ):
        b = Client(s2.url, new_id(), reconnect=False)
        await b.connect()
        for doc in docs:
            await a.join(doc)
            await b.join(doc)
        await receive_until(a, lambda m: type(m) is JoinDocument and m.document_id == docs[-1])
        killed = time.monotonic()
        os.kill(s2.proc.pid, signal.SIGKILL)
        left: set[str] = set()

        def all_left(message: object) -> bool:
            if type(message) is LeaveDocument:
                assert message.user_id == b.user_id
                left.add(message.document_id)
            return left == set(docs)

        await receive_until(a, all_left, timeout=4 * TIMEOUT)
        elapsed = time.monotonic() - killed
        assert elapsed < 1.2 + 0.3 + 1.5, elapsed  # timeout + interval (+ slack)
        assert await metric(s1.http, "cpc_backend_reaped_total") == NODES
        await b.close()


async def test_losing_one_node_degrades_only_its_documents(own_three: list[RedisServer]) -> None:
    prefix = "o" + new_id()[:8]
    docs = one_per_node()
    lost = 1  # the node of docs[1]
    servers = await spawn_instances(own_three[0], 2, prefix=prefix, url=url_of(own_three))
    async with (
        running(servers) as (s1, s2),
        Client(s1.url, new_id()) as a,
        Client(s1.url, new_id()) as a2,
        Client(s2.url, new_id()) as b,
    ):
        for doc in docs:
            for client in (a, a2, b):
                await client.join(doc)
        await receive_until(
            a,
            lambda m: (
                type(m) is JoinDocument and m.user_id == b.user_id and m.document_id == docs[-1]
            ),
        )
        own_three[lost].stop()
        for server in (s1, s2):
            await until_metric(
                server.http, "cpc_redis_nodes_up", lambda up: up == NODES - 1, 3 * TIMEOUT
            )
        for server in (s1, s2):
            assert await readyz(server) == 200  # still in rotation: a partial outage
        # The other nodes' documents flow across instances as before ...
        for doc in (docs[0], docs[2]):
            await b.cursor(doc, 7, 7)
            got = await receive_until(a, lambda m: type(m) is CursorUpdate)
            assert (got[-1].document_id, got[-1].user_id) == (doc, b.user_id)  # type: ignore[union-attr]
        # ... and the lost node's are served locally: a2 still hears a.
        await a.cursor(docs[lost], 1, 1)
        got = await receive_until(
            a2, lambda m: type(m) is CursorUpdate and m.document_id == docs[lost]
        )
        assert got[-1].user_id == a.user_id  # type: ignore[union-attr]
        own_three[lost].start()  # empty: what it held is gone
        for server in (s1, s2):
            await until_metric(
                server.http, "cpc_redis_nodes_up", lambda up: up == NODES, 3 * TIMEOUT
            )
        await b.cursor(docs[lost], 9, 9)
        got = await receive_until(
            a, lambda m: type(m) is CursorUpdate and m.document_id == docs[lost]
        )
        assert got[-1].user_id == b.user_id  # type: ignore[union-attr]
        assert not [m for m in got if type(m) is LeaveDocument]
        for server in (s1, s2):
            await wait_ready(server, True)


async def test_orders_reach_every_instance_while_a_node_is_down(
    own_three: list[RedisServer],
) -> None:
    """Disconnect orders go through every node that is up: one down does not stop them."""
    options = {"redis_url": url_of(own_three), "redis_prefix": "c" + new_id()[:8]}
    async with running_server(**options) as a, running_server(**options) as b:
        own_three[0].stop()
        await until(
            lambda: b.service.backend.stats()["redis_nodes_up"][1] == NODES - 1, 3 * TIMEOUT
        )
        async with b.client(reconnect=False) as victim:
            await victim.join(new_id())
            assert await a.service.disconnect(victim.user_id) == 0
            with pytest.raises(ClientError):
                while True:
                    await victim.receive(TIMEOUT)
            assert victim.close_code == 1008
