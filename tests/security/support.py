"""Helpers for the security tests: keys, tokens, refused handshakes, a raw WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cpc_signaling.client import Client
from cpc_signaling.protocol import JoinDocument
from cpc_signaling.tokens import mint_token

from ..helpers import TIMEOUT, new_id, receive_until

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
TS = "2023-01-01T00:00:00Z"


async def fill_over_http(http: str, key: str, doc: str, count: int, size: int) -> None:
    """Store ``count`` annotations of ``size`` characters in ``doc`` through the HTTP API
    of the server at ``http`` (API key ``key``; a self-signed TLS server's too)."""
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(ssl=False)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        for i in range(count):
            body = frame(
                "Annotation",
                document_id=doc,
                user_id=new_id(),
                position={"line": i, "column": 0},
                content="a" * size,
                timestamp=TS,
            )
            url = f"{http}/api/documents/{doc}/messages"
            async with session.post(url, data=body) as response:
                assert response.status == 202, await response.text()


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({kind: fields})


def token(sub: str, **kwargs: Any) -> str:
    kwargs.setdefault("secret", SECRET)
    return mint_token(sub=sub, **kwargs)


def rsa_keypair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pems(key)


def ec_keypair() -> tuple[bytes, bytes]:
    return _pems(ec.generate_private_key(ec.SECP256R1()))


def _pems(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@dataclass
class Outcome:
    """What a client saw on a connection: the frames, then the close code."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def errors(self) -> list[dict[str, str]]:
        return [f["Error"] for f in self.frames if "Error" in f]


async def connect_and_collect(
    url: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    send: list[str] = (),  # type: ignore[assignment]
    timeout: float = TIMEOUT,
) -> Outcome:
    """Open a WebSocket, send ``send``, read until the server closes it."""
    outcome = Outcome()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, params=params, headers=headers, autoclose=True) as ws,
    ):
        for text in send:
            await ws.send_str(text)
        async with asyncio.timeout(timeout):
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    outcome.frames.append(json.loads(msg.data))
        outcome.close_code = ws.close_code
    return outcome


async def healthy(http: str) -> None:
    """Wait for /healthz (the server's loop runs; its signal handlers are installed)."""
    async with aiohttp.ClientSession() as session, session.get(f"{http}/healthz") as response:
        assert response.status == 200


async def read_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT) -> Any:
    msg = await ws.receive(timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def join_raw(ws: aiohttp.ClientWebSocketResponse, doc: str, user: str) -> list[Any]:
    """Send a JoinDocument and read the snapshot up to and including the acknowledgement."""
    await ws.send_str(frame("JoinDocument", document_id=doc, user_id=user))
    ack = {"JoinDocument": {"document_id": doc, "user_id": user}}
    got = []
    while True:
        got.append(await read_json(ws))
        if got[-1] == ack:
            return got


# -- a raw WebSocket client whose reading the test controls ---------------------------------


class RawWebSocket:
    """A WebSocket client on a plain non-blocking socket with a small receive buffer.

    It reads only when told to, so a test can make a real slow reader: while it
    does not read, the kernel buffers fill up and the server's writes back up.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, url: str, *, rcvbuf: int = 4096, path_query: str = "") -> RawWebSocket:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: window
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path}{path_query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        raw = cls(sock)
        head = await raw._read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        return raw

    async def _fill(self) -> bool:
        chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    async def _read_until(self, marker: bytes) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            if not await self._fill():
                raise ConnectionError("closed during handshake")
        head = bytes(self._buffer[: end + len(marker)])
        del self._buffer[: end + len(marker)]
        return head

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    def _parse_one(self) -> tuple[int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
        offset = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from("!H", buf, 2)
            offset = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from("!Q", buf, 2)
            offset = 10
        if len(buf) < offset + n:
            return None
        payload = bytes(buf[offset : offset + n])
        del buf[: offset + n]
        return opcode, payload

    async def frames(self, timeout: float) -> AsyncIterator[tuple[int, bytes]]:
        """Frames as they arrive; stops at a close frame, EOF or ``timeout`` of silence."""
        while True:
            parsed = self._parse_one()
            if parsed is not None:
                opcode, payload = parsed
                if opcode == 0x8:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                    return
                yield opcode, payload
                continue
            try:
                async with asyncio.timeout(timeout):
                    if not await self._fill():
                        return
            except TimeoutError:
                return

    async def read_json_until_quiet(self, quiet: float) -> list[dict[str, Any]]:
        return [json.loads(p) async for op, p in self.frames(quiet) if op == 0x1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def raw_member(
    url: str, watcher: Client, doc: str, user: str, *, path_query: str = ""
) -> RawWebSocket:
    """A :class:`RawWebSocket` (4 KiB receive buffer, read only when the test reads) that
    joined ``doc`` as ``user``: returned once ``watcher`` saw the join. Closed if that
    fails; else the caller closes it."""
    raw = await RawWebSocket.connect(url, path_query=path_query)
    try:
        await raw.send_text(frame("JoinDocument", document_id=doc, user_id=user))
        await receive_until(watcher, lambda m: m == JoinDocument(document_id=doc, user_id=user))
    except BaseException:
        raw.close()
        raise
    return raw
