"""Slow consumers (issue 4 §4): a reader that stops reading, over real sockets.

The stalled reader is a raw WebSocket client with a 4 KiB receive buffer that
simply does not read: the kernel buffers fill, the server's transport buffer
passes its high-water mark, and frames wait in the connection's outbox, where
presence is conflated. ``CPC_SECURITY_REPORT=1`` prints the measured figures.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from cpc_signaling.client import Client
from cpc_signaling.protocol import Comment, CursorUpdate, JoinDocument, LeaveDocument
from cpc_signaling.server import app as app_module

from ..helpers import TIMEOUT, RunningServer, new_id, receive_until, running_server
from .support import RawWebSocket, frame

REPORT = os.environ.get("CPC_SECURITY_REPORT") == "1"


def report(text: str) -> None:
    if REPORT:
        print(f"\n[security figures] {text}")


def peer_of(server: RunningServer, user_id: str) -> Any:
    (conn,) = [c for c in server.service.hub.connections.values() if c.user_id == user_id]
    return conn.peer


def pending_bytes(peer: Any) -> int:
    """Bytes the server holds for ``peer`` in user space: transport buffer plus outbox."""
    outbox = peer.outbox
    frames = getattr(outbox, "_frames", {})
    return int(peer._transport.get_write_buffer_size()) + sum(map(len, frames.values()))


async def stalled_member(server: RunningServer, doc: str) -> tuple[RawWebSocket, str]:
    user = new_id()
    raw = await RawWebSocket.connect(server.url)
    await raw.send_text(frame("JoinDocument", document_id=doc, user_id=user))
    ack = {"JoinDocument": {"document_id": doc, "user_id": user}}
    async for _, payload in raw.frames(TIMEOUT):
        if payload and frame("JoinDocument", **ack["JoinDocument"]).encode() == payload:
            break
    return raw, user


async def ping_pong_latencies(sender: Client, receiver: Client, doc: str, n: int) -> list[float]:
    """Send ``n`` cursor updates one at a time; the delivery time of each, in seconds."""
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        await sender.cursor(doc, i, 7)
        while True:
            got = await receiver.receive(TIMEOUT)
            if isinstance(got, CursorUpdate) and got.position.line == i:
                break
        latencies.append(time.perf_counter() - started)
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def test_stalled_reader_is_conflated_and_bounded_and_catches_up() -> None:
    async with running_server(rate_limit=0, stored_rate_limit=0) as server:
        doc = new_id()
        async with server.client() as a, server.client() as b:
            await a.join(doc)
            await b.join(doc)
            await receive_until(a, lambda m: isinstance(m, JoinDocument))
            # Baseline: a -> b delivery with nobody stalled.
            baseline = await ping_pong_latencies(a, b, doc, 500)

            raw, stalled_user = await stalled_member(server, doc)
            await receive_until(a, lambda m: isinstance(m, JoinDocument))
            await receive_until(b, lambda m: isinstance(m, JoinDocument))
            peer = peer_of(server, stalled_user)
            metrics = server.service.metrics

            # Fill the stalled member's kernel buffers (a few MB on loopback) with 8 KB
            # comments, until the server starts holding frames for it in its outbox.
            filled = 0
            while not peer.outbox:
                await a.comment(doc, filled, 0, "f" * 8000)
                filled += 1
                await receive_until(b, lambda m: isinstance(m, Comment))
                assert filled < 5000, "the stalled reader's buffers never filled"
            saturated = pending_bytes(peer)

            # Now thousands of cursor updates while it still does not read.
            peak = saturated
            stalled: list[float] = []
            sent = 0
            for _round in range(3):
                stalled += await ping_pong_latencies(a, b, doc, 500)
                peak = max(peak, pending_bytes(peer))
                for _ in range(500):  # and b's presence, unpaced
                    await b.presence(
                        doc, cursor=(sent, 0), selection=((sent, 0), (sent, 9)), is_typing=True
                    )
                    sent += 1
                    peak = max(peak, pending_bytes(peer))
            after = pending_bytes(peer)
            conflated = metrics.conflated._value.get()
            limit = server.service.config.outbox_max_bytes
            bound = app_module.WRITE_HIGH_WATER + limit
            assert peak <= bound, (peak, bound)
            # Flat: 3000 more updates added at most a frame per (document, user, kind).
            assert after <= saturated + 2048, (saturated, after)
            assert conflated >= 1000, conflated  # (the kernel may still take a little)
            await a.cursor(doc, 123456, 1)  # the latest state the reader must end up with
            await receive_until(
                b, lambda m: isinstance(m, CursorUpdate) and m.position.line == 123456
            )

            # It resumes reading: it gets the latest state, not the whole backlog.
            got = await raw.read_json_until_quiet(1.0)
            raw.close()
            cursors = [f["CursorUpdate"] for f in got if "CursorUpdate" in f]
            presences = [f["PresenceUpdate"] for f in got if "PresenceUpdate" in f]
            assert cursors[-1]["position"]["line"] == 123456
            assert presences[-1]["cursor"]["line"] == sent - 1
            lines = [c["position"]["line"] for c in cursors]
            assert len(lines) < 500, len(lines)  # of 1501 sent while it was stalled
            # Others' delivery was not delayed by the stalled reader (loose: a blocked
            # writer would cost seconds, not milliseconds).
            base_p99, stall_p99 = p99(baseline), p99(stalled)
            assert stall_p99 < 3 * base_p99 + 0.05, (base_p99, stall_p99)
            report(
                f"stalled reader: {filled} comments of 8 KB to fill its buffers; server-side "
                f"pending {saturated} B at saturation, {after} B after 1500 cursor + 1500 "
                f"presence updates, peak {peak} B (bound {bound} B); on resuming it received "
                f"{len(got)} frames ({len(lines)} cursors of 1501 sent while stalled); "
                f"conflated {conflated:.0f}; a->b p50/p99 baseline "
                f"{statistics.median(baseline) * 1e3:.3f}/{base_p99 * 1e3:.3f} ms, with stalled "
                f"reader {statistics.median(stalled) * 1e3:.3f}/{stall_p99 * 1e3:.3f} ms"
            )


async def test_reader_behind_on_comments_is_closed_1013_and_leaves() -> None:
    limit = 64 * 1024
    async with running_server(rate_limit=0, stored_rate_limit=0, outbox_max_bytes=limit) as server:
        doc = new_id()
        async with server.client() as a, server.client() as b:
            await a.join(doc)
            raw, stalled_user = await stalled_member(server, doc)
            await b.join(doc)
            await receive_until(a, lambda m: isinstance(m, JoinDocument) and m.user_id == b.user_id)
            peer = peer_of(server, stalled_user)
            slow_closes = server.service.metrics.closes.labels("slow_reader")
            peak = 0
            content = "c" * 2000
            sent = 0
            started = time.perf_counter()
            while slow_closes._value.get() == 0:
                await a.comment(doc, sent, 0, content)
                sent += 1
                # b keeps reading every comment: it is not slowed down by the stalled reader.
                await receive_until(b, lambda m: isinstance(m, Comment))
                peak = max(peak, pending_bytes(peer))
                assert sent < 20_000, "the stalled reader was never closed"
            # Treated as having left, at once (not after a ping timeout).
            left = await receive_until(b, lambda m: isinstance(m, LeaveDocument))
            assert left[-1] == LeaveDocument(document_id=doc, user_id=stalled_user)
            elapsed = time.perf_counter() - started
            bound = app_module.WRITE_HIGH_WATER + limit + 256 * 1024
            assert peak <= bound, (peak, bound)
            assert stalled_user not in {c.user_id for c in server.service.hub.connections.values()}
            # When it reads again, it finds the close code 1013 behind its backlog.
            frames = [f async for f in raw.frames(2.0)]
            raw.close()
            assert raw.close_code == 1013, (raw.close_code, len(frames))
            report(
                f"reader behind on comments: closed 1013 after {sent} comments of 2 KB "
                f"({elapsed:.2f} s); peak server-side pending {peak} B (bound {bound} B)"
            )
