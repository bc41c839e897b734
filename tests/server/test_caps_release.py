"""Caps are released when the server lets a connection go, not when its socket goes.

When the server decides a connection is over (here: its error budget is spent), its
leaves are announced at once, but its socket may linger in the closing handshake for
up to ``CLOSE_TIMEOUT`` if the peer does not answer the close. The user's per-user
cap counts live connections: a reconnect right away is admitted. ``--max-connections``
counts sockets still open (docs/security.md): the lingering socket holds its slot until
it is gone (aiohttp; under ASGI the ASGI server owns the lingering close, so the slot
is held until the app's ASGI call ends). Real sockets; the closed peer never reads nor
answers.
"""

from __future__ import annotations

from cpc_signaling.protocol import JoinDocument, LeaveDocument
from cpc_signaling.tokens import mint_token

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, RunningServer, new_id, receive_until, running_aiohttp_server, until
from ..security.support import RawWebSocket, raw_member

SECRET = "s" * 40


async def kill_by_error_budget(srv: RunningServer, doc: str, user: str, token: str) -> RawWebSocket:
    """A connection of ``user`` in ``doc``, closed by the server (1008, error budget) while
    its peer never reads nor answers the close; returns once its leave was announced."""
    watcher_user = new_id()
    watcher = srv.client(watcher_user, token=mint_token(sub=watcher_user, secret=SECRET))
    raw: RawWebSocket | None = None
    try:
        async with watcher:
            await watcher.join(doc)
            raw = await raw_member(srv.url, watcher, doc, user, path_query=f"?token={token}")
            for _ in range(21):
                await raw.send_text("garbage")
            await receive_until(
                watcher, lambda m: m == LeaveDocument(document_id=doc, user_id=user)
            )
        if srv.kind == "aiohttp":  # under ASGI the ASGI server owns the lingering socket
            # The watcher is gone; the raw socket, never answering the close, still holds
            # its slot: what follows happens while it lingers.
            await until(lambda: len(srv.service.admission.sockets) == 1)
    except BaseException:
        if raw is not None:
            raw.close()
        raise
    return raw


async def test_a_user_at_the_cap_reconnects_while_its_dead_connection_lingers(
    server_factory: ServerFactory,
) -> None:
    async with server_factory(jwt_secret=SECRET, max_connections_per_user=1) as srv:
        doc, user = new_id(), new_id()
        token = mint_token(sub=user, secret=SECRET)
        raw = await kill_by_error_budget(srv, doc, user, token)
        try:
            # The raw peer never answers the close: its socket lingers, yet the user
            # holds no live connection and gets in again at once.
            again = srv.client(user, token=token, reconnect=False)
            async with again:
                snapshot = await again.join(doc)
                assert snapshot[-1] == JoinDocument(document_id=doc, user_id=user)
        finally:
            raw.close()


async def test_max_connections_counts_a_socket_lingering_in_its_closing_handshake() -> None:
    async with running_aiohttp_server(jwt_secret=SECRET, max_connections=2) as srv:
        doc, user = new_id(), new_id()
        raw = await kill_by_error_budget(srv, doc, user, mint_token(sub=user, secret=SECRET))
        try:
            # Two slots: the lingering socket holds one, this connection the other.
            other = new_id()
            async with srv.client(other, token=mint_token(sub=other, secret=SECRET)) as c:
                await c.join(doc)
                extra = await RawWebSocket.connect(
                    srv.url, path_query=f"?token={mint_token(sub=new_id(), secret=SECRET)}"
                )
                try:
                    got = await extra.read_json_until_quiet(TIMEOUT)
                finally:
                    extra.close()
                assert got and got[0]["Error"]["code"] == "CONNECTION_ERROR", got
                assert "server full" in got[0]["Error"]["message"]
        finally:
            raw.close()
