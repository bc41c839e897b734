"""Cursor delivery latency and throughput: standalone aiohttp server vs the ASGI app under uvicorn.

    .venv/bin/python scripts/compare_transports.py [--messages 3000] [--watchers 20]

In-process servers on loopback, one sender and N watchers in one document;
latency is one message at a time (send, wait until every watcher has it);
throughput is a burst of messages, until every watcher has the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import SERVER_KINDS, new_id, receive_until

from cpc_signaling.protocol import CursorUpdate


async def measure(kind: str, messages: int, watchers: int) -> str:
    async with SERVER_KINDS[kind](rate_limit=0) as srv:
        doc = new_id()
        clients = [srv.client() for _ in range(watchers + 1)]
        for client in clients:
            await client.connect()
            await client.join(doc)
        sender, rest = clients[0], clients[1:]  # receive_until skips the joins

        def is_line(n: int):
            return lambda m: isinstance(m, CursorUpdate) and m.position.line == n

        latencies = []
        for n in range(messages):
            started = time.perf_counter()
            await sender.cursor(doc, n, 0)
            for watcher in rest:
                await receive_until(watcher, is_line(n))
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        last = messages + messages - 1
        for n in range(messages, last + 1):
            await sender.cursor(doc, n, 0)
        for watcher in rest:
            await receive_until(watcher, is_line(last), timeout=60)
        burst = time.perf_counter() - started
        for client in clients:
            await client.close()
    q = statistics.quantiles(latencies, n=100)
    return (
        f"{kind:8} latency to all {watchers} watchers: "
        f"p50 {statistics.median(latencies) * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms; "
        f"burst of {messages}: {messages * watchers / burst:,.0f} deliveries/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--watchers", type=int, default=20)
    args = parser.parse_args()
    for kind in ("aiohttp", "asgi"):
        print(await measure(kind, args.messages, args.watchers), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
