"""The browser side over plain HTTP: the JavaScript client and the live demo page.

``/client.js`` (and its TypeScript declarations at ``/client.d.ts``) is always
served, so a page can ``import { CpcClient } from "https://signaling.example/client.js"``.
The demo page (``/``, ``/demo/demo.css``, ``/demo/demo.js``) is served unless
``--no-demo``. Only the files named here are served: no directory listing, no
path taken from the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

STATIC: Final = Path(__file__).resolve().parent.parent / "static"

_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The demo loads only its own files and talks only to its own origin.
_DEMO_CSP: Final = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)

CLIENT_FILES: Final = {"/client.js": "client.js", "/client.d.ts": "client.d.ts"}
DEMO_FILES: Final = {
    "/": "index.html",
    "/demo/demo.css": "demo.css",
    "/demo/demo.js": "demo.js",
    "/demo/favicon.svg": "favicon.svg",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _file(name: str, *, csp: str | None = None) -> Handler:
    path = STATIC / name
    headers = {
        "Content-Type": _TYPES.get(path.suffix, "application/octet-stream"),
        # Revalidate each time (ETag / Last-Modified): an upgraded server is seen at once.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        # The client module may be imported by pages on other origins.
        "Access-Control-Allow-Origin": "*",
    }
    if csp is not None:
        headers["Content-Security-Policy"] = csp
        del headers["Access-Control-Allow-Origin"]

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers=headers)

    return handler


def add_routes(app: web.Application, *, demo: bool) -> None:
    """Add the client routes, and the demo's when ``demo``."""
    for route, name in CLIENT_FILES.items():
        app.router.add_get(route, _file(name))
    if demo:
        for route, name in DEMO_FILES.items():
            app.router.add_get(route, _file(name, csp=_DEMO_CSP if name == "index.html" else None))
