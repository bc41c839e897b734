"""The plain HTTP endpoints both transports serve, decided once.

``/healthz`` (200 while the process serves), ``/readyz`` (200 when ready, 503
while draining or while the backend is not ready), ``/metrics`` (Prometheus
text; the hot-path tally is flushed first, so a scrape sees the current loop
iteration), and the browser files of ``demo.py`` (``/client.js``,
``/client.d.ts``; the demo page unless ``--no-demo``). GET and HEAD only.

A transport turns a request into :meth:`Endpoints.respond` and writes the
:class:`Response` back; the HTTP API (``/api/``) is ``api.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import demo
from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .service import Service

_TEXT = {"Content-Type": "text/plain; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(_TEXT))


class Endpoints:
    __slots__ = ("_files", "_service")

    def __init__(self, service: Service) -> None:
        self._service = service
        self._files = demo.load(demo=service.config.demo)

    @property
    def paths(self) -> list[str]:
        """Every path answered here."""
        return ["/healthz", "/readyz", "/metrics", *self._files]

    def respond(self, method: str, path: str, if_none_match: str | None = None) -> Response:
        """The answer to ``method path`` (404 for a path that is not one of ours)."""
        if path not in ("/healthz", "/readyz", "/metrics") and path not in self._files:
            return Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", {**_TEXT, "Allow": "GET, HEAD"})
        response = self._get(path, if_none_match)
        if method == "HEAD":
            return Response(response.status, b"", response.headers)
        return response

    def _get(self, path: str, if_none_match: str | None) -> Response:
        service = self._service
        if path == "/healthz":
            return Response(200, b"ok\n")
        if path == "/readyz":
            ready, text = service.readiness()
            return Response(200 if ready else 503, text.encode())
        if path == "/metrics":
            service.tally.flush()
            return Response(200, service.metrics.render(), {"Content-Type": CONTENT_TYPE})
        file = self._files[path]
        if if_none_match is not None and file.etag in {t.strip() for t in if_none_match.split(",")}:
            return Response(304, b"", {"ETag": file.etag, "Cache-Control": "no-cache"})
        return Response(200, file.body, dict(file.headers))
