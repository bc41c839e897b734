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
from collections.abc import Callable

import aiohttp

from cpc_signaling.protocol import JoinDocument, LeaveDocument

from ..helpers import TIMEOUT, UNIT, new_id, receive_until, running_server, spawn_server
from ..security.support import RawWebSocket, frame
from ..security.test_snapshot_bound import fill_over_http
from .test_closing import fill, until

API_KEY = "k" * 40
CLOSE_TIMEOUT = 2.0


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


async def metric(http: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{http}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def wait_for(check: Callable[[], object], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


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
        await fill_over_http(server, doc, 300, 9000)  # its snapshot fills every buffer
        port = int(server.http.rsplit(":", 1)[1])
        raw = await RawWebSocket.connect(server.url)  # 4 KiB receive buffer, never read
        client_port = raw.sock.getsockname()[1]
        await raw.send_text(frame("JoinDocument", document_id=doc, user_id=new_id()))
        # Its snapshot sits in the server's kernel send buffer.
        await wait_for(lambda: any(q > 0 for _, q in tcp_entries(port, client_port)), TIMEOUT)
        # Ping timeout, then the close deadline: aborted.
        async with asyncio.timeout(1.0 + CLOSE_TIMEOUT + TIMEOUT):
            while await metric(server.http, "cpc_close_timeouts_total") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        # Reset at once: no orphan in FIN-WAIT-1 keeping the unsent snapshot.
        try:
            await wait_for(lambda: not tcp_entries(port, client_port), 1.0 * UNIT)
        except TimeoutError:
            raise AssertionError(
                f"still held by the kernel (state, send queue): {tcp_entries(port, client_port)}"
            ) from None
        assert server.proc.poll() is None
    finally:
        if raw is not None:
            raw.close()
        server.stop()


async def test_in_process_an_aborted_socket_is_reset() -> None:
    """The same on the in-process server (asyncio's loop, not uvloop)."""
    async with running_server(ping_interval=0.5, ping_timeout=0.5) as srv:
        doc = new_id()
        fill(srv.service, doc, 3 << 20)
        port = int(srv.http.rsplit(":", 1)[1])
        async with srv.client() as watcher:
            await watcher.join(doc)
            raw = await RawWebSocket.connect(srv.url)
            client_port = raw.sock.getsockname()[1]
            stalled = new_id()
            try:
                await raw.send_text(frame("JoinDocument", document_id=doc, user_id=stalled))
                await receive_until(
                    watcher, lambda m: m == JoinDocument(document_id=doc, user_id=stalled)
                )
                await receive_until(
                    watcher,
                    lambda m: m == LeaveDocument(document_id=doc, user_id=stalled),
                    timeout=TIMEOUT + 1.0,
                )
                aborted = srv.service.metrics.close_timeouts
                await until(lambda: aborted._value.get() == 1, CLOSE_TIMEOUT + TIMEOUT)
                try:
                    await wait_for(lambda: not tcp_entries(port, client_port), 1.0 * UNIT)
                except TimeoutError:
                    raise AssertionError(
                        f"still held by the kernel: {tcp_entries(port, client_port)}"
                    ) from None
            finally:
                raw.close()
