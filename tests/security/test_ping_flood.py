"""A ping flood: a peer that sends pings as fast as it can and never reads.

Every ping is owed a pong; a peer that never reads makes each pong wait on the
server's side of the socket. Pongs count against the slow-reader bound like any
other frame: past it the peer is closed (1013) and its leaves are announced as
for every close, so the process does not grow by a pong per ping.

Under ASGI the host server (uvicorn, with the ``websockets`` library) answers
pings itself and never shows them to the app (docs/embedding.md): what is ours
there is that a flood neither reaches the app nor keeps a member shown present
after the host closed it.

Measured on real processes (RSS from ``/proc``) and real sockets.
``CPC_SECURITY_REPORT=1`` prints the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import time

from cpc_signaling.client import Client
from cpc_signaling.protocol import LeaveDocument

from ..helpers import (
    UNIT,
    metric,
    new_id,
    receive_until,
    running_asgi_server,
    spawn_server,
)
from .support import RawWebSocket, raw_member, rss_kib

REPORT = os.environ.get("CPC_SECURITY_REPORT") == "1"
# 125 bytes: the largest payload a control frame may carry (RFC 6455 §5.5).
PAYLOAD = b"p" * 125
# 25 MB of pongs owed, if every ping were answered.
PINGS = 200_000


def masked_ping(payload: bytes) -> bytes:
    """A client's ping frame (masked, as a client's frames must be)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x89, 0x80 | len(payload)) + mask + body


async def flood(raw: RawWebSocket, pings: int) -> int:
    """Send ``pings`` pings without reading; how many went out before the server cut us."""
    loop = asyncio.get_running_loop()
    burst = masked_ping(PAYLOAD) * 1000
    sent = 0
    try:
        while sent < pings:
            await loop.sock_sendall(raw.sock, burst)
            sent += 1000
    except OSError:
        pass
    return sent


async def test_a_ping_flood_that_never_reads_is_closed_and_leaves() -> None:
    server = await spawn_server(["--ping-interval", "0"])
    raw: RawWebSocket | None = None
    try:
        doc, flooder = new_id(), new_id()
        async with Client(server.url, new_id()) as watcher:
            await watcher.join(doc)
            raw = await raw_member(server.url, watcher, doc, flooder)  # never read
            pid = server.proc.pid
            before = rss_kib(pid)
            sent = await flood(raw, PINGS)
            left = True
            try:
                await receive_until(
                    watcher, lambda m: m == LeaveDocument(document_id=doc, user_id=flooder)
                )
            except TimeoutError:
                left = False
            after = rss_kib(pid)
            growth_mib = (after - before) / 1024
            closed = await metric(server.http, "cpc_closes_total", reason="slow_reader")
            if REPORT:
                print(
                    f"\n[security figures] ping flood, {sent} pings of 125 B sent, never "
                    f"read: RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
                    f"(+{growth_mib:.1f} MiB)"
                )
            assert left, f"still present after {sent} pings (+{growth_mib:.1f} MiB)"
            assert closed == 1
            # Every pong kept would be 25 MB; the bound is --outbox-max-bytes (1 MiB) plus
            # the transport's high-water mark.
            assert growth_mib < 6, (before, after)
            assert server.proc.poll() is None
    finally:
        if raw is not None:
            raw.close()
        server.stop()
    assert any("slow reader" in line and "pong" in line for line in server.lines), server.lines


async def test_under_asgi_a_ping_flood_is_the_hosts_and_its_member_still_leaves() -> None:
    """uvicorn answers the pings (and keeps every pong: docs/embedding.md). Ours: the
    flood never reaches the app, and once the flooder's socket is full the app's next
    send to it stalls, so it is closed and its leaves are announced."""
    interval = timeout = 0.5
    async with running_asgi_server(ping_interval=interval, ping_timeout=timeout) as server:
        doc, flooder = new_id(), new_id()
        async with server.client() as watcher:
            await watcher.join(doc)
            raw = await raw_member(server.url, watcher, doc, flooder)
            try:
                await flood(raw, 50_000)  # 6 MB of pongs owed: its socket is full
                service = server.service
                started = time.monotonic()

                async def keep_moving() -> None:  # something for it to read
                    for line in itertools.count():
                        await watcher.cursor(doc, line, 0)
                        await asyncio.sleep(0.05)

                mover = asyncio.create_task(keep_moving())
                try:
                    await receive_until(
                        watcher, lambda m: m == LeaveDocument(document_id=doc, user_id=flooder)
                    )
                finally:
                    mover.cancel()
                elapsed = time.monotonic() - started
                assert service.metrics.errors.labels("PARSE_ERROR")._value.get() == 0
                assert service.metrics.closes.labels("stalled_reader")._value.get() == 1
                assert elapsed < interval + timeout + 1.0 + UNIT, elapsed
                assert service.hub.present_users(doc) == [watcher.user_id]
            finally:
                raw.close()
