"""Measurements for docs/scaling.md (not a test: nothing here is asserted).

    .venv/bin/python -m tests.redis.measure [--messages 2000] [--crashes 3]

Default server settings (heartbeat 2 s, instance timeout 6 s), loopback, a
private redis-server. Prints Redis's cost per flush by its shape (``script``),
the flush throughput of one writer, cross-instance delivery latency (one
message at a time, so no queueing), crash-to-leave time after kill -9, and the
time to heal after Redis is killed, kept down for 10 s, and restarted empty.
``--only NAME`` (repeatable) runs some of them: script, throughput, latency,
crash, heal. Pin it to one core (``taskset -c 0``) to measure Redis sharing a
core with its client, as in the bench's rig.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial

import hiredis

from cpc_signaling.backends.redis.options import NodeAddress
from cpc_signaling.backends.redis.resp import Connection
from cpc_signaling.backends.redis.store import Limits, RedisStore
from cpc_signaling.backends.redis.wire import Channels
from cpc_signaling.bench.processes import proc_cpu
from cpc_signaling.client import Client
from cpc_signaling.core import Event, Joined, Relayed
from cpc_signaling.protocol import CursorUpdate, JoinDocument, LeaveDocument, Position, encode

from ..helpers import ServerProcess, new_id, receive_until, spawn_server
from .cluster import wait_ready
from .server import RedisServer


async def start(redis: RedisServer, n: int, prefix: str) -> list[ServerProcess]:
    servers = [
        await spawn_server(
            [
                "--redis-url",
                redis.url,
                "--redis-prefix",
                prefix,
                "--instance-id",
                f"m{i}",
                "--rate-limit",
                "0",
            ]
        )
        for i in range(n)
    ]
    for s in servers:
        await wait_ready(s, True)
    return servers


def stop(servers: list[ServerProcess]) -> None:
    for s in servers:
        s.kill()
        s.proc.wait(5)


async def latency(redis: RedisServer, count: int) -> None:
    servers = await start(redis, 2, "lat")
    try:
        for label, url_b in (("same instance", servers[0].url), ("cross instance", servers[1].url)):
            doc = new_id()
            async with Client(servers[0].url, new_id()) as a, Client(url_b, new_id()) as b:
                await a.join(doc)
                await b.join(doc)
                await receive_until(a, lambda m: type(m) is JoinDocument)
                samples = []
                for n in range(count):
                    t0 = time.perf_counter()
                    await a.cursor(doc, n, 0)
                    while True:
                        m = await b.receive(5)
                        if type(m) is CursorUpdate and m.position.line == n:
                            break
                    samples.append(time.perf_counter() - t0)
                samples.sort()
                p99 = samples[int(len(samples) * 0.99) - 1]
                print(
                    f"{label}: {count} messages, median {statistics.median(samples) * 1e3:.2f} ms,"
                    f" p99 {p99 * 1e3:.2f} ms, max {samples[-1] * 1e3:.2f} ms"
                )
    finally:
        stop(servers)


async def crash(redis: RedisServer, runs: int) -> None:
    for run in range(runs):
        servers = await start(redis, 2, f"crash{run}")
        try:
            doc = new_id()
            async with Client(servers[0].url, new_id()) as a:
                b = Client(servers[1].url, new_id(), reconnect=False)
                await b.connect()
                await a.join(doc)
                await b.join(doc)
                await receive_until(a, lambda m: type(m) is JoinDocument)
                t0 = time.monotonic()
                os.kill(servers[1].proc.pid, signal.SIGKILL)
                await receive_until(a, lambda m: type(m) is LeaveDocument, timeout=30)
                print(f"crash-to-leave (kill -9), run {run + 1}: {time.monotonic() - t0:.2f} s")
                await b.close()
        finally:
            stop(servers)


async def heal(redis: RedisServer, down_for: float) -> None:
    servers = await start(redis, 2, "heal")
    try:
        doc = new_id()
        async with Client(servers[0].url, new_id()) as a, Client(servers[1].url, new_id()) as b:
            await a.join(doc)
            await b.join(doc)
            await receive_until(a, lambda m: type(m) is JoinDocument)
            redis.stop()
            await asyncio.gather(*(wait_ready(s, False, 30) for s in servers))
            await asyncio.sleep(down_for)
            redis.start()
            t0 = time.monotonic()
            await asyncio.gather(*(wait_ready(s, True, 30) for s in servers))
            ready = time.monotonic() - t0
            await b.cursor(doc, 1, 1)
            await receive_until(a, lambda m: type(m) is CursorUpdate, timeout=30)
            flowing = time.monotonic() - t0
            print(
                f"heal after Redis down {down_for:.0f} s and restarted empty: /readyz 200 on both"
                f" after {ready:.2f} s, cross-instance message delivered after {flowing:.2f} s"
            )
    finally:
        stop(servers)


async def _pipelined(conn: Connection, commands: Iterable[bytes]) -> None:
    """Send packed commands, at most 8 in flight, and wait for the last."""
    for sent, packed in enumerate(commands):
        conn.send_packed(packed, lambda reply: None)
        if sent % 8 == 7:
            await conn.call("PING")
    await conn.call("PING")


async def _script_usec(conn: Connection) -> float:
    """Microseconds Redis spent in EVALSHA since the last CONFIG RESETSTAT."""
    info = (await conn.call("INFO", "commandstats")).decode()
    return next(
        float(line.split("usec=")[1].split(",")[0])
        for line in info.splitlines()
        if line.startswith("cmdstat_evalsha")
    )


async def _registered(redis: RedisServer, prefix: str, instance: str) -> RedisStore:
    """A store of ``instance`` on its own connection, its scripts loaded, registered."""
    conn = await Connection.open(NodeAddress.parse(redis.url), name=instance)
    store = RedisStore(
        conn, prefix=prefix, channels=Channels(prefix, 0), instance_id=instance, limits=Limits()
    )
    await store.load_scripts()
    await store.register(secrets.token_hex(8), "", 600.0)
    return store


def _cursor(doc: str, user: str) -> bytes:
    """The frame of a cursor move of ``user`` in ``doc``."""
    return encode(
        CursorUpdate(
            document_id=doc,
            user_id=user,
            position=Position(line=1, column=2),
            timestamp="2026-01-01T00:00:00Z",
        )
    )


async def throughput(redis: RedisServer, count: int) -> None:
    """Flushes of cursor moves on one Redis (one writer, pipelined like the backend):
    events/s, and Redis CPU per event (INFO commandstats) by flush size."""
    store = await _registered(redis, "tput", "m0")
    conn = store.conn
    docs = [new_id() for _ in range(100)]
    users = [new_id() for _ in range(100)]
    await store.commit([(d, Joined(f"m0/{n}", users[n])) for n, d in enumerate(docs)])
    frames = [_cursor(d, users[n]) for n, d in enumerate(docs)]
    for size in (1, 8, 64):
        await conn.call("CONFIG", "RESETSTAT")
        t0 = time.perf_counter()

        def flush(start: int, size: int = size) -> bytes:
            groups: dict[str, list[Event]] = {}
            for i in range(start, min(start + size, count)):
                n = i % len(docs)
                groups.setdefault(docs[n], []).append(
                    Relayed(f"m0/{n}", users[n], "CursorUpdate", frames[n])
                )
            return store.pack_flush(start, groups)

        await _pipelined(conn, map(flush, range(0, count, size)))
        elapsed = time.perf_counter() - t0
        usec = await _script_usec(conn)
        print(
            f"flushes of {size:>2} cursor events: {count / elapsed:,.0f} events/s, "
            f"Redis {usec / count:.2f} us per event"
        )
    conn.close()


def _same(command: bytes, _: int) -> bytes:
    return command


async def script_cost(redis: RedisServer, count: int) -> None:
    """What one FLUSH costs Redis by its shape: documents per flush x cursor events
    per document, each document followed by a second instance (so the script
    publishes a batch to it, as between two instances). Prints the script's own
    time (INFO commandstats) and Redis's CPU time (/proc) per flush; an empty
    script with the same arguments and four plain calls give the floor."""

    store, other = await _registered(redis, "cost", "m0"), await _registered(redis, "cost", "m1")
    conn = store.conn
    docs = [new_id() for _ in range(100)]
    users = [[new_id() for _ in range(5)] for _ in docs]
    await store.commit(
        [(d, Joined(f"m0/{n}.{u}", users[n][u])) for n, d in enumerate(docs) for u in range(5)]
    )
    for d in docs:
        await other.follow(d)
    events: list[list[Event]] = [
        [
            Relayed(f"m0/{n}.{u}", users[n][u], "CursorUpdate", _cursor(d, users[n][u]))
            for u in range(5)
        ]
        for n, d in enumerate(docs)
    ]
    assert redis.proc is not None
    pid = redis.proc.pid

    async def run(label: str, packed: Callable[[int], bytes]) -> None:
        await conn.call("CONFIG", "RESETSTAT")
        before = proc_cpu(pid)
        await _pipelined(conn, map(packed, range(count)))
        after = proc_cpu(pid)
        assert before is not None and after is not None
        cpu = after - before
        usec = await _script_usec(conn)
        print(
            f"{label}: script {usec / count:.1f} us, Redis CPU {cpu / count * 1e6:.1f} us per call"
        )

    args = ("cost", "cost:db0", *(["x"] * 13))
    floor = {
        "an empty script": "return 1",
        "four plain calls": "redis.call('GET', 'a') redis.call('HMGET', 'h', 's', 'f', 'c:x') "
        "redis.call('HSET', 'h', 'p:x', ARGV[3]) redis.call('PUBLISH', 'c', ARGV[4]) return 1",
    }
    for label, body in floor.items():
        sha = (await conn.call("SCRIPT", "LOAD", body)).decode()
        command: bytes = hiredis.pack_command(("EVALSHA", sha, 0, *args))
        await run(f"{label:>34}", partial(_same, command))
    for per_flush, per_doc in ((1, 1), (2, 1), (3, 1), (1, 3), (8, 2)):

        def flush(sent: int, per_flush: int = per_flush, per_doc: int = per_doc) -> bytes:
            groups: dict[str, list[Event]] = {}
            for j in range(per_flush):
                n = (sent * per_flush + j) % len(docs)
                groups[docs[n]] = events[n][:per_doc]
            return store.pack_flush(sent, groups)

        await run(f"a flush of {per_flush} documents x {per_doc} events", flush)
    conn.close()
    other.conn.close()


MEASURES = ("script", "throughput", "latency", "crash", "heal")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--down-for", type=float, default=10.0)
    parser.add_argument(
        "--only",
        action="append",
        choices=MEASURES,
        help="run only these measurements (repeatable; default: all)",
    )
    args = parser.parse_args()
    only = set(args.only or MEASURES)
    redis = RedisServer()
    redis.start()
    try:
        if "script" in only:
            await script_cost(redis, 10_000)
        if "throughput" in only:
            await throughput(redis, 50_000)
        if "latency" in only:
            await latency(redis, args.messages)
        if "crash" in only:
            await crash(redis, args.crashes)
        if "heal" in only:
            await heal(redis, args.down_for)
    finally:
        redis.close()


if __name__ == "__main__":
    asyncio.run(main())
