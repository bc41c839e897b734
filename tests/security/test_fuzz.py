"""Fuzzing the decoder in process and the whole server over the wire.

The normal suite runs a few hundred examples. The heavy run (documented in
docs/security.md) sets ``CPC_FUZZ_FRAMES``, e.g. 100000, and prints counts:

    CPC_FUZZ_FRAMES=100000 CPC_SECURITY_REPORT=1 \\
        .venv/bin/pytest -s -o timeout=0 tests/security/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpc_signaling.protocol import Decoder, ErrorCode

from ..helpers import RunningServer, running_server
from .fuzzing import any_frames, check_decoder, text_frames

FRAMES = int(os.environ.get("CPC_FUZZ_FRAMES", "0"))
REPORT = os.environ.get("CPC_SECURITY_REPORT") == "1"
DECODER_EXAMPLES = FRAMES or 500
# Heavy runs send 40 to 60 frames per connection; the default, 1 to 20.
WIRE_MIN, WIRE_MAX = (40, 60) if FRAMES else (1, 20)
WIRE_EXAMPLES = -(-FRAMES // WIRE_MIN) if FRAMES else 40  # at least FRAMES frames
CODES = {ErrorCode.PARSE_ERROR, ErrorCode.AUTH_ERROR, ErrorCode.DOCUMENT_ERROR,
         ErrorCode.CONNECTION_ERROR}  # fmt: skip

counts = {"decoder": 0, "wire": 0, "wire_errors": 0, "wire_connections": 0}
DECODER = Decoder()


@settings(
    max_examples=DECODER_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(any_frames)
def test_decoder_raises_only_protocol_error(data: bytes | str) -> None:
    counts["decoder"] += 1
    check_decoder(DECODER, data)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class WireTarget:
    """A real server on loopback, run by a loop in a thread, so sync hypothesis tests can use it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: RunningServer | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))
        self.session: aiohttp.ClientSession | None = None

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        # Fuzzing, not the error budget or the rate limit: every frame must be answered.
        async with running_server(error_limit=10**9, rate_limit=0) as server:
            self.server = server
            self.session = aiohttp.ClientSession()
            self._ready.set()
            await self._stop.wait()
            await self.session.close()

    def __enter__(self) -> WireTarget:
        self.thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)


@pytest.fixture(scope="module")
def wire() -> Iterator[WireTarget]:
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        with WireTarget() as target:
            yield target
    finally:
        logging.getLogger().removeHandler(capture)
    assert not capture.records, [r.getMessage() for r in capture.records[:5]]


async def _exchange(target: WireTarget, frames: list[str]) -> list[dict[str, Any]]:
    """Send ``frames`` on a new connection, then a marker whose PARSE_ERROR ends the replies."""
    assert target.server is not None and target.session is not None
    marker = f"Marker{uuid.uuid4().hex}"
    replies: list[dict[str, Any]] = []
    async with target.session.ws_connect(target.server.url, max_msg_size=0) as ws:
        for text in frames:
            await ws.send_str(text)
        await ws.send_str(json.dumps({marker: {}}))
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, (msg, frames)
                reply = json.loads(msg.data)
                assert isinstance(reply, dict) and len(reply) == 1, reply
                if "Error" in reply and marker in reply["Error"]["message"]:
                    return replies
                replies.append(reply)


@settings(
    max_examples=WIRE_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(text_frames, min_size=WIRE_MIN, max_size=WIRE_MAX))
def test_server_answers_every_hostile_frame_with_a_typed_error(
    wire: WireTarget, frames: list[str]
) -> None:
    replies = wire.run(_exchange(wire, frames))
    counts["wire"] += len(frames)
    counts["wire_connections"] += 1
    for reply in replies:
        if "Error" in reply:
            counts["wire_errors"] += 1
            assert reply["Error"]["code"] in CODES, reply


def test_report_fuzz_counts() -> None:
    """Runs last in this module: prints what the fuzzers did (CPC_SECURITY_REPORT=1)."""
    if REPORT:
        print(
            f"\n[security figures] fuzz: {counts['decoder']} frames through the decoder, "
            f"{counts['wire']} frames over the wire on {counts['wire_connections']} "
            f"connections ({counts['wire_errors']} typed errors back); at "
            f"{time.strftime('%H:%M:%S')}"
        )
