"""Operations: JSON log lines carry document, user and connection ids; levels work."""

from __future__ import annotations

import json
import logging

import pytest

from cpc_signaling.protocol import Comment, Position
from cpc_signaling.server.logs import JsonFormatter, setup_logging

from ..helpers import TIMEOUT, new_id, running_server, spawn_server


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
        listening = json.loads(server.lines[-1])
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
