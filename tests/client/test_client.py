"""The Python client against a real server: errors, identity, tokens, the presence map.

In-process servers for the protocol behaviour; a real ``cpc-signaling serve``
process, stopped and started again on the same port, for outages and restarts.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from cpc_signaling.client import Client, ClientError, JoinError, Reconnected, User
from cpc_signaling.protocol import (
    CursorUpdate,
    JoinDocument,
    LeaveDocument,
    Position,
    PresenceStatus,
    PresenceUpdate,
    Selection,
)

from ..helpers import TIMEOUT, UNIT, ServerProcess, new_id, running_server, spawn_server, until
from ..security.support import SECRET, token

# The client's reconnect backoff tops out at 1 s: a client is back within about a second
# of its server's return. A functional bound with room for a loaded machine.
REJOIN_BOUND = 2.0 * UNIT


# -- errors the server answers with ----------------------------------------------


async def test_a_token_for_another_user_fails_join_at_once_with_the_servers_error() -> None:
    async with running_server(jwt_secret=SECRET) as server:
        me, someone_else = new_id(), new_id()
        async with Client(server.url, me, token=token(someone_else), reconnect=False) as client:
            started = time.monotonic()
            with pytest.raises(JoinError) as caught:
                await client.join(new_id(), timeout=10 * TIMEOUT)
            assert time.monotonic() - started < TIMEOUT
            assert caught.value.code == "AUTH_ERROR"
            assert "is not this connection's user" in caught.value.message


async def test_a_missing_token_fails_join_with_auth_error_and_why() -> None:
    async with (
        running_server(jwt_secret=SECRET) as server,
        Client(server.url, new_id(), reconnect=False) as client,
    ):
        with pytest.raises(JoinError) as caught:
            await client.join(new_id(), timeout=10 * TIMEOUT)
        assert caught.value.code == "AUTH_ERROR"
        assert "missing token" in caught.value.message
        assert caught.value.error.code == "AUTH_ERROR"


async def test_a_refused_document_names_code_and_message_and_the_connection_lives() -> None:
    async with (
        running_server(max_documents_per_connection=1) as server,
        server.client() as client,
    ):
        await client.join(new_id())
        refused = new_id()
        with pytest.raises(JoinError) as caught:
            await client.join(refused)
        assert caught.value.code == "DOCUMENT_ERROR"
        assert refused in caught.value.message
        assert client.connected
        assert refused not in client.documents


def test_a_failed_first_connect_raises_one_clear_error_and_leaks_nothing() -> None:
    # A closed port: the script's whole stderr must be the one error, no "Unclosed ..." noise.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = f"""
import asyncio, uuid
from cpc_signaling.client import Client, ClientError
async def main():
    try:
        async with Client("ws://127.0.0.1:{port}/ws", str(uuid.uuid4())) as client:
            await client.join(str(uuid.uuid4()))
    except ClientError as exc:
        print("ERROR", exc)
asyncio.run(main())
import gc; gc.collect()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30 * UNIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"ERROR cannot connect to ws://127.0.0.1:{port}/ws"), line


# -- identity and tokens -------------------------------------------------------------


async def test_user_id_comes_from_the_tokens_subject() -> None:
    async with running_server(jwt_secret=SECRET) as server:
        sub = new_id().upper()
        async with Client(server.url, token=token(sub), reconnect=False) as client:
            assert client.user_id == sub.lower()
            snapshot = await client.join(new_id())
            assert snapshot[-1] == JoinDocument(
                document_id=snapshot[-1].document_id,  # type: ignore[union-attr]
                user_id=sub.lower(),
            )


async def test_without_user_id_or_token_an_open_server_gets_a_random_user() -> None:
    async with running_server() as server, Client(server.url) as client:
        doc = new_id()
        snapshot = await client.join(doc)
        assert snapshot == [JoinDocument(document_id=doc, user_id=client.user_id)]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_token_provider_is_called_on_every_connect(kind: str) -> None:
    sub = new_id()
    calls: list[float] = []

    def mint() -> str:
        calls.append(time.monotonic())
        return token(sub)

    async def mint_async() -> str:
        await asyncio.sleep(0)
        return mint()

    provider: Callable[[], object] = mint if kind == "sync" else mint_async
    async with running_server(jwt_secret=SECRET) as server:
        client = Client(server.url, token=provider)  # type: ignore[arg-type]
        async with client:
            assert client.user_id == sub and len(calls) == 1
            doc = new_id()
            await client.join(doc)
            # The server kicks the user (its HTTP API's disconnect does the same): 1008 after a
            # session that worked, so the provider is asked again and the client comes back.
            await server.service.disconnect(sub)
            assert isinstance(await client.receive(TIMEOUT), Reconnected)
            assert await client.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=sub)
            assert len(calls) == 2


async def test_a_failing_token_provider_fails_the_first_connect_clearly() -> None:
    def broken() -> str:
        raise RuntimeError("auth service down")

    async with running_server(jwt_secret=SECRET) as server:
        with pytest.raises(ClientError, match="token provider failed: auth service down"):
            await Client(server.url, token=broken).connect()


async def test_the_token_travels_in_the_authorization_header_not_the_url() -> None:
    seen: list[tuple[str, str | None]] = []

    async def ws(request: web.Request) -> web.WebSocketResponse:
        seen.append((request.query_string, request.headers.get("Authorization")))
        response = web.WebSocketResponse()
        await response.prepare(request)
        await response.close()
        return response

    app = web.Application()
    app.router.add_get("/ws", ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        jwt = token(new_id())
        client = Client(f"ws://127.0.0.1:{port}/ws", token=jwt, reconnect=False)
        await client.connect()
        await client.close()
        assert seen == [("", f"Bearer {jwt}")]
    finally:
        await runner.cleanup()


# -- the presence map ---------------------------------------------------------------


def _at(line: int, column: int) -> Position:
    return Position(line=line, column=column)


async def test_users_follows_the_snapshot_and_live_events() -> None:
    async with running_server() as server:
        doc = new_id()
        async with server.client() as alice, server.client() as bob, server.client() as cy:
            await bob.join(doc)
            await bob.status(doc, "busy")
            await bob.cursor(doc, 3, 4)
            await alice.join(doc)
            # Alice's map comes from her snapshot: Bob with his presence in force.
            assert alice.users(doc) == {
                bob.user_id: User(
                    user_id=bob.user_id,
                    status="busy",
                    cursor=_at(3, 4),
                    presence=alice.users(doc)[bob.user_id].presence,
                )
            }
            assert [type(m) for m in alice.users(doc)[bob.user_id].presence] == [
                PresenceStatus,
                CursorUpdate,
            ]
            # Live: Cy arrives, Bob moves with a PresenceUpdate (it supersedes his cursor).
            await cy.join(doc)
            await bob.presence(doc, cursor=(5, 0), selection=((5, 0), (5, 6)), is_typing=True)
            await until(lambda: cy.user_id in alice.users(doc))
            await until(lambda: alice.users(doc)[bob.user_id].is_typing)
            seen = alice.users(doc)[bob.user_id]
            assert seen.cursor == _at(5, 0)
            assert seen.selection == Selection(start=_at(5, 0), end=_at(5, 6))
            assert seen.status == "busy"
            assert [type(m) for m in seen.presence] == [PresenceStatus, PresenceUpdate]
            assert alice.users(doc)[cy.user_id] == User(user_id=cy.user_id)
            assert alice.user_id not in alice.users(doc)
            await bob.leave(doc)
            await until(lambda: bob.user_id not in alice.users(doc))
            assert set(alice.users(doc)) == {cy.user_id}
            with pytest.raises(ClientError):
                bob.users(doc)  # not joined (any more)


# -- outages and restarts: a real process on a fixed port -------------------------


async def _serve_on(port: int, *args: str) -> ServerProcess:
    return await spawn_server(["--port", str(port), *args])


async def _outage(server: ServerProcess, seconds: float) -> ServerProcess:
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert await asyncio.get_running_loop().run_in_executor(None, server.stop) == 0
    await asyncio.sleep(seconds)
    return await _serve_on(port)


@pytest.fixture
async def process() -> AsyncIterator[list[ServerProcess]]:
    """A real server process (the list holds the current one across restarts)."""
    holder = [await spawn_server()]
    yield holder
    holder[-1].kill()


async def _rejoined(client: Client, doc: str) -> float:
    async with asyncio.timeout(10 * TIMEOUT):
        while True:
            message = await client.receive()
            if message == JoinDocument(document_id=doc, user_id=client.user_id):
                return time.monotonic()


async def test_rejoins_within_about_a_second_of_the_servers_return_after_3s(
    process: list[ServerProcess],
) -> None:
    doc = new_id()
    clients = [Client(process[0].url) for _ in range(5)]
    try:
        for client in clients:
            await client.connect()
            await client.join(doc)
        process.append(await _outage(process[0], 3.0))
        back = time.monotonic()
        times = await asyncio.gather(*(_rejoined(c, doc) for c in clients))
        delays = [round(t - back, 2) for t in times]
        assert max(delays) < REJOIN_BOUND, delays
    finally:
        for client in clients:
            await client.close()


async def test_after_a_restart_own_presence_is_sent_again(
    process: list[ServerProcess],
) -> None:
    doc = new_id()
    async with Client(process[0].url) as alice, Client(process[0].url) as bob:
        await alice.join(doc)
        await bob.join(doc)
        await alice.selection(doc, (1, 0), (1, 5))
        await alice.cursor(doc, 1, 5)
        await alice.typing(doc, True)
        await alice.status(doc, "away")
        await until(lambda: bob.users(doc).get(alice.user_id, User("")).status == "away")
        before = bob.users(doc)[alice.user_id]
        process.append(await _outage(process[0], 0.5))
        # Bob's map is rebuilt from his new snapshot, where Alice's presence is again.
        await until(  # Alice's presence back in Bob's map
            lambda: bob.users(doc).get(alice.user_id, User("")).presence == before.presence
        )
        again = bob.users(doc)[alice.user_id]
        assert (again.cursor, again.selection, again.is_typing, again.status) == (
            _at(1, 5),
            Selection(start=_at(1, 0), end=_at(1, 5)),
            True,
            "away",
        )
        # The stream said so: a Reconnected marker, then the new snapshot up to Bob's ack.
        kinds: list[str] = []
        while not kinds or kinds[-1] != "ack":
            message = await bob.receive(TIMEOUT)
            ack = message == JoinDocument(document_id=doc, user_id=bob.user_id)
            kinds.append("ack" if ack else type(message).__name__)
        assert "Reconnected" in kinds, kinds


async def test_leaving_forgets_own_presence_and_the_map() -> None:
    async with running_server() as server:
        doc = new_id()
        async with server.client() as alice:
            await alice.join(doc)
            await alice.cursor(doc, 1, 1)
            await alice.leave(doc)
            with pytest.raises(ClientError):
                alice.users(doc)
            # Joining again starts clean: the server says so with a bare ack.
            assert await alice.join(doc) == [JoinDocument(document_id=doc, user_id=alice.user_id)]
            assert await _no_leave(alice)


async def _no_leave(client: Client) -> bool:
    try:
        message = await client.receive(0.2)
    except TimeoutError:
        return True
    return not isinstance(message, LeaveDocument)


async def test_http_session_passed_in_is_left_open() -> None:
    async with running_server() as server, aiohttp.ClientSession() as session:
        async with Client(server.url, session=session) as client:
            await client.join(new_id())
        assert not session.closed


async def test_users_carry_their_info_from_the_join_in_open_mode() -> None:
    doc = new_id()
    async with (
        running_server() as server,
        Client(server.url, info={"name": "Ada", "color": "#e91e63"}) as ada,
        Client(server.url) as bob,
    ):
        await ada.join(doc)
        await bob.join(doc)  # Ada from Bob's snapshot
        assert bob.users(doc)[ada.user_id].info == {"color": "#e91e63", "name": "Ada"}
        async with Client(server.url, info={"name": "Cy"}) as cy:
            await cy.join(doc)  # Cy announced live to Bob
            await until(lambda: cy.user_id in bob.users(doc))
            assert bob.users(doc)[cy.user_id] == User(cy.user_id, info={"name": "Cy"})


async def test_with_jwt_the_tokens_info_wins_over_the_clients() -> None:
    doc, sub = new_id(), new_id()
    jwt = token(sub, extra={"info": {"name": "From the token"}})
    async with (
        running_server(jwt_secret=SECRET) as server,
        Client(server.url, token=jwt, info={"name": "Made up"}) as ada,
        Client(server.url, token=token(new_id()), info={"name": "Bob"}) as bob,
    ):
        await ada.join(doc)
        await bob.join(doc)
        assert bob.users(doc)[sub].info == {"name": "From the token"}
        assert ada.users(doc)[bob.user_id].info is None  # no info claim: none


def test_info_is_checked_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="1024"):
        Client("ws://127.0.0.1:1/ws", info={"name": "x" * 2000})
    with pytest.raises(TypeError):
        Client("ws://127.0.0.1:1/ws", info=["not", "an", "object"])  # type: ignore[arg-type]


async def test_after_close_every_read_ends_and_stream_false_keeps_nothing() -> None:
    async with running_server() as server:
        client = Client(server.url)
        await client.connect()
        await client.close()
        for _ in range(2):
            with pytest.raises(ClientError):
                await client.receive(TIMEOUT)
        assert [m async for m in client] == []
        quiet = Client(server.url, stream=False)
        async with quiet, server.client() as other:
            doc = new_id()
            await quiet.join(doc)
            await other.join(doc)
            await other.status(doc, "busy")
            await until(lambda: quiet.users(doc).get(other.user_id, User("")).status == "busy")
            with pytest.raises(ClientError, match="stream=False"):
                await quiet.receive(TIMEOUT)
