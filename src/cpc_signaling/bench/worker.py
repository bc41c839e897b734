"""The load generator's worker process: raw WebSocket connections that join, send and count.

A worker is one OS process with its own event loop (uvloop when installed). It
speaks just enough RFC 6455 to be cheap per message: frames are parsed by a
header walk, and the fields the bench needs (the sender's sequence number and
index, and the timestamp) are pulled out of every complete frame of a read with
one regular expression, in C. Outgoing frames are masked with the all-zero key
(valid, and it makes masking free; the server unmasks the same way).

Each bench message is a ``CursorUpdate`` (or ``PresenceUpdate``) whose
``line`` is the sender's sequence number and ``column`` its global index, so
loss, duplicates and reordering are counted per (receiver, sender), whatever
user ids the tokens impose. ``timestamp`` is the send time, RFC 3339 with
microseconds; latency is receive time minus that (same clock on one machine).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import os
import re
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlsplit

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MASK0 = b"\x00\x00\x00\x00"
_HDR16 = struct.Struct("!BBH").pack
_HDR64 = struct.Struct("!BBQ").pack

# The fields the bench reads, as this server encodes them (struct field order).
_CURSOR_RE = re.compile(rb'"position":\{"line":(\d+),"column":(\d+)\},"timestamp":"([^"]+)"')
_PRESENCE_RE = re.compile(rb'"cursor":\{"line":(\d+),"column":(\d+)\}.*?"timestamp":"([^"]+)"')
_MAX_GAP = 100_000  # a larger jump in sequence is counted as loss without remembering each gap


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked (all-zero key) client frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, 0x80 | n)) + _MASK0 + payload
    if n < 65536:
        return _HDR16(0x80 | opcode, 0x80 | 126, n) + _MASK0 + payload
    return _HDR64(0x80 | opcode, 0x80 | 127, n) + _MASK0 + payload


class Clock:
    """RFC 3339 UTC timestamps with microseconds, and back, cheaply (cached per minute)."""

    __slots__ = ("_minute", "_minutes", "_prefix")

    def __init__(self) -> None:
        self._minute = -1
        self._prefix = ""
        self._minutes: dict[bytes, float] = {}

    def stamp(self, t: float) -> str:
        minute = int(t // 60)
        if minute != self._minute:
            self._minute = minute
            self._prefix = dt.datetime.fromtimestamp(minute * 60, dt.UTC).strftime("%Y-%m-%dT%H:%M")
        sec = min(t - minute * 60, 59.999999)
        return f"{self._prefix}:{sec:09.6f}Z"

    def parse(self, ts: bytes) -> float:
        if len(ts) == 27 and ts[26:] == b"Z":
            base = self._minutes.get(ts[:16])
            if base is None:
                parsed = dt.datetime.strptime(ts[:16].decode(), "%Y-%m-%dT%H:%M")
                base = self._minutes[ts[:16]] = parsed.replace(tzinfo=dt.UTC).timestamp()
            return base + float(ts[17:26])
        return dt.datetime.fromisoformat(ts.decode().replace("Z", "+00:00")).timestamp()


@dataclass
class Layout:
    """Who is who: connection ``g`` is user ``g % users`` of document ``g // users``."""

    url: str  # several, comma-separated: connection g goes to the (g % n)-th
    doc_ids: list[str]
    user_ids: list[str]  # one per connection (may repeat when a shared token imposes one)
    tokens: list[str | None]
    users: int
    payload: str = "cursor"
    # Which URL each connection uses (an index into ``url``'s list); None: round-robin,
    # connection g on the (g % n)-th.
    route: list[int] | None = None

    def instance(self, index: int) -> int:
        """The URL (instance) connection ``index`` uses."""
        n = self.url.count(",") + 1
        return self.route[index] if self.route is not None else index % n


@dataclass
class StepStats:
    sent: dict[int, int] = field(default_factory=dict)  # sender index -> messages sent
    unique: dict[int, int] = field(default_factory=dict)  # receiver index -> unique received
    delivered: int = 0
    duplicated: int = 0
    reordered: int = 0
    stray: int = 0  # from a sender outside the receiver's document: a routing bug
    errors: int = 0  # Error frames received
    closed: int = 0  # connections closed or lost during the step
    latencies: array[float] = field(default_factory=lambda: array("d"))
    # The latencies of deliveries to a receiver on another instance than the sender's.
    cross_latencies: array[float] = field(default_factory=lambda: array("d"))
    cpu: float = 0.0
    cpu_send: float = 0.0  # CPU seconds while sending: the saturation test
    cpu_wait: float = 0.0  # seconds runnable but not running: other load on the generator's CPU
    wall: float = 0.0
    send_lag: float = 0.0  # worst delay of the send schedule (generator falling behind)


class BenchConnection(asyncio.Protocol):
    """One WebSocket of the bench: handshake, join, then counted traffic."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.base = index - index % worker.layout.users  # first sender index of its document
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.joined = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last = [-1] * worker.layout.users  # last sequence seen per sender of the document
        self.missing: set[int] = set()
        self.unique = 0
        self.seq = 0
        self.key = b""
        self.close_code: int | None = None
        layout = worker.layout
        urls = layout.url.split(",")
        mine = layout.instance(index)
        self.url = urlsplit(urls[mine].strip())
        # Per sender of the document: is it on another instance (None: one instance only)?
        self.cross: list[bool] | None = None
        if len(urls) > 1:
            self.cross = [layout.instance(self.base + i) != mine for i in range(layout.users)]
        doc, user = layout.doc_ids[index // layout.users], layout.user_ids[index]
        self.user_id = user.encode()
        if layout.payload == "presence":
            self.prefix = (
                f'{{"PresenceUpdate":{{"document_id":"{doc}","user_id":"{user}","cursor":{{"line":'
            ).encode()
            self.suffix = (
                f',"column":{index}}},"selection":{{"start":{{"line":0,"column":0}},'
                f'"end":{{"line":0,"column":5}}}},"is_typing":true,"timestamp":"'
            ).encode()
        else:
            self.prefix = (
                f'{{"CursorUpdate":{{"document_id":"{doc}","user_id":"{user}","position":{{"line":'
            ).encode()
            self.suffix = f',"column":{index}}},"timestamp":"'.encode()
        self.join = client_frame(
            f'{{"JoinDocument":{{"document_id":"{doc}","user_id":"{user}"}}}}'.encode()
        )

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        url = self.url
        path = url.path or "/"
        query = url.query
        token = self.worker.layout.tokens[self.index]
        if token:
            query = f"{query}&token={token}" if query else f"token={token}"
        if query:
            path = f"{path}?{query}"
        self.key = base64.b64encode(os.urandom(16))
        self.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.worker.closing:
            self.worker.stats.closed += 1

    def data_received(self, data: bytes) -> None:
        worker = self.worker
        now = time.time()
        worker.last_rx = now
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self._upgrade(buf[: end + 4])
            buf = buf[end + 4 :]
        n = len(buf)
        pos = 0
        control: list[tuple[int, bytes]] | None = None
        while pos + 2 <= n:
            b1 = buf[pos + 1]
            size = b1 & 0x7F
            head = 2
            if size == 126:
                if pos + 4 > n:
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif size == 127:
                if pos + 10 > n:
                    break
                size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + size
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode != 0x1 or not self.joined:
                if control is None:
                    control = []
                control.append((opcode, buf[pos + head : end]))
            pos = end
        self.buf = buf[pos:]
        if pos == 0:
            return
        if control is not None:
            for opcode, payload in control:
                self._special(opcode, payload)
        if not self.joined:
            return
        stats = worker.stats
        matches = worker.pattern.findall(buf, 0, pos)
        stats.errors += buf.count(b'{"Error"', 0, pos)
        if not matches:
            return
        stats.delivered += len(matches)
        last = self.last
        base = self.base
        limit = len(last)
        parse = worker.clock.parse
        record = worker.latencies_on
        lat_append = stats.latencies.append
        cross = self.cross
        cross_append = stats.cross_latencies.append
        for line, column, ts in matches:
            seq = int(line)
            i = int(column) - base
            if not 0 <= i < limit:
                stats.stray += 1
                continue
            prev = last[i]
            if seq > prev:
                if seq != prev + 1 and seq - prev < _MAX_GAP and prev >= 0:
                    key = i << 32
                    self.missing.update(range(key | (prev + 1), key | seq))
                last[i] = seq
                self.unique += 1
            else:
                key = (i << 32) | seq
                if key in self.missing:
                    self.missing.discard(key)
                    stats.reordered += 1
                    self.unique += 1
                else:
                    stats.duplicated += 1
            if record:
                latency = now - parse(ts)
                lat_append(latency)
                if cross is not None and cross[i]:
                    cross_append(latency)

    # -- helpers ---------------------------------------------------------------

    def _upgrade(self, head: bytes) -> None:
        status = head.split(b"\r\n", 1)[0]
        expected = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())
        if b" 101 " not in status or expected not in head:
            if not self.ready.done():
                self.ready.set_exception(
                    ConnectionError(f"handshake refused: {status.decode(errors='replace')}")
                )
            if self.transport is not None:
                self.transport.close()
            return
        self.upgraded = True
        assert self.transport is not None
        self.transport.write(self.join)

    def _special(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if opcode == 0x1:  # text, before the join is acknowledged
            if payload.startswith(b'{"Error"'):
                self.worker.stats.errors += 1
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(payload.decode(errors="replace")))
            elif (
                payload.startswith(b'{"JoinDocument"')
                and self.user_id in payload
                and not self.ready.done()
            ):
                self.joined = True
                self.ready.set_result(None)
        elif opcode == 0x9 and transport is not None:  # ping
            transport.write(client_frame(payload, 0xA))
        elif opcode == 0x8:  # close
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if transport is not None:
                transport.write(client_frame(payload[:2], 0x8))
                transport.close()

    def send_next(self, stamp: str) -> None:
        """Send the next message of this connection's sequence."""
        self.send_seq(self.seq, stamp)
        self.seq += 1

    def send_seq(self, seq: int, stamp: str) -> None:
        """Send a message numbered ``seq`` (tests use it to send gaps, repeats, swaps)."""
        transport = self.transport
        if transport is not None:
            payload = b'%s%d%s%s"}}' % (self.prefix, seq, self.suffix, stamp.encode())
            transport.write(client_frame(payload))


class Worker:
    """One process's share of the connections, driven by commands from the parent."""

    def __init__(self, layout: Layout, indexes: list[int]) -> None:
        self.layout = layout
        self.indexes = indexes
        self.conns: list[BenchConnection] = []
        self.stats = StepStats()
        self.clock = Clock()
        self.pattern = _PRESENCE_RE if layout.payload == "presence" else _CURSOR_RE
        self.latencies_on = False
        self.closing = False
        self.last_rx = 0.0

    async def connect(self, concurrency: int = 64) -> tuple[int, list[str]]:
        """Open and join every connection; returns (how many failed, first few reasons)."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(index: int) -> None:
            async with gate:
                conn = BenchConnection(self, index)
                url = conn.url
                host = url.hostname or "127.0.0.1"
                port = url.port or (443 if url.scheme == "wss" else 80)
                ssl: Any = True if url.scheme == "wss" else None
                try:
                    await loop.create_connection(lambda: conn, host, port, ssl=ssl)
                    await asyncio.wait_for(conn.ready, 30)
                except (OSError, ConnectionError, TimeoutError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    if conn.transport is not None:
                        conn.transport.close()
                    return
                self.conns.append(conn)

        await asyncio.gather(*(one(i) for i in self.indexes))
        self.conns.sort(key=lambda c: c.index)
        return len(failures), failures[:3]

    async def run_step(
        self, rate: float, start_at: float, duration: float, senders: range | None = None
    ) -> StepStats:
        """Send at ``rate`` per connection from ``start_at`` for ``duration`` s; then drain.

        ``senders``: only the connections with these indexes send (all receive)."""
        seq0 = self.begin_step()
        stats = self.stats
        conns = [c for c in self.conns if senders is None or c.index in senders]
        count = len(conns)
        clock = self.clock
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = sum(os.times()[:2])
        wait0 = run_queue_wait(os.getpid())
        t0 = time.time()
        self.latencies_on = True
        total_rate = rate * count
        sent = 0
        if total_rate > 0 and count:
            end = t0 + duration
            while True:
                now = time.time()
                if now >= end:
                    break
                due = int((now - t0) * total_rate) + 1
                if due > sent:
                    stats.send_lag = max(stats.send_lag, now - (t0 + sent / total_rate))
                    stamp = clock.stamp(now)
                    for m in range(sent, due):
                        conns[m % count].send_next(stamp)
                    sent = due
                # Sleep to the next due message, but at least 1 ms (the loop's timer
                # resolution: shorter sleeps spin) and at most 5 ms.
                wake = t0 + sent / total_rate
                await asyncio.sleep(min(max(wake - time.time(), 0.001), 0.005))
        else:
            await asyncio.sleep(duration)
        stats.cpu_send = sum(os.times()[:2]) - cpu0
        # Drain: wait until nothing has arrived for a while (or a hard limit).
        drain_until = time.time() + 15.0
        while time.time() < drain_until:
            quiet = time.time() - max(self.last_rx, t0 + duration)
            if quiet > 0.5:
                break
            await asyncio.sleep(0.1)
        self.latencies_on = False
        stats.wall = time.time() - t0
        stats.cpu = sum(os.times()[:2]) - cpu0
        wait1 = run_queue_wait(os.getpid())
        if wait0 is not None and wait1 is not None:
            stats.cpu_wait = wait1 - wait0
        return self.end_step(seq0)

    def begin_step(self) -> dict[int, int]:
        """Reset the counts; returns each connection's sequence number at the start."""
        self.stats = StepStats()
        seq0 = {}
        for conn in self.conns:
            conn.unique = 0
            conn.missing.clear()
            seq0[conn.index] = conn.seq
        return seq0

    def end_step(self, seq0: dict[int, int]) -> StepStats:
        """The step's counts: what each connection sent since ``seq0`` and received."""
        stats = self.stats
        for conn in self.conns:
            stats.sent[conn.index] = conn.seq - seq0[conn.index]
            stats.unique[conn.index] = conn.unique
        return stats

    def close(self) -> None:
        self.closing = True
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.write(client_frame(b"\x03\xe8", 0x8))
                conn.transport.close()


def run_queue_wait(pid: int) -> float | None:
    """Seconds ``pid`` has spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def raise_file_limit() -> None:
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(layout: Layout, indexes: list[int], pipe: Connection, cpus: list[int]) -> None:
    """Entry point of a worker process: connect, then obey the parent's commands."""
    if cpus:
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setaffinity(0, cpus)
    raise_file_limit()
    run: Callable[[Any], Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(_worker(layout, indexes, pipe))


async def _worker(layout: Layout, indexes: list[int], pipe: Connection) -> None:
    worker = Worker(layout, indexes)
    loop = asyncio.get_running_loop()
    failed, reasons = await worker.connect()
    pipe.send(("ready", len(worker.conns), failed, reasons))
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command[0] == "run":
            _, rate, start_at, duration, senders = command
            stats = await worker.run_step(rate, start_at, duration, senders)
            pipe.send(("stats", stats))
        else:
            worker.close()
            await asyncio.sleep(0.2)
            pipe.send(("closed",))
            return
