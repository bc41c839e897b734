"""The protocol over real WebSockets on loopback, both transports (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from cpc_signaling.client import Client, ClientError, JoinError, Reconnected
from cpc_signaling.protocol import (
    Comment,
    CursorUpdate,
    Error,
    ErrorCode,
    JoinDocument,
    LeaveDocument,
    Position,
    PresenceStatus,
)

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, RunningServer, new_id, receive_until

TS = "2023-01-01T00:00:00Z"


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({kind: fields})


async def expect_error(client: Client, code: str, fragment: str = "") -> Error:
    message = await client.receive(TIMEOUT)
    assert isinstance(message, Error), message
    assert message.code == code, message
    assert fragment in message.message
    return message


async def test_snapshot_and_ack_then_live_traffic(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a, server.client() as b, server.client() as c:
        await a.join(doc)
        await a.status(doc, "busy")
        await a.comment(doc, 3, 1, "a comment")
        await b.join(doc)
        await receive_until(a, lambda m: isinstance(m, JoinDocument))
        await b.cursor(doc, 5, 0)
        await receive_until(a, lambda m: isinstance(m, CursorUpdate))
        snapshot = await c.join(doc)
        assert [type(m).__name__ for m in snapshot] == [
            "JoinDocument",
            "PresenceStatus",  # a, with its presence
            "JoinDocument",
            "CursorUpdate",  # b, with its presence
            "Comment",  # stored messages
            "JoinDocument",  # c's own acknowledgement
        ]
        assert [m.user_id for m in snapshot if isinstance(m, JoinDocument)] == [
            a.user_id,
            b.user_id,
            c.user_id,
        ]
        for other in (a, b):
            got = await other.receive(TIMEOUT)
            assert got == JoinDocument(document_id=doc, user_id=c.user_id)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not json", "malformed"),
        ("[]", "JSON object"),
        ("{}", "exactly one"),
        ('{"Nope": {}}', "Nope"),
        ('{"Error": {"code": "X", "message": "y"}}', "Error"),
        (frame("JoinDocument", document_id="x", user_id="y"), "JoinDocument.document_id"),
        (frame("JoinDocument", document_id="6f1c0a52-3b7e-4d2a-9c1e-0d5b8e7a4f10"), "user_id"),
    ],
)
async def test_bad_frames_get_parse_error_and_connection_stays_usable(
    server: RunningServer, raw: str, fragment: str
) -> None:
    doc = new_id()
    async with server.client() as a:
        await a.send_raw(raw)
        await expect_error(a, ErrorCode.PARSE_ERROR, fragment)
        assert await a.join(doc)  # still usable


async def test_each_invalid_field_in_live_messages(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a, server.client() as b:
        await a.join(doc)
        await b.join(doc)
        await a.receive(TIMEOUT)  # b's join
        base = {"document_id": doc, "user_id": b.user_id, "timestamp": TS}
        bad = [
            frame("CursorUpdate", **base, position={"line": -1, "column": 0}),
            frame("CursorUpdate", **base, position={"line": 0, "column": 2**31}),
            frame(
                "CursorUpdate",
                **{**base, "timestamp": "yesterday"},
                position={"line": 0, "column": 0},
            ),
            frame("TypingIndicator", **base, is_typing="yes"),
            frame("PresenceStatus", **base, status=""),
            frame("PresenceStatus", **base, status="x" * 65),
            frame("Comment", **base, position={"line": 0, "column": 0}, content=""),
            frame("Annotation", **base, position={"line": 0, "column": 0}, content="x" * 10_001),
            frame("SelectionUpdate", **base, selection={"start": {"line": 0, "column": 0}}),
        ]
        for raw in bad:
            await b.send_raw(raw)
            await expect_error(b, ErrorCode.PARSE_ERROR)
        await b.cursor(doc, 1, 1)  # a valid one after all that
        got = await a.receive(TIMEOUT)
        assert isinstance(got, CursorUpdate)  # a saw nothing of the bad ones


async def test_unknown_fields_are_not_relayed(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a, server.client() as b:
        await a.join(doc)
        await b.join(doc)
        await a.receive(TIMEOUT)
        session = aiohttp.ClientSession()
        try:
            # read a's traffic raw, to see the exact bytes relayed
            async with session.ws_connect(server.url) as raw:
                await raw.send_str(frame("JoinDocument", document_id=doc, user_id=new_id()))
                while "JoinDocument" not in (await raw.receive_str()):
                    pass
                await b.send_raw(
                    frame(
                        "CursorUpdate",
                        document_id=doc.upper(),
                        user_id=b.user_id,
                        position={"line": 1, "column": 2},
                        timestamp=TS,
                        secret="leak",
                    )
                )
                text = await asyncio.wait_for(raw.receive_str(), TIMEOUT)
                while "CursorUpdate" not in text:
                    text = await asyncio.wait_for(raw.receive_str(), TIMEOUT)
                assert "secret" not in text
                assert json.loads(text)["CursorUpdate"]["document_id"] == doc  # canonical
        finally:
            await session.close()


async def test_binary_frame_is_parse_error(server: RunningServer) -> None:
    async with server.client() as a:
        await a.send_raw(b'{"JoinDocument": {}}')
        await expect_error(a, ErrorCode.PARSE_ERROR, "binary")
        assert await a.join(new_id())


async def test_oversized_frame_closes_1009(server_factory: ServerFactory) -> None:
    async with (
        server_factory(max_message_bytes=1024) as server,
        aiohttp.ClientSession() as session,
        session.ws_connect(server.url) as ws,
    ):
        await ws.send_str("x" * 2000)
        msg = await ws.receive(TIMEOUT)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009


async def test_error_budget_closes_1008_after_sending_the_21st_error(
    server: RunningServer,
) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
        for _ in range(21):
            await ws.send_str("garbage")
        errors = 0
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                assert json.loads(msg.data)["Error"]["code"] == ErrorCode.PARSE_ERROR
                errors += 1
        assert errors == 21
        assert ws.close_code == 1008


async def test_twenty_errors_are_tolerated(server: RunningServer) -> None:
    async with server.client() as a:
        for _ in range(20):
            await a.send_raw("garbage")
        for _ in range(20):
            await expect_error(a, ErrorCode.PARSE_ERROR)
        assert await a.join(new_id())


async def test_speaking_for_someone_else_is_auth_error(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a, server.client() as b:
        await a.join(doc)
        await b.join(doc)
        await a.receive(TIMEOUT)
        await b.send(
            CursorUpdate(
                document_id=doc,
                user_id=a.user_id,
                position=Position(line=0, column=0),
                timestamp=TS,
            )
        )
        await expect_error(b, ErrorCode.AUTH_ERROR, a.user_id)
        await b.send(LeaveDocument(document_id=doc, user_id=a.user_id))
        await expect_error(b, ErrorCode.AUTH_ERROR)
        await b.cursor(doc, 2, 2)
        got = await a.receive(TIMEOUT)
        assert isinstance(got, CursorUpdate) and got.user_id == b.user_id  # nothing else came


async def test_document_errors(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a:
        await a.send_raw(
            frame(
                "CursorUpdate",
                document_id=doc,
                user_id=a.user_id,
                position={"line": 0, "column": 0},
                timestamp=TS,
            )
        )
        await expect_error(a, ErrorCode.DOCUMENT_ERROR, doc)
        await a.join(doc)
        other = new_id()
        await a.cursor(other, 1, 1)
        await expect_error(a, ErrorCode.DOCUMENT_ERROR, other)
        await a.send(LeaveDocument(document_id=other, user_id=a.user_id))
        await expect_error(a, ErrorCode.DOCUMENT_ERROR, other)


async def test_document_limits(server_factory: ServerFactory) -> None:
    async with server_factory(max_documents_per_connection=2, max_members_per_document=2) as srv:
        doc = new_id()
        async with srv.client() as a, srv.client() as b, srv.client() as c:
            await a.join(doc)
            await a.join(new_id())
            with pytest.raises(JoinError) as info:
                await a.join(new_id())
            assert info.value.error.code == ErrorCode.DOCUMENT_ERROR
            await b.join(doc)
            with pytest.raises(JoinError) as info:
                await c.join(doc)
            assert info.value.error.code == ErrorCode.DOCUMENT_ERROR
            assert "full" in info.value.error.message


async def test_leave_is_acknowledged_and_announced_on_last_connection(
    server: RunningServer,
) -> None:
    doc = new_id()
    user = new_id()
    async with server.client() as watcher, server.client(user) as tab1, server.client(user) as tab2:
        await watcher.join(doc)
        await tab1.join(doc)
        await tab2.join(doc)
        assert await watcher.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=user)
        await tab1.leave(doc)  # returns on the acknowledgement
        await tab2.status(doc, "away")
        # Nothing between: the first tab's leave was not announced.
        got = await watcher.receive(TIMEOUT)
        assert isinstance(got, PresenceStatus)
        await tab2.leave(doc)
        assert await watcher.receive(TIMEOUT) == LeaveDocument(document_id=doc, user_id=user)


async def test_disconnect_is_a_leave(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as watcher:
        await watcher.join(doc)
        gone = server.client(reconnect=False)
        await gone.connect()
        await gone.join(doc)
        await gone.comment(doc, 0, 0, "I was here")
        await receive_until(watcher, lambda m: isinstance(m, Comment))
        await gone.close()
        assert await watcher.receive(TIMEOUT) == LeaveDocument(
            document_id=doc, user_id=gone.user_id
        )
        assert server.service.hub.present_users(doc) == [watcher.user_id]


async def test_unanswered_pings_close_and_leave(server_factory: ServerFactory) -> None:
    async with server_factory(ping_interval=0.2, ping_timeout=0.3) as srv:
        doc = new_id()
        async with srv.client() as watcher, aiohttp.ClientSession() as session:
            await watcher.join(doc)
            # A peer that never answers pings (autoping off and nobody reading).
            mute = await session.ws_connect(srv.url, autoping=False)
            user = new_id()
            await mute.send_str(frame("JoinDocument", document_id=doc, user_id=user))
            got = await watcher.receive(TIMEOUT)
            assert got == JoinDocument(document_id=doc, user_id=user)
            assert await watcher.receive(TIMEOUT) == LeaveDocument(document_id=doc, user_id=user)
            await mute.close()


async def test_answered_pings_keep_idle_connections(server_factory: ServerFactory) -> None:
    async with server_factory(ping_interval=0.1, ping_timeout=0.2) as srv:
        doc = new_id()
        async with srv.client() as a, srv.client() as b:
            await a.join(doc)
            await b.join(doc)
            await a.receive(TIMEOUT)
            # Idleness is the point here: several ping intervals must pass unanswered by
            # traffic, so this test waits on the clock (the only one in the suite).
            await asyncio.sleep(0.6)
            await b.cursor(doc, 1, 1)
            assert isinstance(await a.receive(TIMEOUT), CursorUpdate)


async def test_exactly_once_across_a_concurrent_join(server: RunningServer) -> None:
    """A joiner sees each cursor exactly once: the last one before its ack in the
    snapshot, every later one live, none twice, none missing."""
    doc = new_id()
    total = 400
    async with server.client() as sender, server.client() as joiner:
        await sender.join(doc)

        async def send_all() -> None:
            for line in range(total):
                await sender.cursor(doc, line, 0)
                if line % 20 == 0:
                    await asyncio.sleep(0)

        task = asyncio.create_task(send_all())
        await asyncio.sleep(0)
        snapshot = await joiner.join(doc)
        await task
        cursors = [m.position.line for m in snapshot if isinstance(m, CursorUpdate)]
        assert len(cursors) <= 1
        start = cursors[0] + 1 if cursors else 0
        live = (
            await receive_until(
                joiner, lambda m: isinstance(m, CursorUpdate) and m.position.line == total - 1
            )
            if start < total
            else []
        )
        lines = [m.position.line for m in live if isinstance(m, CursorUpdate)]
        assert lines == list(range(start, total))


async def test_client_reconnects_and_rejoins(server_factory: ServerFactory) -> None:
    async with server_factory() as srv:
        doc = new_id()
        async with srv.client() as a, srv.client(backoff_initial=0.01) as b:
            await a.join(doc)
            await b.join(doc)
            await a.receive(TIMEOUT)
            # The server drops b's connection (as a restart or a proxy would).
            for conn in list(srv.service.hub.connections.values()):
                if conn.user_id == b.user_id:
                    conn.peer.close(1012, "restart")
            assert isinstance(await b.receive(TIMEOUT), Reconnected)
            rejoin = await receive_until(
                b, lambda m: m == JoinDocument(document_id=doc, user_id=b.user_id)
            )
            assert rejoin[0] == JoinDocument(document_id=doc, user_id=a.user_id)
            assert await a.receive(TIMEOUT) == LeaveDocument(document_id=doc, user_id=b.user_id)
            assert await a.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=b.user_id)
            await b.cursor(doc, 9, 9)
            assert isinstance(await a.receive(TIMEOUT), CursorUpdate)


async def test_http_endpoints(server: RunningServer) -> None:
    doc = new_id()
    async with server.client() as a:
        await a.join(doc)
        await a.cursor(doc, 1, 1)
        await a.send_raw("bad")
        await expect_error(a, ErrorCode.PARSE_ERROR)
        async with aiohttp.ClientSession() as session:
            async with session.get(server.http + "/healthz") as resp:
                assert resp.status == 200
            async with session.get(server.http + "/readyz") as resp:
                assert resp.status == 200
            async with session.get(server.http + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
    assert "cpc_connections 1.0" in text
    assert 'cpc_messages_in_total{type="CursorUpdate"} 1.0' in text
    assert 'cpc_errors_total{code="PARSE_ERROR"} 1.0' in text
    assert "cpc_members 1.0" in text
    assert "cpc_bytes_in_total" in text


async def test_readyz_503_while_draining(server: RunningServer) -> None:
    server.service.draining = True
    async with aiohttp.ClientSession() as session:
        async with session.get(server.http + "/readyz") as resp:
            assert resp.status == 503
        async with session.get(server.http + "/healthz") as resp:
            assert resp.status == 200
    server.service.draining = False


async def test_client_does_not_reconnect_after_a_policy_close(server: RunningServer) -> None:
    async with server.client(backoff_initial=0.01) as a:
        for _ in range(21):
            await a.send_raw("garbage")
        for _ in range(21):
            await expect_error(a, ErrorCode.PARSE_ERROR)
        with pytest.raises(ClientError):
            await a.receive(TIMEOUT)  # the stream ends: no Reconnected
        assert a.close_code == 1008


async def test_frames_after_the_server_let_a_connection_go_are_ignored(
    server: RunningServer,
) -> None:
    doc = new_id()
    async with server.client() as a, server.client(reconnect=False) as b:
        await a.join(doc)
        await b.join(doc)
        await a.receive(TIMEOUT)
        service = server.service
        (session,) = [s for s in service.sessions.values() if s.user_id == b.user_id]
        assert service.disconnect_local(b.user_id, "kicked") == 1
        # A frame the transport had already read when the server decided: it must not
        # re-join the kicked connection.
        frame_ = json.dumps({"JoinDocument": {"document_id": doc, "user_id": b.user_id}})
        assert service.on_frame(session, frame_.encode()) is None
        assert await a.receive(TIMEOUT) == LeaveDocument(document_id=doc, user_id=b.user_id)
        assert service.hub.present_users(doc) == [a.user_id]
        await a.status(doc, "still here")  # nothing else reached a in between
        await a.send_raw("bad")
        assert isinstance(await a.receive(TIMEOUT), Error)
