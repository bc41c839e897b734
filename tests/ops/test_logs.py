"""Operations: JSON log lines carry document, user and connection ids; levels work."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import pytest

from cpc_signaling.client import ClientError
from cpc_signaling.protocol import Comment, Position
from cpc_signaling.server.logs import JsonFormatter, redact, setup_logging
from cpc_signaling.tokens import mint_token

from ..helpers import (
    TIMEOUT,
    ServerProcess,
    new_id,
    running_asgi_server,
    running_server,
    spawn_asgi_server,
    spawn_server,
    until,
)


async def test_json_lines_carry_context(caplog: pytest.LogCaptureFixture) -> None:
    formatter = JsonFormatter()
    caplog.set_level(logging.DEBUG, logger="cpc_signaling")
    async with running_server(error_limit=1, api_key="k" * 32) as srv:
        doc = new_id()
        async with srv.client(reconnect=False) as client:
            await client.join(doc)
            await client.send_raw("nonsense")
            await client.send_raw("nonsense")  # the 2nd error exceeds the budget: closed
            with pytest.raises(Exception):  # noqa: B017 - closed: ClientError or timeout
                while True:
                    await client.receive(TIMEOUT)
        srv.service.publish(
            Comment(
                document_id=doc,
                user_id=client.user_id,
                position=Position(line=0, column=0),
                content="hi",
                timestamp="2026-01-01T00:00:00Z",
            )
        )
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    closed = [e for e in lines if "more than 1 errors" in e["message"]]
    assert closed, lines
    assert closed[0]["user_id"] == client.user_id
    assert closed[0]["connection_id"].startswith(srv.service.instance_id + "/")
    assert closed[0]["level"] == "info" and closed[0]["logger"] == "cpc_signaling.server"
    published = [e for e in lines if e["message"] == "published Comment"]
    assert published[0]["document_id"] == doc and published[0]["user_id"] == client.user_id
    for entry in lines:
        assert "k" * 32 not in json.dumps(entry)  # never a key or a token


async def test_log_format_json_flag() -> None:
    server = await spawn_server(["--log-format", "json", "--log-level", "debug"])
    try:
        listening = json.loads(next(line for line in server.lines if "ws://" in line))
        assert "ws://" in listening["message"]
        assert listening["level"] == "info" and listening["logger"] == "cpc_signaling.server"
    finally:
        assert server.stop() == 0
    for line in server.lines:
        if line.strip():
            json.loads(line)  # every line is one JSON object


def test_log_levels() -> None:
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    try:
        setup_logging("warning", "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert not logging.getLogger("cpc_signaling.server").isEnabledFor(logging.INFO)
        assert logging.getLogger("cpc_signaling.server").isEnabledFor(logging.WARNING)
        setup_logging("debug", "text")
        assert logging.getLogger("cpc_signaling.server").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


async def lines_with(server: ServerProcess, *fragments: str) -> list[str]:
    """The process's lines containing each fragment (waits for them to be printed)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            found = [next((li for li in server.lines if f in li), "") for f in fragments]
            if all(found):
                return found
            await asyncio.sleep(0.05)


async def test_first_lines_say_where_the_demo_is_and_whether_the_api_is_on() -> None:
    server = await spawn_server()
    try:
        port = server.http.rsplit(":", 1)[1]
        demo, api = await lines_with(server, "demo:", "HTTP API:")
        assert f"http://127.0.0.1:{port}/ " in demo
        assert "off" in api and "--api-key" in api
    finally:
        assert server.stop() == 0
    server = await spawn_server(["--no-demo", "--api-key", "k" * 32])
    try:
        port = server.http.rsplit(":", 1)[1]
        demo, api = await lines_with(server, "demo:", "HTTP API:")
        assert "off" in demo and f"http://127.0.0.1:{port}/client.js" in demo
        assert f"on at http://127.0.0.1:{port}/api/" in api
        assert "k" * 32 not in "".join(server.lines)
        assert len(server.lines) <= 5  # the first lines, not buried under others
    finally:
        assert server.stop() == 0
    server = await spawn_asgi_server(env={"CPC_API_KEY": "k" * 32}, factory=True)
    try:
        (started,) = await lines_with(server, "ASGI app started")
        assert "HTTP API on" in started and "demo at /" in started
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["aiohttp", "asgi"])
async def test_every_line_about_a_connection_names_it(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cpc_signaling")
    factory = running_server if kind == "aiohttp" else running_asgi_server
    async with factory(error_limit=1, ping_interval=0.2, ping_timeout=0.2) as srv:
        doc = new_id()
        async with srv.client(reconnect=False) as client:  # opened, bound, then over budget
            await client.join(doc)
            await client.send_raw("nonsense")
            await client.send_raw("nonsense")
            with pytest.raises(ClientError):
                while True:
                    await client.receive(TIMEOUT)
        async with aiohttp.ClientSession() as session:  # never answers a ping
            mute = await session.ws_connect(srv.url, autoping=False)
            await mute.send_str(
                json.dumps({"JoinDocument": {"document_id": doc, "user_id": new_id()}})
            )
            await until(lambda: not srv.service.sessions)
            await mute.close()
    named = [r for r in caplog.records if getattr(r, "connection_id", None)]
    for record in named:  # the JSON field, and the text itself
        text = record.getMessage()
        assert record.connection_id in text, text  # type: ignore[attr-defined]
        user = getattr(record, "user_id", None)
        assert user is None or user in text, text
    said = " | ".join(r.getMessage() for r in named)
    expected = ["opened", "more than 1 errors", "gone"]
    if kind == "aiohttp":  # under ASGI the pings are the ASGI server's
        expected.append("closing with 1011")
    for fragment in expected:
        assert fragment in said, said
    unnamed = [
        r.getMessage()
        for r in caplog.records
        if re.search(r"connection \S+/\d+", r.getMessage()) and r not in named
    ]
    assert not unnamed, unnamed


def test_redact_replaces_every_shape_a_token_travels_in() -> None:
    jwt = mint_token(sub=new_id(), secret="s" * 40)
    signature = jwt.rsplit(".", 1)[1]
    for text in (
        f"GET /ws?token={jwt} HTTP/1.1",
        f"GET /ws?a=1&token={jwt}&b=2",
        f"['cpc.v1', 'cpc.token.{jwt}']",
        f"Authorization: Bearer {jwt}",
        f"b'X-Forwarded: {jwt}'",  # bare, anywhere
    ):
        assert signature not in redact(text), text
    assert redact("connection a/1 (user b): closing with 1008") == (
        "connection a/1 (user b): closing with 1008"
    )
