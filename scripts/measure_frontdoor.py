"""The figures of issue 10's closing note, on real processes.

1. RSS growth of a server process for 10 connections that join a ~6 MB document
   and never read (aiohttp `cpc-signaling serve` and the ASGI app under uvicorn).
2. The time from a ping timeout (`--ping-interval 1 --ping-timeout 1`) to the other
   member's LeaveDocument, for a member that never reads nor answers pings.
3. The close code a client that keeps sending garbage without reading sees
   (the `websockets` library, 60 frames 5 ms apart).

Usage (from the repository root, with the dev dependencies installed)::

    .venv/bin/python scripts/measure_frontdoor.py                  # this tree
    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python scripts/measure_frontdoor.py --src /tmp/before/src   # a server from there

``--src`` runs the spawned servers from another source tree (the clients and
this script stay this tree's), so "before" and "after" are measured in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


async def rss_of_stalled_joiners(kind: str, env: dict[str, str]) -> str:
    import aiohttp
    from tests.helpers import new_id, spawn_asgi_server, spawn_server
    from tests.security.support import RawWebSocket, fill_over_http, frame, rss_kib

    key = "k" * 32
    # A 6 MB document needs a larger per-document budget than the default, where it exists.
    env = {**env, "CPC_API_KEY": key, "CPC_MAX_STORED_BYTES_PER_DOCUMENT": str(16 << 20)}
    spawn = spawn_server if kind == "aiohttp" else spawn_asgi_server
    server = await spawn([], env)
    raws: list[RawWebSocket] = []
    try:
        doc = new_id()
        await fill_over_http(server.http, key, doc, 600, 10_000)
        await asyncio.sleep(0.5)
        before = rss_kib(server.proc.pid)
        for _ in range(10):
            raw = await RawWebSocket.connect(server.url)
            await raw.send_text(frame("JoinDocument", document_id=doc, user_id=new_id()))
            raws.append(raw)
        await asyncio.sleep(2.0)
        after = rss_kib(server.proc.pid)
        async with aiohttp.ClientSession() as http, http.get(server.http + "/metrics") as r:
            metrics = await r.text()
        gauge = [ln for ln in metrics.splitlines() if ln.startswith("cpc_connections ")]
        still = int(float(gauge[0].split()[1])) if gauge else -1
        return (
            f"{kind}: 10 stalled joiners of a 6 MB document: RSS {before / 1024:.1f} MiB -> "
            f"{after / 1024:.1f} MiB (+{(after - before) / 1024:.1f} MiB); "
            f"{still} of them still connected"
        )
    finally:
        for raw in raws:
            raw.close()
        server.stop()


def _ts(entry: dict[str, str]) -> float:
    base, ms = entry["ts"][:-1].split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000


async def ping_timeout_to_leave(env: dict[str, str], trials: int = 5) -> str:
    from tests.helpers import new_id, spawn_server
    from tests.security.support import RawWebSocket, fill_over_http, frame

    from cpc_signaling.client import Client
    from cpc_signaling.protocol import LeaveDocument

    key = "k" * 32
    args = ["--ping-interval", "1", "--ping-timeout", "1", "--log-format", "json"]
    server = await spawn_server(args, {**env, "CPC_API_KEY": key})
    out = []
    try:
        doc = new_id()
        await fill_over_http(server.http, key, doc, 300, 10_000)  # 3 MB: fills its socket
        for _ in range(trials):
            async with Client(server.url, new_id(), reconnect=False) as watcher:
                await watcher.join(doc)
                raw = await RawWebSocket.connect(server.url)
                stalled = new_id()
                await raw.send_text(frame("JoinDocument", document_id=doc, user_id=stalled))
                joined = time.time()
                try:
                    async with asyncio.timeout(15):
                        while True:
                            got = await watcher.receive(15)
                            if got == LeaveDocument(document_id=doc, user_id=stalled):
                                break
                except TimeoutError:
                    out.append("no LeaveDocument within 15 s of the join")
                    raw.close()
                    continue
                seen = time.time()
                raw.close()
            await asyncio.sleep(0.3)
            decisions = [
                json.loads(line)
                for line in server.lines
                if line.startswith("{") and "closing with 1011" in line and stalled in line
            ]
            if decisions:
                decided = _ts(decisions[0])
                out.append(
                    f"decided {decided - joined:.2f} s after the join, LeaveDocument "
                    f"{(seen - decided) * 1000:.1f} ms after the decision"
                )
            else:
                out.append(f"LeaveDocument {seen - joined:.2f} s after the join")
    finally:
        server.stop()
    return "ping timeout -> others' LeaveDocument: " + "; ".join(out)


async def keep_sending_close_code(env: dict[str, str]) -> str:
    import websockets
    from tests.helpers import spawn_asgi_server, spawn_server

    codes = []
    for kind, spawn in (("aiohttp", spawn_server), ("asgi", spawn_asgi_server)):
        server = await spawn([], env)
        try:
            async with websockets.connect(server.url) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(60):
                        await ws.send("garbage")
                        await asyncio.sleep(0.005)
                with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
                    async with asyncio.timeout(5):
                        while True:
                            await ws.recv()
                codes.append(f"{kind} {ws.close_code}")
        finally:
            server.stop()
    return "a client that keeps sending garbage sees: " + ", ".join(codes)


async def measure(env: dict[str, str], where: str) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}; servers from {where}")
    for kind in ("aiohttp", "asgi"):
        print(await rss_of_stalled_joiners(kind, env))
    print(await ping_timeout_to_leave(env))
    print(await keep_sending_close_code(env))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--src", help="run the servers from this source tree's src/ instead")
    args = parser.parse_args()
    env: dict[str, str] = {}
    if args.src:  # only the servers: this script's own code (clients, helpers) stays
        env["PYTHONPATH"] = os.path.abspath(args.src)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    asyncio.run(measure(env, args.src or "this tree"))


if __name__ == "__main__":
    main()
