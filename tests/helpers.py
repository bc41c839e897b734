"""Shared test helpers: real servers on loopback, in-process or as subprocesses."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cpc_signaling.client import Client, Reconnected
from cpc_signaling.protocol import Message
from cpc_signaling.server import Config, Service, create_app, listen
from cpc_signaling.server.hooks import Hooks

# Timeouts are multiples of one unit; CPC_TEST_TIMEOUT_UNIT scales them on slow machines.
UNIT = float(os.environ.get("CPC_TEST_TIMEOUT_UNIT", "1.0"))
TIMEOUT = 5 * UNIT


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class RunningServer:
    service: Service
    runner: web.AppRunner | None  # None for the ASGI app under uvicorn
    url: str
    http: str
    kind: str = "aiohttp"  # or "asgi"

    def client(self, user_id: str | None = None, **kwargs: Any) -> Client:
        return Client(self.url, user_id or new_id(), **kwargs)


@contextlib.asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[RunningServer]:
    """An in-process server on a free port with ``Config`` overrides (and ``hooks=``,
    the application's hooks: docs/hooks.md).

    ``CPC_TEST_TRANSPORT=asgi`` makes it the ASGI app under uvicorn instead: a
    parity run of every test over the other transport (docs/embedding.md).
    """
    asgi = os.environ.get("CPC_TEST_TRANSPORT") == "asgi"
    async with (running_asgi_server if asgi else running_aiohttp_server)(**overrides) as running:
        yield running


@contextlib.asynccontextmanager
async def running_aiohttp_server(**overrides: Any) -> AsyncIterator[RunningServer]:
    """:func:`running_server` on aiohttp whatever ``CPC_TEST_TRANSPORT`` says: for what
    only the standalone server owns (its sockets' aborts and slots)."""
    hooks: Hooks | None = overrides.pop("hooks", None)
    config = replace(Config(port=0), **overrides)
    service = Service(config, hooks=hooks)
    await service.start()
    runner = web.AppRunner(create_app(service), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    server = await listen(runner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield RunningServer(
            service, runner, f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
        )
    finally:
        server.close()
        await service.drain()
        await service.close()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving_uvicorn(app: Any, **options: Any) -> AsyncIterator[int]:
    """Any ASGI ``app`` under uvicorn (websockets-sansio), in-process; yields its port."""
    import socket

    import uvicorn

    settings: dict[str, Any] = {
        "ws": "websockets-sansio",
        "lifespan": "on",
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 1,
        **options,
    }
    uv_config = uvicorn.Config(app, **settings)
    uv_config.load()
    server = uvicorn.Server(uv_config)
    # Server.serve() would install signal handlers; run its steps without them.
    server.lifespan = uv_config.lifespan_class(uv_config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await server.startup(sockets=[sock])
    ticking = asyncio.create_task(server.main_loop())
    try:
        yield port
    finally:
        server.should_exit = True
        await ticking
        await server.shutdown(sockets=[sock])


@contextlib.asynccontextmanager
async def running_asgi_server(**overrides: Any) -> AsyncIterator[RunningServer]:
    """The ASGI app (``cpc_signaling.asgi``) under uvicorn, in-process on a free port.

    Same shape as :func:`running_server`; uvicorn gets the limits and pings the
    aiohttp server takes from ``Config`` (``--ws-ping-*``), and a frame size limit
    above the app's (``--ws-max-size``: the app closes with 1009 itself, with a
    lingering close; docs/embedding.md).
    """
    from cpc_signaling.asgi import create_app as create_asgi_app

    hooks: Hooks | None = overrides.pop("hooks", None)
    config = replace(Config(port=0), **overrides)
    app = create_asgi_app(config, hooks=hooks)
    async with serving_uvicorn(
        app,
        ws_max_size=4 * config.max_message_bytes,
        ws_ping_interval=config.ping_interval or None,
        ws_ping_timeout=config.ping_timeout or None,
    ) as port:
        try:
            yield RunningServer(
                app.service, None, f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", "asgi"
            )
        finally:
            await app.service.drain()  # 1001 to every client, as the standalone server does


SERVER_KINDS = {"aiohttp": running_server, "asgi": running_asgi_server}


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str
    http: str
    lines: list[str]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


async def spawn_server(
    args: Sequence[str] = (), env: dict[str, str] | None = None, timeout: float = 15.0
) -> ServerProcess:
    """``cpc-signaling serve --port 0 ARGS`` as a real subprocess; waits for its ws:// line."""
    return await _spawn(
        [sys.executable, "-m", "cpc_signaling", "serve", "--port", "0", *args],
        env,
        timeout,
        r"ws://[^\s]+",
    )


# The ASGI app as a uvicorn process: configured by CPC_* variables, like `serve`.
_ASGI_MODULE = """\
import os
from cpc_signaling.asgi import create_app
from cpc_signaling.server import Config

app = create_app(Config.from_args([], os.environ))
"""


@functools.cache
def _asgi_module_dir() -> str:
    where = tempfile.mkdtemp(prefix="cpc-asgi-")
    pathlib.Path(where, "cpc_asgi_app.py").write_text(_ASGI_MODULE)
    atexit.register(shutil.rmtree, where, True)
    return where


async def spawn_asgi_server(
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
    *,
    factory: bool = False,
) -> ServerProcess:
    """The ASGI app under ``uvicorn --port 0 ARGS`` as a real subprocess (``CPC_*``
    variables in ``env`` configure the app); waits for uvicorn's "running on" line.

    ``factory``: run it as documented, ``--factory cpc_signaling.asgi:from_environment``
    (which also sets up logging); else from a module that only builds the app.
    """
    where = _asgi_module_dir()
    app = ("--factory", "cpc_signaling.asgi:from_environment") if factory else ("cpc_asgi_app:app",)
    argv = [
        *(sys.executable, "-m", "uvicorn", *app, "--app-dir", where),
        *("--host", "127.0.0.1", "--port", "0", "--ws", "websockets-sansio", *args),
    ]
    server = await _spawn(argv, env, timeout, r"Uvicorn running on (http://[^\s]+)")
    server.url = server.http.replace("http://", "ws://") + "/ws"
    return server


async def _spawn(
    argv: Sequence[str], env: dict[str, str] | None, timeout: float, address: str
) -> ServerProcess:
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env
    )
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    assert proc.stdout is not None

    def read_until_address() -> str:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = re.search(address, line)
            if match:
                return match.group(match.lastindex or 0)
        raise RuntimeError("server exited before listening:\n" + "".join(lines))

    try:
        url = await asyncio.wait_for(loop.run_in_executor(None, read_until_address), timeout)
    except BaseException:
        # Never leave a server (or the reader thread blocked on its pipe) behind.
        proc.kill()
        proc.wait()
        raise

    def pump() -> None:  # keep the pipe drained; keep lines for assertions
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    # A daemon thread, not the loop's executor: a server that outlives its test must
    # not hold the event loop's shutdown (it waits for executor threads) forever.
    threading.Thread(target=pump, name=f"pump-{proc.pid}", daemon=True).start()
    http = url.replace("ws://", "http://").removesuffix("/ws")
    return ServerProcess(proc, url, http, lines)


async def receive_until(client: Client, predicate: Any, timeout: float = TIMEOUT) -> list[Message]:
    """Receive messages until ``predicate(message)`` is true; returns all received."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await client.receive()
            assert not isinstance(message, Reconnected), "unexpected reconnect"
            got.append(message)
            if predicate(message):
                return got


async def until(predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
    """Wait for ``predicate()`` to hold: state with no event to await (the server's own
    counters and maps, the kernel's socket table, another process's metrics: a
    predicate may return an awaitable, awaited each time)."""
    async with asyncio.timeout(timeout):
        while True:
            held = predicate()
            if inspect.isawaitable(held):
                held = await held
            if held:
                return
            await asyncio.sleep(0.02)


async def until_metric(
    http: str, name: str, holds: Callable[[float], bool], timeout: float = TIMEOUT
) -> None:
    """Wait until ``holds`` the value of :func:`metric` ``name`` of the server at ``http``
    (another process: its counters have no event to await)."""

    async def check() -> bool:
        return holds(await metric(http, name))

    await until(check, timeout)


async def metric(http: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` (those with ``labels``, if given) on the
    ``/metrics`` page of the server at ``http`` (a self-signed TLS server's too)."""
    connector = aiohttp.TCPConnector(ssl=False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{http}/metrics") as response,
    ):
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
