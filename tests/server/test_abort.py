"""Giving up on a connection: the socket is reset and freed at once, and only once.

When the server gives up on a connection (its closing handshake did not finish
within ``CLOSE_TIMEOUT``, or its socket is stalled), it aborts the socket with
``SO_LINGER`` (on, 0): the kernel resets the connection and frees its send
buffer at once, instead of keeping an orphan in FIN-WAIT-1 that holds the unsent
data for minutes. Checked from the kernel's own table (``/proc/net/tcp``) against
a real server process (uvloop) and an in-process one (asyncio), with a raw
socket that never reads.

Ending a connection is idempotent: however many reasons to end it pile up (a
ping timeout, then the close deadline; an API disconnect during a close), its
leave is announced once, it is logged once, and counted once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
import struct
import sys
from pathlib import Path

import aiohttp
import pytest

from cpc_signaling.protocol import JoinDocument, LeaveDocument
from cpc_signaling.server.frontdoor import CLOSE_TIMEOUT

from ..conftest import ServerFactory
from ..helpers import (
    TIMEOUT,
    UNIT,
    _spawn,
    metric,
    new_id,
    receive_until,
    running_aiohttp_server,
    spawn_server,
    until,
    until_metric,
)
from ..security.support import (
    RawWebSocket,
    fill_over_http,
    frame,
    join_raw,
    raw_member,
    read_json,
)
from ..security.test_tls import self_signed
from .test_closing import fill

API_KEY = "k" * 40


def tcp_entries(local_port: int, remote_port: int) -> list[tuple[str, int]]:
    """(state, bytes in the send queue) of every socket from ``local_port`` to
    ``remote_port`` on loopback, as the kernel lists them (orphans included)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                found.append((state, int(queues.split(":")[0], 16)))
    return found


async def freed_at_once(port: int, client_port: int) -> None:
    """The server's socket to ``client_port`` is gone from the kernel within a second:
    reset, no orphan in FIN-WAIT-1 keeping its unsent data."""
    try:
        await until(lambda: not tcp_entries(port, client_port), 1.0 * UNIT)
    except TimeoutError:
        raise AssertionError(
            f"still held by the kernel (state, send queue): {tcp_entries(port, client_port)}"
        ) from None


async def test_an_aborted_stalled_socket_is_reset_and_freed_at_once() -> None:
    """A real process: a member that never reads nor answers pings is closed (1011),
    its closing handshake never finishes, and its socket is aborted after 2 s; no socket
    of that connection stays on the server's side, and its unsent data is freed."""
    server = await spawn_server(
        ["--ping-interval", "0.5", "--ping-timeout", "0.5"], {"CPC_API_KEY": API_KEY}
    )
    raw: RawWebSocket | None = None
    try:
        doc = new_id()
        # Its snapshot fills every buffer.
        await fill_over_http(server.http, API_KEY, doc, 300, 9000)
        port = int(server.http.rsplit(":", 1)[1])
        raw = await RawWebSocket.connect(server.url)  # 4 KiB receive buffer, never read
        client_port = raw.sock.getsockname()[1]
        await raw.send_text(frame("JoinDocument", document_id=doc, user_id=new_id()))
        # Its snapshot sits in the server's kernel send buffer.
        await until(lambda: any(q > 0 for _, q in tcp_entries(port, client_port)))
        # Ping timeout, then the close deadline: aborted.
        await until_metric(
            server.http, "cpc_close_timeouts_total", lambda n: n >= 1, 1.0 + CLOSE_TIMEOUT + TIMEOUT
        )
        # Reset at once: no orphan in FIN-WAIT-1 keeping the unsent snapshot.
        await freed_at_once(port, client_port)
        assert server.proc.poll() is None
    finally:
        if raw is not None:
            raw.close()
        server.stop()


async def test_in_process_an_aborted_socket_is_reset() -> None:
    """The same on the in-process server (asyncio's loop, not uvloop)."""
    async with running_aiohttp_server(ping_interval=0.5, ping_timeout=0.5) as srv:
        doc = new_id()
        fill(srv.service, doc, 3 << 20)
        port = int(srv.http.rsplit(":", 1)[1])
        async with srv.client() as watcher:
            await watcher.join(doc)
            stalled = new_id()
            raw = await raw_member(srv.url, watcher, doc, stalled)
            client_port = raw.sock.getsockname()[1]
            try:
                await receive_until(
                    watcher,
                    lambda m: m == LeaveDocument(document_id=doc, user_id=stalled),
                    timeout=TIMEOUT + 1.0,
                )
                aborted = srv.service.metrics.close_timeouts
                await until(lambda: aborted._value.get() == 1, CLOSE_TIMEOUT + TIMEOUT)
                await freed_at_once(port, client_port)
            finally:
                raw.close()


# -- ending is idempotent -------------------------------------------------------------


def tls_files(directory: Path) -> tuple[str, str]:
    cert, key = self_signed(directory)
    return str(cert), str(key)


async def tls_stalled_join(port: int, doc: str, user: str) -> asyncio.StreamWriter:
    """A TLS WebSocket client with a 4 KiB receive buffer that joins ``doc`` and never
    reads again (its writer, to abort it at the end)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=context, server_hostname="127.0.0.1"
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = frame("JoinDocument", document_id=doc, user_id=user).encode()
    mask = os.urandom(4)
    writer.write(
        struct.pack("!BB", 0x81, 0x80 | len(payload))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    return writer


# `cpc-signaling serve` on asyncio's own loop, as where uvloop is not installed.
WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; sys.argv[0] = 'cpc-signaling'; "
    "from cpc_signaling.cli import main; sys.exit(main())"
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_a_stalled_tls_member_given_up_on_ends_once(tmp_path: Path, loop: str) -> None:
    """TLS (the server's own ``--tls-cert``), a real process. A member that never reads
    is disconnected by the API (1008), disconnected again while its close lingers, and
    aborted 2 s after the first decision. Its end happens once: one leave announced, one
    close and one abort logged and counted, and its handler ends cleanly (before:
    finishing the aborted TLS socket raised, an ERROR traceback, and what follows the
    socket's end was skipped)."""
    cert, key = tls_files(tmp_path)
    server = await _spawn(
        [
            sys.executable,
            *(("-c", WITHOUT_UVLOOP) if loop == "asyncio" else ("-m", "cpc_signaling")),
            *("serve", "--port", "0", "--log-level", "debug", "--tls-cert", cert, "--tls-key", key),
        ],
        {"CPC_API_KEY": API_KEY},
        15.0,
        r"wss://[^\s]+",
    )
    url = server.url
    http = url.replace("wss://", "https://").removesuffix("/ws")
    port = int(http.rsplit(":", 1)[1])
    stalled_writer: asyncio.StreamWriter | None = None
    doc, watcher_user, stalled = new_id(), new_id(), new_id()
    try:
        await fill_over_http(http, API_KEY, doc, 300, 9000)  # its snapshot fills every buffer
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=False)
        ) as api:

            async def disconnect() -> int:
                async with api.post(f"{http}/api/users/{stalled}/disconnect") as response:
                    assert response.status == 200
                    closed: int = (await response.json())["closed_here"]
                    return closed

            async with api.ws_connect(url) as watcher:
                await join_raw(watcher, doc, watcher_user)
                stalled_writer = await tls_stalled_join(port, doc, stalled)
                joined = {"JoinDocument": {"document_id": doc, "user_id": stalled}}
                while await read_json(watcher) != joined:
                    pass
                assert await disconnect() == 1
                leave = {"LeaveDocument": {"document_id": doc, "user_id": stalled}}
                got = [await read_json(watcher)]
                while got[-1] != leave:
                    got.append(await read_json(watcher))
                assert await disconnect() == 0  # during its close: nothing more to end
                # Given up on 2 s after the decision; then its handler ends.
                await until(
                    lambda: any(
                        stalled in line and line.rstrip().endswith(" gone") for line in server.lines
                    ),
                    CLOSE_TIMEOUT + TIMEOUT,
                )
                # Whatever the server sent the watcher about it came before this echo.
                await watcher.send_str(
                    frame("LeaveDocument", document_id=doc, user_id=watcher_user)
                )
                own = {"LeaveDocument": {"document_id": doc, "user_id": watcher_user}}
                while got[-1] != own:
                    got.append(await read_json(watcher))
                assert got.count(leave) == 1, got
                assert await metric(http, "cpc_close_timeouts_total") == 1
                assert await metric(http, "cpc_closes_total") == 1
                assert await metric(http, "cpc_connections") == 1  # the watcher
    finally:
        if stalled_writer is not None:
            stalled_writer.transport.abort()
        server.stop()
    bad = [line for line in server.lines if "ERROR" in line or "Traceback" in line]
    assert not bad, "".join(server.lines[-40:])
    mine = [line for line in server.lines if stalled in line]
    assert sum("socket aborted" in line for line in mine) == 1, mine
    assert sum(line.rstrip().endswith(" gone") for line in mine) == 1, mine


def closes_total(service: object) -> float:
    metric_ = service.metrics.closes  # type: ignore[attr-defined]
    return sum(
        float(sample.value)
        for family in metric_.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def test_a_second_end_during_a_close_is_nothing(
    server_factory: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Both transports: a stalled member is disconnected, disconnected again while its
    close lingers, then given up on: one leave, one close and one abort counted, no
    error (under ASGI a second cancel of the ASGI call would escape it)."""
    caplog.set_level(logging.INFO)
    async with server_factory() as srv:
        service = srv.service
        doc, stalled = new_id(), new_id()
        fill(service, doc, 3 << 20)
        async with srv.client() as watcher:
            await watcher.join(doc)
            raw = await raw_member(srv.url, watcher, doc, stalled)
            try:
                assert await service.disconnect(stalled) == 1
                got = await receive_until(
                    watcher, lambda m: m == LeaveDocument(document_id=doc, user_id=stalled)
                )
                assert await service.disconnect(stalled) == 0
                aborted = service.metrics.close_timeouts
                await until(lambda: aborted._value.get() == 1, CLOSE_TIMEOUT + TIMEOUT)
                async with srv.client() as marker:  # announced after anything sent before
                    await marker.join(doc)
                    got += await receive_until(
                        watcher,
                        lambda m: m == JoinDocument(document_id=doc, user_id=marker.user_id),
                    )
            finally:
                raw.close()
            assert got.count(LeaveDocument(document_id=doc, user_id=stalled)) == 1
            assert closes_total(service) == 1
            assert aborted._value.get() == 1
            assert [s.user_id for s in service.sessions.values()] == [watcher.user_id]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    mine = [r.getMessage() for r in caplog.records if stalled in r.getMessage()]
    assert sum("socket aborted" in m for m in mine) == 1, mine
