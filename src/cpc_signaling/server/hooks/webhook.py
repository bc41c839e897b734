"""The HTTP side of the webhooks: one signed JSON POST, on an aiohttp ClientSession.

One :class:`WebhookClient` per webhook URL, so a slow event receiver never
holds up join checks. Redirects are not followed (a 3xx is an answer like any
other non-2xx), and at most :data:`MAX_RESPONSE_BYTES` of a response body are
read: a receiver cannot make the server buffer much.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from ... import __version__
from ...errors import WebhookError
from .signing import SIGNATURE_HEADER, sign

MAX_RESPONSE_BYTES = 4096
USER_AGENT = f"cpc-signaling/{__version__} (webhook)"


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    status: int
    body: bytes  # at most MAX_RESPONSE_BYTES
    content_type: str


def url_problem(url: str, flag: str) -> str | None:
    """Why ``url`` cannot be a webhook URL (for startup errors), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{flag} must be an http:// or https:// URL, not {url[:100]!r}"
    return None


class WebhookClient:
    """POSTs signed JSON bodies to ``url``; the session is opened on first use."""

    def __init__(
        self, url: str, *, secret: str | None, timeout: float, max_connections: int = 100
    ) -> None:
        self.url = url
        self._secret = secret.encode() if secret else None
        self.timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": USER_AGENT},
            )
        return session

    async def post(self, body: bytes, headers: dict[str, str] | None = None) -> WebhookResponse:
        """POST ``body`` (JSON), signed when a secret is set; raises :class:`WebhookError`
        when there is no HTTP answer within the timeout."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self._secret is not None:
            sent[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            async with self._open().post(
                self.url, data=body, headers=sent, allow_redirects=False
            ) as response:
                text = await response.content.read(MAX_RESPONSE_BYTES)
                return WebhookResponse(response.status, text, response.content_type)
        except TimeoutError:
            raise WebhookError("timeout", f"no answer within {self.timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise WebhookError("connection", _describe(exc)) from None

    async def close(self) -> None:
        session = self._session
        self._session = None
        if session is not None and not session.closed:
            await session.close()
            # Let the connector's transports finish closing (no "unclosed" warnings).
            await asyncio.sleep(0)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
