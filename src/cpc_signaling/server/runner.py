"""Process lifecycle: start, serve, drain on SIGTERM/SIGINT, exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl

from aiohttp import web

from .app import create_app, listen
from .config import Config
from .service import Service

log = logging.getLogger("cpc_signaling.server")


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then drain and return."""
    service = Service(config)
    _log_security(service)  # first: says "running OPEN" when there is no key
    await service.start()
    app = create_app(service)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    server = await listen(runner, config.host, config.port, ssl_context=tls_context(config))
    host, port = _bound_address(server, config)
    # Handlers before the "listening" line: whoever reads it may signal at once.
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    mode = f"redis {config.redis_url}" if config.redis_url else "in-memory state"
    # The address line is the contract's way to learn a --port 0 port: shown at any
    # level, and so are the lines saying where the demo is and whether the API is on.
    level = max(logging.INFO, logging.getLogger().getEffectiveLevel())
    secure = bool(config.tls_cert)
    log.log(
        level,
        "cpc-signaling listening on %s://%s:%d/ws (instance %s, %s)",
        "wss" if secure else "ws",
        host,
        port,
        service.instance_id,
        mode,
    )
    page = f"{'https' if secure else 'http'}://{_browsable(host)}:{port}/"
    if config.demo:
        log.log(level, "demo: open %s in a few browser tabs (--no-demo turns it off)", page)
    else:
        log.log(level, "demo: off (--no-demo); the JS client is at %sclient.js", page)
    if config.api_key:
        log.log(level, "HTTP API: on at %sapi/ (callers send 'Authorization: Bearer <key>')", page)
    else:
        log.log(level, "HTTP API: off (set --api-key to turn it on)")
    try:
        await stop.wait()
    finally:
        log.info("shutting down: announcing leaves and closing connections (1001)")
        server.close()  # stop accepting
        await service.drain()
        await service.close()
        await runner.cleanup()
        log.info("stopped")


def _log_security(service: Service) -> None:
    guard = service.guard
    if guard.auth.enabled:
        log.info("%s; %s", guard.auth.describe(), guard.origins.describe())
        if guard.auth.weak_secret:
            log.warning("--jwt-secret is shorter than 32 bytes: tokens can be brute-forced")
    else:
        log.warning("%s; %s", guard.auth.describe(), guard.origins.describe())


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context of ``--tls-cert``/``--tls-key`` (None: plain ws:// and http://)."""
    if not config.tls_cert and not config.tls_key:
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


def _bound_address(server: asyncio.Server, config: Config) -> tuple[str, int]:
    for sock in server.sockets:
        address = sock.getsockname()
        if isinstance(address, tuple) and len(address) >= 2:
            return config.host, int(address[1])
    return config.host, config.port


def _browsable(host: str) -> str:
    """An address a browser on this machine can open, for a wildcard listen address."""
    if host in ("0.0.0.0", "", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def tune_gc() -> None:
    """Fewer and shorter garbage-collector pauses for a long-running server process.

    Everything alive at start (modules, classes, configuration) lives as long as
    the process: ``gc.freeze`` takes it out of every later collection. The hot
    path frees its objects by reference counting, so collections can be rarer:
    measured with ``cpc-signaling bench`` (docs/performance.md), full collections
    paused the event loop 40-65 ms under load before, none happen in a run after.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run(config: Config) -> None:
    """Blocking entry point: uvloop when installed, then :func:`serve`."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
