"""The browser side over plain HTTP: the JavaScript client and the live demo page.

``/client.js`` (and its TypeScript declarations at ``/client.d.ts``) is always
served, so a page can ``import { CpcClient } from "https://signaling.example/client.js"``.
The demo page (``/``, ``/demo/demo.css``, ``/demo/demo.js``) is served unless
``--no-demo``. Only the files named here are served: no directory listing, no
path taken from the request. Both transports serve them (``endpoints.py``): the
files are read once at start, answered with an ``ETag`` and ``Cache-Control:
no-cache`` (a browser revalidates and gets ``304`` while the file is unchanged).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    headers: dict[str, str]  # Content-Type, ETag and the policy headers

    @property
    def etag(self) -> str:
        return self.headers["ETag"]


def _file(name: str, *, csp: str | None = None) -> StaticFile:
    path = STATIC / name
    body = path.read_bytes()
    headers = {
        "Content-Type": _TYPES.get(path.suffix, "application/octet-stream"),
        # Revalidate each time (ETag): an upgraded server is seen at once.
        "Cache-Control": "no-cache",
        "ETag": '"' + hashlib.sha256(body).hexdigest()[:20] + '"',
        "X-Content-Type-Options": "nosniff",
        # The client module may be imported by pages on other origins.
        "Access-Control-Allow-Origin": "*",
    }
    if csp is not None:
        headers["Content-Security-Policy"] = csp
        del headers["Access-Control-Allow-Origin"]
    return StaticFile(body, headers)


def load(*, demo: bool) -> dict[str, StaticFile]:
    """The files to serve, by path: the client's, and the demo's when ``demo``."""
    files = {route: _file(name) for route, name in CLIENT_FILES.items()}
    if demo:
        for route, name in DEMO_FILES.items():
            files[route] = _file(name, csp=_DEMO_CSP if name == "index.html" else None)
    return files
