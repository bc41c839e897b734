"""Closing: nobody lingers, and the close code survives a client that keeps sending.

From the moment the server decides to close a connection, its leaves are
announced within a second (not when its socket finally goes), and its socket is
let go within ``CLOSE_TIMEOUT`` whatever the peer does. After its close frame
the server reads and discards until the peer's close frame (a lingering
close), so a client that was still sending receives the close code instead of
a reset. Both transports (the ``server_factory`` fixture), real sockets: a raw
socket with a small receive buffer that never reads and never answers pings,
and the ``websockets`` library as a client that keeps sending without reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import websockets

from cpc_signaling.protocol import Annotation, LeaveDocument, Position
from cpc_signaling.server.frontdoor import CLOSE_TIMEOUT
from cpc_signaling.server.service import Service
from cpc_signaling.tokens import mint_token

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, UNIT, new_id, receive_until, until
from ..security.support import frame, raw_member

SECRET = "s" * 40
TS = "2026-01-01T00:00:00Z"


def fill(service: Service, doc: str, nbytes: int) -> int:
    """Store about ``nbytes`` of annotations in ``doc`` (as the server API); how many."""
    n = 0
    while n * 9000 < nbytes:
        service.publish(
            Annotation(
                document_id=doc,
                user_id=new_id(),
                position=Position(line=n, column=0),
                content="a" * 9000,
                timestamp=TS,
            )
        )
        n += 1
    return n


async def test_a_member_that_never_reads_nor_answers_pings_is_announced_gone(
    server_factory: ServerFactory,
) -> None:
    interval = timeout = 0.5
    async with server_factory(ping_interval=interval, ping_timeout=timeout) as srv:
        doc = new_id()
        fill(srv.service, doc, 3 << 20)  # its snapshot alone fills every buffer on the way
        async with srv.client() as watcher:
            await watcher.join(doc)
            stalled = new_id()
            raw = await raw_member(srv.url, watcher, doc, stalled)  # never read
            joined = time.monotonic()
            await receive_until(
                watcher,
                lambda m: m == LeaveDocument(document_id=doc, user_id=stalled),
                timeout=TIMEOUT + interval + timeout,
            )
            elapsed = time.monotonic() - joined
            # Decided after the ping interval and timeout (plus a sweep), announced at once.
            assert elapsed < interval + timeout + 1.0 + 0.5 * UNIT, elapsed
            service = srv.service
            assert stalled not in {s.user_id for s in service.sessions.values()}
            assert service.hub.present_users(doc) == [watcher.user_id]
            # Its socket is let go within CLOSE_TIMEOUT of the decision (it cannot finish
            # a closing handshake it never reads).
            aborted = service.metrics.close_timeouts
            await until(lambda: aborted._value.get() == 1, CLOSE_TIMEOUT + TIMEOUT)
            raw.close()


async def test_a_stalled_member_whose_token_expires_is_announced_gone_at_once(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(jwt_secret=SECRET) as srv:
        doc, watcher_user, stalled = new_id(), new_id(), new_id()
        fill(srv.service, doc, 3 << 20)
        watcher = srv.client(watcher_user, token=mint_token(sub=watcher_user, secret=SECRET))
        async with watcher:
            await watcher.join(doc)
            exp = int(time.time()) + 2
            short = mint_token(sub=stalled, secret=SECRET, now=exp - 60, ttl=60)
            raw = await raw_member(srv.url, watcher, doc, stalled, path_query=f"?token={short}")
            await receive_until(
                watcher,
                lambda m: m == LeaveDocument(document_id=doc, user_id=stalled),
                timeout=TIMEOUT + 2,
            )
            late = time.time() - exp
            assert late < 1.0 + 0.5 * UNIT, late  # its socket is still full: no matter
            assert srv.service.metrics.closes.labels("token_expired")._value.get() == 1
            raw.close()


async def keep_sending(url: str, frames: list[str | bytes]) -> tuple[int | None, int]:
    """Send ``frames`` 5 ms apart without reading (the library still answers a close
    frame it has read), then read what came: (the close code, the messages received)."""
    received = 0
    async with websockets.connect(url, max_size=None) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            for data in frames:
                await ws.send(data)
                await asyncio.sleep(0.005)
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await ws.recv()
                    received += 1
        return ws.close_code, received


async def test_a_client_that_keeps_sending_garbage_gets_its_1008(
    server_factory: ServerFactory,
) -> None:
    async with server_factory() as srv:
        code, received = await keep_sending(srv.url, ["garbage"] * 60)
        assert code == 1008  # not 1006: the close frame was not destroyed by a reset
        assert received == 21  # every error, the 21st included
        assert srv.service.sessions == {}


async def test_a_client_that_keeps_sending_after_an_oversized_frame_gets_its_1009(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(max_message_bytes=4096) as srv:
        # 20 errors first (within the budget): the client's queue fills and it stops
        # reading, so the close frame waits in its socket buffer, as in the test above.
        code, _ = await keep_sending(srv.url, [*["garbage"] * 20, "x" * 10_000, *["garbage"] * 40])
        assert code == 1009


@pytest.mark.parametrize("code", [1000, 4000])
async def test_a_client_close_is_answered_and_leaves(
    server_factory: ServerFactory, code: int
) -> None:
    async with server_factory() as srv:
        doc = new_id()
        async with srv.client() as watcher:
            await watcher.join(doc)
            user = new_id()
            async with websockets.connect(srv.url) as ws:
                await ws.send(frame("JoinDocument", document_id=doc, user_id=user))
                await ws.recv()
                await ws.close(code)
                assert ws.close_code == code  # echoed
            await receive_until(
                watcher, lambda m: m == LeaveDocument(document_id=doc, user_id=user)
            )
