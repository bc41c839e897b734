"""The plain HTTP endpoints, the same on both transports: health, readiness, metrics
and the browser files (the JS client always, the demo unless turned off)."""

from __future__ import annotations

import re

import aiohttp

from cpc_signaling.server.demo import DEMO_FILES, STATIC

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, new_id


async def test_the_client_and_the_demo_are_served(server_factory: ServerFactory) -> None:
    async with server_factory() as srv, aiohttp.ClientSession() as http:
        for path, name in (("/client.js", "client.js"), ("/client.d.ts", "client.d.ts")):
            async with http.get(srv.http + path) as response:
                assert response.status == 200, path
                assert response.headers["Access-Control-Allow-Origin"] == "*"
                assert response.headers["Cache-Control"] == "no-cache"
                assert await response.read() == (STATIC / name).read_bytes()
                etag = response.headers["ETag"]
            # Revalidation: unchanged, so 304 without a body.
            async with http.get(srv.http + path, headers={"If-None-Match": etag}) as response:
                assert response.status == 304 and await response.read() == b""
        async with http.get(srv.http + "/client.js") as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
        async with http.get(srv.http + "/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        for route in DEMO_FILES:
            async with http.get(srv.http + route) as response:
                assert response.status == 200, route
        async with http.head(srv.http + "/client.js") as response:
            assert response.status == 200 and await response.read() == b""
        async with http.post(srv.http + "/client.js") as response:
            assert response.status == 405
        async with http.get(srv.http + "/demo/../server/demo.py") as response:
            assert response.status == 404


async def test_no_demo_keeps_the_client(server_factory: ServerFactory) -> None:
    async with server_factory(demo=False) as srv, aiohttp.ClientSession() as http:
        for path in ("/", "/demo/demo.js"):
            async with http.get(srv.http + path) as response:
                assert response.status == 404, path
        async with http.get(srv.http + "/client.js") as response:
            assert response.status == 200


async def test_metrics_count_the_message_just_handled(server_factory: ServerFactory) -> None:
    async with server_factory() as srv, aiohttp.ClientSession() as http:
        doc = new_id()
        async with srv.client() as a, srv.client() as b:
            await a.join(doc)
            await b.join(doc)
            await a.receive(TIMEOUT)
            await b.cursor(doc, 1, 1)
            await a.receive(TIMEOUT)
            async with http.get(srv.http + "/metrics") as response:
                text = await response.text()
        match = re.search(r'^cpc_messages_in_total\{type="CursorUpdate"\} (\S+)$', text, re.M)
        assert match and float(match.group(1)) == 1.0
        assert re.search(r"^cpc_snapshots_streaming 0\.0$", text, re.M)
        assert "cpc_close_timeouts_total" in text and "cpc_stored_rate_limited_total" in text
