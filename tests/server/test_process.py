"""The real process: `cpc-signaling serve`, its flags and variables, and SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp

from cpc_signaling.client import Client, ClientError
from cpc_signaling.protocol import JoinDocument, LeaveDocument
from cpc_signaling.server.config import Config

from ..helpers import TIMEOUT, new_id, spawn_server


async def test_sigterm_drains_leaves_closes_1001_and_exits_0() -> None:
    server = await spawn_server()
    try:
        doc = new_id()
        a = Client(server.url, new_id(), reconnect=False)
        b = Client(server.url, new_id(), reconnect=False)
        await a.connect()
        await b.connect()
        await a.join(doc)
        await b.join(doc)
        assert await a.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=b.user_id)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        seen: dict[str, list[object]] = {}
        for client in (a, b):
            got = seen[client.user_id] = []
            with contextlib.suppress(ClientError):  # the stream ends with the close
                while True:
                    got.append(await client.receive(TIMEOUT))
        elapsed = time.monotonic() - started
        # a is drained first, as if it had sent LeaveDocument: b, still a member, is told;
        # then b leaves with nobody left to tell. Nothing else, nothing twice.
        assert seen == {
            a.user_id: [],
            b.user_id: [LeaveDocument(document_id=doc, user_id=a.user_id)],
        }
        assert a.close_code == 1001 and b.close_code == 1001
        rc = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 10)
        assert rc == 0
        assert elapsed < 2.0 + 1.0  # the contract's 2 s, plus slack for a loaded machine
        await a.close()
        await b.close()
    finally:
        server.kill()


async def test_sigint_exits_0_and_refuses_new_connections_after() -> None:
    server = await spawn_server()
    try:
        server.signal(signal.SIGINT)
        rc = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 10)
        assert rc == 0
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(server.http + "/healthz") as resp:
                    raise AssertionError(f"still serving: {resp.status}")
            except aiohttp.ClientConnectionError:
                pass
    finally:
        server.kill()


async def test_environment_variables_configure_the_server() -> None:
    server = await spawn_server(env={"CPC_MAX_MESSAGE_BYTES": "512", "CPC_LOG_FORMAT": "json"})
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
            await ws.send_str("x" * 600)
            await ws.receive(TIMEOUT)
            assert ws.close_code == 1009
        assert any(line.startswith("{") and "ws://" in line for line in server.lines)
    finally:
        server.stop()


def test_flags_win_over_variables_over_defaults() -> None:
    env = {"CPC_PORT": "9000", "CPC_MAX_CONTENT_CHARS": "50", "CPC_REDIS_URL": ""}
    config = Config.from_args(["--port", "9100"], env)
    assert config.port == 9100
    assert config.max_content_chars == 50
    assert config.redis_url is None
    assert config.host == "127.0.0.1"
    assert Config.from_args([], {}).port == 8765


async def test_address_line_is_printed_at_any_log_level() -> None:
    server = await spawn_server(["--log-level", "error"])
    try:
        assert server.url.startswith("ws://127.0.0.1:")
    finally:
        assert server.stop() == 0
