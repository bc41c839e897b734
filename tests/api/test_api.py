"""The server-side API: over HTTP (both transports) and in Python, on one instance."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from cpc_signaling.client import ClientError
from cpc_signaling.protocol import (
    Annotation,
    Comment,
    CursorUpdate,
    JoinDocument,
    LeaveDocument,
    Position,
    PresenceStatus,
)
from cpc_signaling.server.service import Unavailable

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, RunningServer, new_id, receive_until

KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {KEY}"}
TS = "2026-01-01T00:00:00Z"


def comment_body(
    doc: str, user: str, content: str = "build is green", kind: str = "Comment"
) -> str:
    return json.dumps(
        {
            kind: {
                "document_id": doc,
                "user_id": user,
                "position": {"line": 1, "column": 2},
                "content": content,
                "timestamp": TS,
            }
        }
    )


async def call(
    server: RunningServer,
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.http + path, data=body, headers=headers) as resp,
    ):
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None), dict(resp.headers)


async def test_api_is_off_without_a_key(server: RunningServer) -> None:
    doc, user = new_id(), new_id()
    for method, path, body in (
        ("POST", f"/api/documents/{doc}/messages", comment_body(doc, user)),
        ("GET", f"/api/documents/{doc}/presence", None),
        ("POST", f"/api/users/{user}/disconnect", None),
    ):
        status, payload, _ = await call(server, method, path, body, AUTH)
        assert status == 404, (path, payload)
    assert server.service.hub.documents.get(doc) is None


@pytest.fixture
async def api_server(server_factory: ServerFactory) -> Any:
    async with server_factory(api_key=KEY) as running:
        yield running


async def test_key_is_required_and_checked(api_server: RunningServer) -> None:
    doc = new_id()
    path = f"/api/documents/{doc}/presence"
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        status, payload, resp_headers = await call(api_server, "GET", path, headers=headers)
        assert status == 401
        assert payload["Error"]["code"] == "AUTH_ERROR"
        assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    status, payload, _ = await call(api_server, "GET", path, headers=AUTH)
    assert (status, payload) == (200, {"document_id": doc, "users": []})


async def test_publish_reaches_members_and_later_joiners(api_server: RunningServer) -> None:
    doc, bot = new_id(), new_id()
    async with api_server.client() as member:
        await member.join(doc)
        status, payload, _ = await call(
            api_server, "POST", f"/api/documents/{doc}/messages", comment_body(doc, bot), AUTH
        )
        assert status == 202, payload
        assert payload == {"published": "Comment", "document_id": doc}
        got = await member.receive(TIMEOUT)
        assert got == Comment(
            document_id=doc,
            user_id=bot,
            position=Position(line=1, column=2),
            content="build is green",
            timestamp=TS,
        )
    status, _, _ = await call(
        api_server,
        "POST",
        f"/api/documents/{doc.upper()}/messages",
        comment_body(doc.upper(), bot.upper(), "note", kind="Annotation"),
        AUTH,
    )
    assert status == 202
    async with api_server.client() as late:
        snapshot = await late.join(doc)
        assert [type(m) for m in snapshot] == [Comment, Annotation, JoinDocument]
        assert isinstance(snapshot[1], Annotation) and snapshot[1].user_id == bot  # canonical
    metrics = api_server.service.metrics.render().decode()
    assert 'cpc_api_published_total{type="Comment"} 1.0' in metrics
    assert 'cpc_api_requests_total{route="messages",status="202"} 2.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ("not json", 400, "PARSE_ERROR"),
        ('{"Comment": {"document_id": "DOC"}}', 400, "Comment"),
        (comment_body("DOC", "USR", content=""), 400, "content"),
        (comment_body("OTHER", "USR"), 400, "is not the document in the path"),
        (
            json.dumps(
                {
                    "CursorUpdate": {
                        "document_id": "DOC",
                        "user_id": "USR",
                        "position": {"line": 0, "column": 0},
                        "timestamp": TS,
                    }
                }
            ),
            400,
            "only Annotation or Comment",
        ),
        ("x" * 70_000, 413, "max-message-bytes"),
    ],
)
async def test_publish_refuses_bad_bodies(
    api_server: RunningServer, body: str, status: int, needle: str
) -> None:
    doc, user = new_id(), new_id()
    body = body.replace("DOC", doc).replace("USR", user).replace("OTHER", new_id())
    got_status, payload, _ = await call(
        api_server, "POST", f"/api/documents/{doc}/messages", body, AUTH
    )
    assert got_status == status
    assert needle in json.dumps(payload)
    assert api_server.service.hub.documents.get(doc) is None


async def test_routes_methods_and_ids(api_server: RunningServer) -> None:
    doc = new_id()
    status, payload, headers = await call(
        api_server, "GET", f"/api/documents/{doc}/messages", headers=AUTH
    )
    assert (status, headers["Allow"]) == (405, "POST")
    status, payload, _ = await call(api_server, "GET", "/api/documents/nope/presence", headers=AUTH)
    assert status == 400 and "not a UUID" in payload["Error"]["message"]
    status, _, _ = await call(api_server, "GET", "/api/elsewhere", headers=AUTH)
    assert status == 404


async def test_presence_lists_users_with_their_presence(api_server: RunningServer) -> None:
    doc = new_id()
    user = new_id()
    async with (
        api_server.client() as a,
        api_server.client(user) as b,
        api_server.client(user) as b2,  # a second connection of the same user
    ):
        await a.join(doc)
        await b.join(doc)
        await b2.join(doc)
        await a.cursor(doc, 7, 3)
        await a.status(doc, "away")
        await receive_until(b, lambda m: isinstance(m, PresenceStatus))
        status, payload, _ = await call(
            api_server, "GET", f"/api/documents/{doc}/presence", headers=AUTH
        )
        assert status == 200
        users = payload["users"]
        assert [u["user_id"] for u in users] == [a.user_id, b.user_id]
        assert [u["connections"] for u in users] == [1, 2]
        assert [next(iter(m)) for m in users[0]["presence"]] == ["CursorUpdate", "PresenceStatus"]
        assert users[0]["presence"][0]["CursorUpdate"]["position"] == {"line": 7, "column": 3}
        assert users[1]["presence"] == []
        # The Python API says the same.
        present = await api_server.service.presence(doc.upper())
        assert [(p.user_id, p.connections) for p in present] == [(a.user_id, 1), (b.user_id, 2)]
        assert isinstance(present[0].presence[0], CursorUpdate)
        await a.leave(doc)
        _, payload, _ = await call(
            api_server, "GET", f"/api/documents/{doc}/presence", headers=AUTH
        )
        assert [u["user_id"] for u in payload["users"]] == [b.user_id]


async def test_disconnect_closes_every_connection_of_the_user(api_server: RunningServer) -> None:
    doc = new_id()
    user = new_id()
    async with (
        api_server.client() as watcher,
        api_server.client(user, reconnect=False) as kicked,
        api_server.client(user, reconnect=False) as kicked2,
    ):
        await watcher.join(doc)
        await kicked.join(doc)
        await kicked2.join(doc)
        assert await watcher.receive(TIMEOUT) == JoinDocument(
            document_id=doc, user_id=kicked.user_id
        )
        status, payload, _ = await call(
            api_server, "POST", f"/api/users/{kicked.user_id}/disconnect", headers=AUTH
        )
        assert status == 200
        assert payload == {"user_id": kicked.user_id, "closed_here": 2, "all_instances": False}
        # Announced gone once, at once.
        assert await watcher.receive(TIMEOUT) == LeaveDocument(
            document_id=doc, user_id=kicked.user_id
        )
        for client in (kicked, kicked2):
            with pytest.raises(ClientError):
                await client.receive(TIMEOUT)
            assert client.close_code == 1008
        assert api_server.service.hub.present_users(doc) == [watcher.user_id]
        # Nobody there: nothing to close, still 200.
        status, payload, _ = await call(
            api_server, "POST", f"/api/users/{new_id()}/disconnect", headers=AUTH
        )
        assert (status, payload["closed_here"]) == (200, 0)


async def test_python_api(api_server: RunningServer) -> None:
    service = api_server.service
    doc, bot = new_id(), new_id()
    async with api_server.client() as member:
        await member.join(doc)
        message = Comment(
            document_id=doc.upper(),
            user_id=bot,
            position=Position(line=0, column=0),
            content="deployed",
            timestamp=TS,
        )
        assert service.publish(message) == doc
        got = await member.receive(TIMEOUT)
        assert isinstance(got, Comment) and got.content == "deployed" and got.document_id == doc
        # Constructed structs are not validated by msgspec: publish validates them.
        bad = Comment(
            document_id=doc,
            user_id="not-a-uuid",
            position=Position(line=0, column=0),
            content="x",
            timestamp=TS,
        )
        with pytest.raises(Exception, match="user_id"):
            service.publish(bad)
        assert await service.disconnect(member.user_id) == 1
        with pytest.raises(ValueError):
            await service.disconnect("nobody")
        service.draining = True
        try:
            with pytest.raises(Unavailable):
                service.publish(message)
            status, payload, _ = await call(
                api_server, "POST", f"/api/documents/{doc}/messages", comment_body(doc, bot), AUTH
            )
            assert status == 503 and payload["Error"]["code"] == "CONNECTION_ERROR"
        finally:
            service.draining = False
