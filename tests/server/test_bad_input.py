"""Hostile input over real sockets: nothing a client sends costs its connection."""

from __future__ import annotations

import json

import aiohttp

from cpc_signaling.protocol import CursorUpdate, ErrorCode

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, RunningServer, new_id, receive_until
from .test_protocol import expect_error

KEY = "k" * 32
TS = "2023-01-01T00:00:00Z"


def deep(doc: str, user: str, depth: int = 3000) -> str:
    """A 6 KB frame nested ``depth`` deep, inside an otherwise valid message."""
    body = {
        "document_id": doc,
        "user_id": user,
        "timestamp": TS,
        "position": {"line": 1, "column": 1},
        "extra": "@",
    }
    return json.dumps({"CursorUpdate": body}).replace('"@"', "[" * depth + "]" * depth)


async def test_deeply_nested_frames_get_parse_error_and_the_connection_lives(
    server: RunningServer,
) -> None:
    doc = new_id()
    async with server.client() as a, server.client() as b:
        await a.join(doc)
        await b.join(doc)
        await receive_until(a, lambda m: m.user_id == b.user_id)
        for raw in (
            deep(doc, b.user_id),
            "[" * 3000 + "]" * 3000,
            '{"CursorUpdate": ' + "[" * 3000 + "]" * 3000 + "}",
            '{"a":' * 1200 + "1" + "}" * 1200,
        ):
            assert len(raw) < 8192  # a few KB: far below --max-message-bytes
            await b.send_raw(raw)
            await expect_error(b, ErrorCode.PARSE_ERROR)
        await b.cursor(doc, 4, 2)  # the connection lives, and nobody saw the bad frames
        got = await a.receive(TIMEOUT)
        assert isinstance(got, CursorUpdate)
        assert got.position.line == 4


async def test_deeply_nested_api_body_is_400(server_factory: ServerFactory) -> None:
    doc, user = new_id(), new_id()
    body = json.dumps(
        {
            "Comment": {
                "document_id": doc,
                "user_id": user,
                "position": {"line": 0, "column": 0},
                "content": "x",
                "timestamp": TS,
            }
        }
    )
    nested = body[:-2] + ', "extra": ' + "[" * 3000 + "]" * 3000 + "}}"
    async with server_factory(api_key=KEY) as running, aiohttp.ClientSession() as session:
        for payload in (nested, "[" * 3000 + "]" * 3000):
            async with session.post(
                f"{running.http}/api/documents/{doc}/messages",
                data=payload,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as resp:
                assert resp.status == 400, await resp.text()
                answer = await resp.json()
                assert answer["Error"]["code"] == ErrorCode.PARSE_ERROR
        async with session.post(  # and the API still works
            f"{running.http}/api/documents/{doc}/messages",
            data=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            assert resp.status == 202
