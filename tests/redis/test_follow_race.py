"""Attaching and detaching one document, interleaved across awaits (a real Redis).

An instance follows a document (attach) while a local connection holds it and lets
go (detach) once none does. Both wait on Redis, so decisions pile up: the last
member leaves while its attach is still in flight, a new member joins while that
detach is under way, and leaves again before its own attach ran. Redis is held
still with ``CLIENT PAUSE`` so the interleaving is the same on every run; then
every attach must be undone exactly once: a later member receives the document's
events, and once nobody is there, the instance follows nothing.
"""

from __future__ import annotations

import asyncio
import time

from cpc_signaling.protocol import CursorUpdate, JoinDocument

from ..helpers import TIMEOUT, UNIT, new_id, receive_until, running_server, until
from ..security.support import RawWebSocket, frame
from .server import RedisServer

PAUSE_MS = int(600 * UNIT)  # long enough for the steps below to run inside it


async def redis_answers(redis: RedisServer) -> None:
    """Return once Redis answers a PING (after a ``CLIENT PAUSE`` expired)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", redis.port)
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            assert (await reader.readline()).startswith(b"+PONG")
    finally:
        writer.close()


def followed(service: object) -> float:
    """Documents this instance follows in Redis (its ``cpc_redis_documents`` gauge)."""
    stats = service.following.stats()  # type: ignore[attr-defined]
    return float(stats["redis_documents"][1])


async def test_attach_and_detach_of_one_document_never_overlap(redis: RedisServer) -> None:
    options = {"redis_url": redis.url, "redis_linger": 0.0}
    async with running_server(**options) as one, running_server(**options) as two:
        service = one.service
        hub = service.hub
        doc = new_id()
        async with two.client() as far:
            await far.join(doc)  # the document lives on in Redis
            x_user, y_user = new_id(), new_id()
            redis.command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
            paused = time.monotonic()
            raws: list[RawWebSocket] = []
            try:
                x = await RawWebSocket.connect(one.url)
                raws.append(x)
                y = await RawWebSocket.connect(one.url)
                raws.append(y)
                # X joins: its attach waits on Redis...
                await x.send_text(frame("JoinDocument", document_id=doc, user_id=x_user))
                await until(lambda: hub.local_refs.get(doc) == 1)
                # ...and X is let go meanwhile: the document is released, detach decided.
                assert service.disconnect_local(x_user, "bye") == 1
                await until(lambda: doc not in hub.local_refs)
                # Y joins while that detach waits on Redis, and is let go too.
                await y.send_text(frame("JoinDocument", document_id=doc, user_id=y_user))
                await until(lambda: hub.local_refs.get(doc) == 1)
                assert service.disconnect_local(y_user, "bye") == 1
                await until(lambda: doc not in hub.local_refs)
                # All of it decided while Redis was still paused (else no race was set up).
                elapsed = time.monotonic() - paused
                assert elapsed < PAUSE_MS / 1000, f"{elapsed:.2f} s: set CPC_TEST_TIMEOUT_UNIT"
                await redis_answers(redis)  # the pause is over: it all runs now
            finally:
                for raw in raws:
                    raw.close()

            # A later member is followed: it gets the document's events...
            async with one.client() as z:
                await z.join(doc)
                await receive_until(
                    far, lambda m: m == JoinDocument(document_id=doc, user_id=z.user_id)
                )
                await far.cursor(doc, 7, 7)
                await receive_until(
                    z, lambda m: isinstance(m, CursorUpdate) and m.user_id == far.user_id
                )
                await z.leave(doc)
            # ...and once nobody is here, the instance follows the document no more.
            try:
                await until(lambda: followed(service) == 0 and not service.following.detaching)
            except TimeoutError:
                raise AssertionError(
                    f"still following {followed(service):.0f} document(s) with nobody here"
                ) from None
            assert doc not in hub.documents
