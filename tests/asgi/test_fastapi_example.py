"""examples/fastapi_app.py, run as documented: FastAPI + the mounted ASGI app under uvicorn."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest

from cpc_signaling.client import Client, ClientError
from cpc_signaling.protocol import Comment, JoinDocument, LeaveDocument
from cpc_signaling.server import Config

from ..helpers import TIMEOUT, new_id, receive_until, serving_uvicorn

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_fastapi_example_end_to_end() -> None:
    example = load_example()
    app, signaling = example.create_example_app(Config(max_message_bytes=65536))
    async with serving_uvicorn(app, ws_max_size=65536) as port, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        ws_url = f"ws://127.0.0.1:{port}/signaling/ws"
        async with http.get(base + "/signaling/readyz") as resp:
            assert resp.status == 200
        doc = new_id()
        async with (
            Client(ws_url, new_id()) as alice,
            Client(ws_url, new_id(), reconnect=False) as bob,
        ):
            await alice.join(doc)
            await bob.join(doc)
            assert await alice.receive(TIMEOUT) == JoinDocument(
                document_id=doc, user_id=bob.user_id
            )

            async with http.post(
                f"{base}/documents/{doc}/notes", json={"text": "v2 deployed"}
            ) as resp:
                assert resp.status == 202, await resp.text()
            for client in (alice, bob):
                got = await receive_until(client, lambda m: isinstance(m, Comment))
                note = got[-1]
                assert isinstance(note, Comment)
                assert (note.user_id, note.content) == (example.SYSTEM_USER, "v2 deployed")

            async with http.get(f"{base}/documents/{doc}/who") as resp:
                assert await resp.json() == [alice.user_id, bob.user_id]
            async with http.post(f"{base}/documents/{doc}/notes", json={"text": ""}) as resp:
                assert resp.status == 400  # content must not be empty: the protocol's rule

            async with http.post(f"{base}/users/{bob.user_id}/kick") as resp:
                assert await resp.json() == {"closed_here": 1}
            assert await alice.receive(TIMEOUT) == LeaveDocument(
                document_id=doc, user_id=bob.user_id
            )
            with pytest.raises(ClientError):
                await bob.receive(TIMEOUT)
            assert bob.close_code == 1008

            async with http.get(f"{base}/signaling/metrics") as resp:
                assert "cpc_api_published_total" in await resp.text()
    assert signaling.service.draining  # the lifespan drained it on shutdown
