"""User info (an extension of JoinDocument) over real WebSockets, on both transports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from cpc_signaling.protocol import ErrorCode, JoinDocument

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, RunningServer, new_id
from ..security.support import SECRET, token

ADA = {"name": "Ada", "color": "#e91e63", "avatar_url": "https://example.com/ada.png"}
ADA_WIRE = '{"avatar_url":"https://example.com/ada.png","color":"#e91e63","name":"Ada"}'


def join_text(doc: str, user: str, info: Any = None) -> str:
    body: dict[str, Any] = {"document_id": doc, "user_id": user}
    if info is not None:
        body["info"] = info
    return json.dumps({"JoinDocument": body})


def seed_join(doc: str, user: str) -> str:
    """The JoinDocument frame the server sends about a user without info, byte for byte."""
    return f'{{"JoinDocument":{{"document_id":"{doc}","user_id":"{user}"}}}}'


def info_join(doc: str, user: str, wire_info: str) -> str:
    return f'{{"JoinDocument":{{"document_id":"{doc}","user_id":"{user}","info":{wire_info}}}}}'


class Raw:
    """A plain WebSocket: frames as the server wrote them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def text(self) -> str:
        msg = await self.ws.receive(TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        return str(msg.data)

    async def until(self, wanted: str) -> list[str]:
        """Frames up to and including ``wanted`` (exact text)."""
        got = [await self.text()]
        while got[-1] != wanted:
            got.append(await self.text())
        return got

    async def error(self) -> dict[str, str]:
        frame = json.loads(await self.text())
        assert "Error" in frame, frame
        return dict(frame["Error"])


@asynccontextmanager
async def raw(url: str, bearer: str | None = None) -> AsyncIterator[Raw]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        yield Raw(ws)


async def test_open_mode_info_in_announcements_snapshots_and_acks(server: RunningServer) -> None:
    doc, alice, carol = new_id(), new_id(), new_id()
    async with server.client() as bob, raw(server.url) as a, raw(server.url) as c:
        await bob.join(doc)  # bob: the seed-only Python client, no info
        await a.send(join_text(doc, alice, ADA))
        snapshot = await a.until(info_join(doc, alice, ADA_WIRE))  # the ack carries it
        assert snapshot == [seed_join(doc, bob.user_id), info_join(doc, alice, ADA_WIRE)]
        announced = await bob.receive(TIMEOUT)
        assert announced == JoinDocument(document_id=doc, user_id=alice, info=ADA)
        await c.send(join_text(doc, carol))
        assert await c.until(seed_join(doc, carol)) == [
            seed_join(doc, bob.user_id),  # no "info" key at all for a user without info
            info_join(doc, alice, ADA_WIRE),
            seed_join(doc, carol),
        ]
        assert await a.text() == seed_join(doc, carol)
        assert await bob.receive(TIMEOUT) == JoinDocument(document_id=doc, user_id=carol)
        # A seed-only client joining late sees the extra field and carries on.
        async with server.client() as dave:
            late = await dave.join(doc)
        assert JoinDocument(document_id=doc, user_id=alice, info=ADA) in late


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ([1, 2], "JoinDocument.info: Expected `object | null`, got `array`"),
        ("Ada", "JoinDocument.info: Expected `object | null`, got `str`"),
        ({"name": "x" * 1100}, "JoinDocument.info: must be at most 1024 bytes encoded"),
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {
            "o": {"p": {"q": 1}}}}}}}}}}}}}}}}}, "JoinDocument.info: must be nested at most 16"),
        ({"deep": json.loads("[" * 900 + "]" * 900)}, "JoinDocument.info"),
    ],
)  # fmt: skip
async def test_bad_info_is_a_parse_error_and_the_connection_lives(
    server: RunningServer, info: Any, fragment: str
) -> None:
    doc, alice = new_id(), new_id()
    async with server.client() as bob, raw(server.url) as a:
        await bob.join(doc)
        await a.send(join_text(doc, alice, info))
        error = await a.error()
        assert error["code"] == ErrorCode.PARSE_ERROR
        assert fragment in error["message"], error
        await a.send(join_text(doc, alice, {"name": "Ada"}))  # still usable, still unbound
        await a.until(info_join(doc, alice, '{"name":"Ada"}'))
        # Bob saw nothing of the refused join: the valid one is the first he hears of.
        assert await bob.receive(TIMEOUT) == JoinDocument(
            document_id=doc, user_id=alice, info={"name": "Ada"}
        )


async def test_a_second_tab_does_not_change_the_users_info(server: RunningServer) -> None:
    doc, alice = new_id(), new_id()
    async with raw(server.url) as a1, raw(server.url) as a2, server.client() as bob:
        await a1.send(join_text(doc, alice, ADA))
        await a1.until(info_join(doc, alice, ADA_WIRE))
        await a2.send(join_text(doc, alice, {"name": "Impostor"}))
        await a2.until(info_join(doc, alice, ADA_WIRE))  # its ack: the info others see
        snapshot = await bob.join(doc)
        assert snapshot[0] == JoinDocument(document_id=doc, user_id=alice, info=ADA)


async def test_the_token_info_wins_over_the_clients(server_factory: ServerFactory) -> None:
    doc, alice, bob = new_id(), new_id(), new_id()
    alice_token = token(alice, extra={"info": {"name": "Ada", "color": "#e91e63"}})
    async with (
        server_factory(jwt_secret=SECRET) as srv,
        raw(srv.url, alice_token) as a,
        raw(srv.url, token(bob)) as b,
    ):
        await b.send(join_text(doc, bob, {"name": "I am not in my token"}))
        await b.until(seed_join(doc, bob))  # the token has no info: none, whatever was sent
        await a.send(join_text(doc, alice, {"name": "Mallory"}))
        wire = '{"color":"#e91e63","name":"Ada"}'
        assert await a.until(info_join(doc, alice, wire)) == [
            seed_join(doc, bob),
            info_join(doc, alice, wire),
        ]
        assert await b.text() == info_join(doc, alice, wire)


@pytest.mark.parametrize(
    ("claim", "fragment"),
    [
        (["Ada"], "token `info` claim must be a JSON object, got an array"),
        ("Ada", "token `info` claim must be a JSON object, got a string"),
        ({"name": "x" * 1100}, "token `info` claim must be at most 1024 bytes encoded"),
    ],
)
async def test_a_token_with_a_bad_info_claim_is_refused(
    server_factory: ServerFactory, claim: Any, fragment: str
) -> None:
    async with (
        server_factory(jwt_secret=SECRET) as srv,
        raw(srv.url, token(new_id(), extra={"info": claim})) as a,
    ):
        error = await a.error()
        assert error["code"] == ErrorCode.AUTH_ERROR
        assert fragment in error["message"], error
        msg = await a.ws.receive(TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE and a.ws.close_code == 1008
