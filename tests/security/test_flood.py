"""A flood of garbage from many connections against a real server process.

The process's RSS must stay bounded while it is flooded, and normal traffic
must work during and after. ``CPC_SECURITY_REPORT=1`` prints the figures;
``CPC_FLOOD_SECONDS`` and ``CPC_FLOOD_CONNECTIONS`` make the flood longer/wider.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import aiohttp

from cpc_signaling.client import Client
from cpc_signaling.protocol import CursorUpdate

from ..helpers import TIMEOUT, new_id, receive_until, spawn_server
from .support import TS, frame, healthy, rss_kib

REPORT = os.environ.get("CPC_SECURITY_REPORT") == "1"
SECONDS = float(os.environ.get("CPC_FLOOD_SECONDS", "4"))
CONNECTIONS = int(os.environ.get("CPC_FLOOD_CONNECTIONS", "100"))


def garbage(rng: random.Random) -> str | bytes:
    """One hostile frame: a mix of everything a broken or malicious client sends."""
    doc, user = str(rng.choice([new_id(), "x"])), new_id()
    choice = rng.randrange(9)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 2000)).decode("latin-1")  # not JSON
    if choice == 1:
        return "{" * rng.randrange(1, 5000)  # deep nesting
    if choice == 2:
        return '{"CursorUpdate": {"document_id": "' + "a" * 60_000 + '"}}'  # near the limit
    if choice == 3:
        return rng.randbytes(rng.randrange(1, 4000))  # binary frame
    if choice == 4:
        return frame("Comment", document_id=doc, user_id=user, content="x" * 20_000,
                     position={"line": 0, "column": 0}, timestamp=TS)  # fmt: skip
    if choice == 5:
        return frame("CursorUpdate", document_id=doc, user_id=user,
                     position={"line": -1, "column": 2**40}, timestamp="yesterday")  # fmt: skip
    if choice == 6:
        return frame("JoinDocument", document_id=new_id(), user_id=new_id())  # valid: joins
    if choice == 7:
        return '{"Error": {"code": "AUTH_ERROR", "message": "spoofed"}}'
    return '{"A": 1, "B": 2, "' + "k" * 3000 + '": []}'


async def flooder(url: str, stop: float, seed: int, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop:
            try:
                async with session.ws_connect(url, max_msg_size=0) as ws:
                    reader = asyncio.create_task(_drain(ws, counts))
                    for _ in range(rng.randrange(5, 40)):
                        data = garbage(rng)
                        if isinstance(data, str):
                            await ws.send_str(data)
                        else:
                            await ws.send_bytes(data)
                        counts["frames"] += 1
                        if ws.closed:
                            break
                    if rng.random() < 0.3:
                        await ws.send_str("x" * 70_000)  # over --max-message-bytes: 1009
                        counts["frames"] += 1
                    # Let the server answer (and close us at the error budget), then go.
                    try:
                        await asyncio.wait_for(asyncio.shield(reader), 1.0)
                    except TimeoutError:
                        await ws.close()
                        await reader
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                counts["refused"] += 1
            counts["connections"] += 1


async def _drain(ws: aiohttp.ClientWebSocketResponse, counts: dict[str, int]) -> None:
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            counts["errors_received"] += 1


async def tcp_garbage(host: str, port: int, stop: float, seed: int) -> None:
    """Connections that are not even HTTP, or a handshake that never finishes."""
    rng = random.Random(seed)
    while time.monotonic() < stop:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
            writer.write(rng.choice([rng.randbytes(3000), b"GET /ws HTTP/1.1\r\nHost: x\r\n"]))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def exchange(url: str) -> None:
    doc, a_user, b_user = new_id(), new_id(), new_id()
    async with (
        Client(url, a_user, reconnect=False) as a,
        Client(url, b_user, reconnect=False) as b,
    ):
        await a.join(doc)
        await b.join(doc)
        await b.cursor(doc, 4, 2)
        got = await receive_until(a, lambda m: isinstance(m, CursorUpdate))
        assert getattr(got[-1], "user_id", None) == b_user


async def test_garbage_flood_keeps_rss_bounded_then_normal_traffic_works() -> None:
    server = await spawn_server()
    try:
        await healthy(server.http)
        pid = server.proc.pid
        await exchange(server.url)  # warm: imports, first connections
        baseline = rss_kib(pid)
        stop = time.monotonic() + SECONDS
        counts = dict.fromkeys(("frames", "connections", "refused", "errors_received"), 0)
        host, port = server.url.removeprefix("ws://").removesuffix("/ws").rsplit(":", 1)
        tasks = [
            asyncio.create_task(flooder(server.url, stop, seed, counts))
            for seed in range(CONNECTIONS)
        ]
        tasks += [asyncio.create_task(tcp_garbage(host, int(port), stop, s)) for s in range(10)]
        peak = baseline
        samples = []
        during_ok = False
        while time.monotonic() < stop:
            await asyncio.sleep(0.2)
            rss = rss_kib(pid)
            samples.append(rss)
            peak = max(peak, rss)
            if not during_ok and time.monotonic() > stop - SECONDS / 2:
                await asyncio.wait_for(exchange(server.url), TIMEOUT * 2)  # served mid-flood
                during_ok = True
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT * 4)
        await asyncio.sleep(0.5)
        after = rss_kib(pid)
        assert server.proc.poll() is None, "the server died"
        await exchange(server.url)
        await healthy(server.http)
        growth_mib = (peak - baseline) / 1024
        if REPORT:
            print(
                f"\n[security figures] garbage flood: {CONNECTIONS} flooding clients + 10 raw "
                f"TCP, {SECONDS:g} s, {counts['connections']} WebSocket connections, "
                f"{counts['frames']} hostile frames, {counts['errors_received']} errors received;"
                f" server RSS baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
                f"(+{growth_mib:.1f}), after {after / 1024:.1f} MiB"
            )
        assert counts["frames"] > 1000, counts
        assert growth_mib < 150, (baseline, peak, samples)
        assert not [line for line in server.lines if "Traceback" in line], server.lines[-40:]
    finally:
        assert server.stop() == 0
