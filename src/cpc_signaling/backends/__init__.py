"""Backends: where document events are sequenced and shared state lives."""

from __future__ import annotations

from ..errors import BackendStartError
from .base import (
    Backend,
    BackendHooks,
    BackendMetrics,
    BlockSink,
    EventSink,
    Store,
)
from .memory import MemoryBackend, MemoryBus, MemoryStore

__all__ = [
    "Backend",
    "BackendHooks",
    "BackendMetrics",
    "BackendStartError",
    "BlockSink",
    "EventSink",
    "MemoryBackend",
    "MemoryBus",
    "MemoryStore",
    "Store",
    "create_backend",
]


def create_backend(url: str | None, **options: object) -> Backend:
    """A backend from a URL: None or ``memory://`` for memory; ``redis://`` (one or
    more, comma-separated: the nodes documents are spread over) for Redis.

    Redis is imported only here, so the memory default needs no redis package.
    ``options``: for Redis, ``options=`` a ``redis.RedisOptions`` (the service builds
    it from its configuration) and optionally ``metrics=``.
    """
    if not url or url.startswith("memory:"):
        return MemoryBackend()
    if url.startswith(("redis://", "rediss://", "unix://")):
        import importlib

        # Lazy: the optional extra. (Imported by name so the memory default never loads it.)
        module = importlib.import_module(".redis", __name__)
        backend: Backend = module.backend_from(url, **options)
        return backend
    raise ValueError(f"unsupported backend URL scheme: {url.split(':', 1)[0]}")
