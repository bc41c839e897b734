"""Real ``cpc-signaling serve`` processes sharing a private Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import aiohttp

from ..helpers import TIMEOUT, ServerProcess, new_id, spawn_server
from .server import RedisServer

FAST = ("--heartbeat-interval", "0.3", "--instance-timeout", "1.2")


async def spawn_instances(
    redis: RedisServer,
    count: int,
    *extra: str,
    prefix: str | None = None,
    check_ready: bool = True,
    first: int = 0,
    url: str | None = None,
) -> list[ServerProcess]:
    """``count`` instances on one Redis (short heartbeat and timeout unless ``extra``
    says otherwise), started concurrently; each is ready when this returns. Their ids
    are ``inst{first}``, ``inst{first + 1}``, ...; ``url`` overrides ``redis.url``."""
    prefix = prefix or "t" + new_id()[:8]
    args: Sequence[str] = (
        "--redis-url", url or redis.url, "--redis-prefix", prefix, *FAST,
        "--log-level", "info", *extra,
    )  # fmt: skip
    servers = list(
        await asyncio.gather(
            *(
                spawn_server([*args, "--instance-id", f"inst{n}"])
                for n in range(first, first + count)
            )
        )
    )
    if check_ready:
        try:
            for server in servers:
                await wait_ready(server, True)
        except BaseException:
            for server in servers:
                server.kill()
            raise
    return servers


@contextlib.asynccontextmanager
async def instances(
    redis: RedisServer, count: int, *extra: str
) -> AsyncIterator[list[ServerProcess]]:
    servers = await spawn_instances(redis, count, *extra)
    async with running(servers):
        yield servers


@contextlib.asynccontextmanager
async def running(servers: list[ServerProcess]) -> AsyncIterator[list[ServerProcess]]:
    """Kill ``servers`` at the end; print their logs when the body failed."""
    try:
        yield servers
    except BaseException:
        # The instances' own logs are the first thing a failure here needs.
        for n, server in enumerate(servers):
            print(f"--- instance {n} log (last 40 lines) ---\n" + "".join(server.lines[-40:]))
        raise
    finally:
        for server in servers:
            server.kill()
        for server in servers:
            server.proc.wait(5)


def followers(redis: RedisServer, prefix: str, doc: str) -> list[str]:
    """Instances a document's events are published to (``P:doc:D`` field ``f``)."""
    reply = redis.command("HGET", f"{prefix}:doc:{doc}", "f")
    if reply.startswith(b"$-1") or reply.startswith(b"_"):
        return []
    return reply.split(b"\r\n")[1].decode().split()


async def readyz(server: ServerProcess) -> int:
    async with aiohttp.ClientSession() as session, session.get(server.http + "/readyz") as r:
        return r.status


async def wait_ready(server: ServerProcess, ready: bool, timeout: float = 3 * TIMEOUT) -> float:
    """Poll /readyz until it says ``ready``; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(timeout):
        while (await readyz(server) == 200) != ready:  # noqa: ASYNC110 (an HTTP poll)
            await asyncio.sleep(0.02)
    return loop.time() - started
