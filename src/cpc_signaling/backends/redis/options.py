"""What the Redis backend is configured with: one frozen object, built by its caller.

The backend never reads the server's configuration itself (``backends/`` knows
nothing of ``server/``): the service builds :class:`RedisOptions` from its
``Config`` and hands it over.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.connection import parse_url


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where one Redis node is and how to log in (parsed from its URL)."""

    url: str
    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_verify: bool = True

    @classmethod
    def parse(cls, url: str) -> NodeAddress:
        """``redis://[user:pass@]host[:port][/db]``, ``rediss://`` (TLS; add
        ``?ssl_cert_reqs=none`` to skip verification) or ``unix:///path?db=N``."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL: {_safe(url)}")
        parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        query = parse_qs(urlsplit(url).query)
        return cls(
            url=url,
            host=str(parts.get("host") or "127.0.0.1"),
            port=int(parts.get("port") or 6379),
            path=parts.get("path"),
            db=int(parts.get("db") or 0),
            username=parts.get("username"),
            password=parts.get("password"),
            tls=url.startswith("rediss://"),
            tls_verify=query.get("ssl_cert_reqs", ["required"])[0].lower() != "none",
        )

    @property
    def name(self) -> str:
        """For logs: where, without credentials."""
        where = self.path or f"{self.host}:{self.port}"
        return f"{where}/{self.db}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context()
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _safe(url: str) -> str:
    """A URL for a message: the password masked."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***", 1)
    return url


def parse_nodes(urls: str) -> tuple[NodeAddress, ...]:
    """One or more Redis URLs, comma-separated: the nodes documents are spread over."""
    nodes = tuple(NodeAddress.parse(u.strip()) for u in urls.split(",") if u.strip())
    if not nodes:
        raise ValueError("no Redis URL given")
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise ValueError(f"Redis node {node.name} is listed twice")
        seen.add(node.name)
    return nodes


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Everything the Redis backend needs; see docs/scaling.md for each."""

    nodes: tuple[NodeAddress, ...]
    instance_id: str
    prefix: str = "cpc"
    heartbeat_interval: float = 2.0
    instance_timeout: float = 6.0
    document_ttl: float = 7 * 24 * 3600.0
    # Outcomes Redis decides with the limits of the instance whose event it is.
    max_members_per_document: int = 1000
    max_stored_per_document: int = 1000
    max_stored_bytes_per_document: int = 4 << 20
    # Seconds between two flushes of presence under load (joins, leaves,
    # annotations and comments never wait); 0 flushes every loop iteration.
    flush_interval: float = 0.002
    # Seconds a document nobody here follows any more stays followed, so that a
    # join soon after costs no reload (0: let go at once).
    linger: float = 30.0
    linger_documents: int = 1000
    # Refuse to start when Redis may evict keys (maxmemory-policy not noeviction).
    strict: bool = False
    # close(): how long the drain's leaves may take to reach Redis.
    drain_timeout: float = 2.0

    def __post_init__(self) -> None:
        if not self.instance_id or any(c.isspace() or c == "#" for c in self.instance_id):
            raise ValueError("an instance id must be non-empty and contain no whitespace or '#'")
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError("the Redis prefix must be non-empty and contain no whitespace")

    @classmethod
    def from_urls(cls, urls: str, instance_id: str, **options: Any) -> RedisOptions:
        return cls(nodes=parse_nodes(urls), instance_id=instance_id, **options)
