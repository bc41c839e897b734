"""Tokens stay out of logs and URLs.

A real server process of each transport is sent every way a token travels
(query string, subprotocol, Bearer header, refused and malformed requests that
carry one) with debug logging and uvicorn's access log on; then its whole
output is searched for the token. The ``cpc.token.<JWT>`` subprotocol keeps the
token out of the URL: the server selects ``cpc.v1`` and never echoes the token;
a Bearer header wins over it, and it wins over ``?token=``.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from cpc_signaling.protocol import ErrorCode

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, ServerProcess, new_id, spawn_asgi_server, spawn_server
from .support import SECRET, connect_and_collect, join_raw, token

HANDSHAKE = (
    "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; what comes back before it closes."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        async with asyncio.timeout(TIMEOUT):
            return await loop.sock_recv(sock, 4096)
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        sock.close()


@pytest.mark.parametrize("spawn", [spawn_server, spawn_asgi_server], ids=["aiohttp", "asgi"])
async def test_no_token_in_any_log_line(spawn: object) -> None:
    env = {"CPC_JWT_SECRET": SECRET, "CPC_ALLOWED_ORIGINS": "https://app.example"}
    server: ServerProcess = await spawn(["--log-level", "debug"], env)  # type: ignore[operator]
    user = new_id()
    secret_token = token(user)
    signature = secret_token.rsplit(".", 1)[1]
    try:
        port = int(server.http.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as session:
            # Accepted, three ways.
            for ws_kwargs in (
                {"params": {"token": secret_token}},
                {"protocols": ("cpc.v1", f"cpc.token.{secret_token}")},
                {"headers": {"Authorization": f"Bearer {secret_token}"}},
            ):
                async with session.ws_connect(server.url, **ws_kwargs) as ws:
                    await join_raw(ws, new_id(), user)
            # Refused, with the token in hand: a foreign origin, a bad token's signature.
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(
                    server.url,
                    params={"token": secret_token},
                    headers={"Origin": "https://evil.example"},
                )
            refused = await connect_and_collect(
                server.url, params={"token": secret_token[:-2] + "xx"}
            )
            assert refused.errors[0]["code"] == ErrorCode.AUTH_ERROR
        # Malformed requests carrying it, as any unauthenticated client can send.
        for target, extra in (
            (f"/ws?token={secret_token}\x01", ""),
            (f"/ws?token={secret_token}", "Bad Header: y\r\n"),
            (f"/ws?token={secret_token}", f"X-Long: {'a' * 9000}\r\n"),
            ("/ws", f"Sec-WebSocket-Protocol: cpc.token.{secret_token}\r\n"),
            ("/ws", f"Authorization: Bearer {secret_token}\r\nBad Header: y\r\n"),
        ):
            await raw_request(port, HANDSHAKE.format(target=target, extra=extra).encode("latin-1"))
    finally:
        assert server.stop() in (0, -15)  # uvicorn re-raises the SIGTERM it handled
    output = "".join(server.lines)
    assert "127.0.0.1" in output  # requests were logged...
    leaked = [line for line in server.lines if signature in line]
    assert not leaked, leaked  # ...without the token
    assert not [line for line in server.lines if " ERROR " in line or '"error"' in line]


async def test_the_subprotocol_carries_the_token_and_is_never_echoed(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(jwt_secret=SECRET) as srv, aiohttp.ClientSession() as session:
        user = new_id()
        offered = ("cpc.v1", f"cpc.token.{token(user)}")
        async with session.ws_connect(srv.url, protocols=offered) as ws:
            assert ws.protocol == "cpc.v1"
            assert ws._response.headers["Sec-WebSocket-Protocol"] == "cpc.v1"
            await join_raw(ws, new_id(), user)
        # cpc.v1 alone (no token anywhere) is selected, then refused as unauthenticated.
        refused = await connect_and_collect(srv.url)
        assert refused.errors[0]["code"] == ErrorCode.AUTH_ERROR and refused.close_code == 1008
        # A token offered without cpc.v1: the server could only select nothing. Refused
        # (400; under ASGI a refusal before the accept is the ASGI server's 403).
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await session.ws_connect(srv.url, protocols=(f"cpc.token.{token(user)}",))
        assert error.value.status == (403 if srv.kind == "asgi" else 400)


async def test_bearer_wins_over_the_subprotocol_which_wins_over_the_query(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(jwt_secret=SECRET) as srv, aiohttp.ClientSession() as session:
        bearer, offered, query = new_id(), new_id(), new_id()
        protocols = ("cpc.v1", f"cpc.token.{token(offered)}")
        async with session.ws_connect(
            srv.url,
            protocols=protocols,
            params={"token": token(query)},
            headers={"Authorization": f"Bearer {token(bearer)}"},
        ) as ws:
            await join_raw(ws, new_id(), bearer)
        async with session.ws_connect(
            srv.url, protocols=protocols, params={"token": token(query)}
        ) as ws:
            await join_raw(ws, new_id(), offered)
