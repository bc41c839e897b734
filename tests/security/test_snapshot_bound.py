"""A join snapshot is no way around the slow-reader bound.

A joiner that never reads costs the server at most ``--outbox-max-bytes`` plus
its socket buffers, however large the document: the snapshot is written as the
socket drains, from references to the document's own frames. A reader that
reads receives every snapshot, however large, on both transports. Measured on
real processes (RSS from ``/proc``) and real sockets.
``CPC_SECURITY_REPORT=1`` prints the figures.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from cpc_signaling.protocol import Comment, JoinDocument, Position

from ..conftest import ServerFactory
from ..helpers import (
    TIMEOUT,
    ServerProcess,
    new_id,
    receive_until,
    spawn_asgi_server,
    spawn_server,
)
from .support import TS, RawWebSocket, fill_over_http, frame, rss_kib

REPORT = os.environ.get("CPC_SECURITY_REPORT") == "1"
API_KEY = "k" * 40
STALLED = 10


@pytest.mark.parametrize("spawn", [spawn_server, spawn_asgi_server], ids=["aiohttp", "asgi"])
async def test_stalled_joiners_of_a_large_document_cost_little_memory(spawn: object) -> None:
    env = {"CPC_API_KEY": API_KEY}
    server: ServerProcess = await spawn([], env)  # type: ignore[operator]
    raws: list[RawWebSocket] = []
    try:
        doc = new_id()
        await fill_over_http(server.http, API_KEY, doc, 350, 10_000)  # a 3.5 MB document
        pid = server.proc.pid
        before = rss_kib(pid)
        for _ in range(STALLED):
            raw = await RawWebSocket.connect(server.url)  # never reads
            await raw.send_text(frame("JoinDocument", document_id=doc, user_id=new_id()))
            raws.append(raw)
        # Every joiner's snapshot has been written as far as its socket takes it.
        await asyncio.sleep(1.0)
        after = rss_kib(pid)
        growth_mib = (after - before) / 1024
        if REPORT:
            print(
                f"\n[security figures] {STALLED} stalled joiners of a 3.5 MB document: "
                f"RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with them "
                f"(+{growth_mib:.1f} MiB)"
            )
        # Holding each joiner's snapshot cost 35 MB here before snapshots were streamed.
        assert growth_mib < 8, (before, after)
        assert server.proc.poll() is None
    finally:
        for raw in raws:
            raw.close()
        server.stop()


def publish(service: object, doc: str, n: int, size: int) -> None:
    for i in range(n):
        service.publish(  # type: ignore[attr-defined]
            Comment(
                document_id=doc,
                user_id=new_id(),
                position=Position(line=i, column=0),
                content="c" * size,
                timestamp=TS,
            )
        )


async def test_a_reader_receives_a_snapshot_larger_than_its_outbox_bound(
    server_factory: ServerFactory,
) -> None:
    bound = 256 * 1024
    async with server_factory(outbox_max_bytes=bound) as srv:
        doc = new_id()
        publish(srv.service, doc, 120, 9000)  # 1.1 MB of comments: four times the bound
        async with srv.client() as reader:
            snapshot = await reader.join(doc)
            assert len(snapshot) == 121
            assert all(isinstance(m, Comment) for m in snapshot[:-1])
            assert [m.position.line for m in snapshot[:-1]] == list(range(120))  # type: ignore[union-attr]
            assert snapshot[-1] == JoinDocument(document_id=doc, user_id=reader.user_id)
        assert srv.service.metrics.closes.labels("slow_reader")._value.get() == 0


async def test_what_happens_while_a_snapshot_streams_follows_it_exactly_once(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(stored_rate_limit=0) as srv:
        doc = new_id()
        publish(srv.service, doc, 200, 9000)  # 1.8 MB: streamed for a while to a slow reader
        async with srv.client() as writer:
            await writer.join(doc)
            joiner = new_id()
            raw = await RawWebSocket.connect(srv.url)  # not reading yet
            await raw.send_text(frame("JoinDocument", document_id=doc, user_id=joiner))
            await receive_until(
                writer, lambda m: m == JoinDocument(document_id=doc, user_id=joiner)
            )
            for i in range(30):  # after the joiner's cut: live, never in its snapshot
                await writer.comment(doc, 1000 + i, 0, f"live {i}")
                await writer.cursor(doc, i, 0)
            await writer.status(doc, "done")
            got = await raw.read_json_until_quiet(1.0 * TIMEOUT / 5)
            raw.close()
        kinds = [next(iter(f)) for f in got]
        ack = kinds.index("JoinDocument", 1 + kinds.index("JoinDocument"))  # the writer's, then own
        assert got[ack] == {"JoinDocument": {"document_id": doc, "user_id": joiner}}
        snapshot, live = got[:ack], got[ack + 1 :]
        stored = [f["Comment"]["position"]["line"] for f in snapshot if "Comment" in f]
        assert stored == list(range(200))
        comments = [f["Comment"]["content"] for f in live if "Comment" in f]
        assert comments == [f"live {i}" for i in range(30)]
        cursors = [f["CursorUpdate"]["position"]["line"] for f in live if "CursorUpdate" in f]
        assert cursors and cursors[-1] == 29 and cursors == sorted(cursors)  # maybe conflated
        assert next(iter(live[-1])) == "PresenceStatus"
        assert not any("Error" in f for f in got)
