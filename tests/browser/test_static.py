"""The files behind the browser side, over plain HTTP (no browser needed).

One source of truth for the JS client: src/cpc_signaling/static/client.js ships
in the wheel and is served at /client.js; clients/js/ holds a byte-identical
copy for npm (``npm run sync`` there copies it).
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from cpc_signaling.server.demo import CLIENT_FILES, DEMO_FILES, STATIC

from ..helpers import running_server
from .conftest import ROOT

NPM = ROOT / "clients" / "js"


@pytest.mark.parametrize("name", ["client.js", "client.d.ts"])
def test_the_npm_copy_is_identical_to_the_served_client(name: str) -> None:
    served = (STATIC / name).read_bytes()
    published = (NPM / name).read_bytes()
    assert published == served, (
        f"clients/js/{name} differs from src/cpc_signaling/static/{name}: "
        "edit the static one, then `cd clients/js && npm run sync`"
    )


def test_package_json_points_at_existing_files() -> None:
    package = json.loads((NPM / "package.json").read_text())
    assert package["type"] == "module"
    for key in ("main", "types"):
        assert (NPM / package[key]).is_file(), package[key]
    for name in package["files"]:
        assert (NPM / name).is_file(), name
    exports = package["exports"]["."]
    assert (NPM / exports["default"]).is_file()
    assert (NPM / exports["types"]).is_file()


def test_every_served_file_exists_in_the_package() -> None:
    for name in [*CLIENT_FILES.values(), *DEMO_FILES.values()]:
        assert (STATIC / name).is_file(), name


async def test_demo_and_client_are_served() -> None:
    async with running_server() as server, aiohttp.ClientSession() as http:
        async with http.get(server.http + "/client.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/javascript")
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            body = await response.read()
            assert body == (STATIC / "client.js").read_bytes()
        async with http.get(server.http + "/") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert 'src="/demo/demo.js"' in await response.text()
        for route in DEMO_FILES:
            async with http.get(server.http + route) as response:
                assert response.status == 200, route
        async with http.get(server.http + "/demo/../server/demo.py") as response:
            assert response.status == 404


async def test_no_demo_turns_the_page_off_but_keeps_the_client() -> None:
    async with running_server(demo=False) as server, aiohttp.ClientSession() as http:
        async with http.get(server.http + "/") as response:
            assert response.status == 404
        async with http.get(server.http + "/demo/demo.js") as response:
            assert response.status == 404
        async with http.get(server.http + "/client.js") as response:
            assert response.status == 200
