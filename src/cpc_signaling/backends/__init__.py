"""Backends: where document events are sequenced and shared state lives."""

from __future__ import annotations

from .base import (
    Backend,
    BackendHooks,
    BackendStartError,
    Broker,
    EnvelopeSink,
    EventSink,
    PresenceStore,
)
from .memory import MemoryBackend, MemoryBroker, MemoryBus, MemoryPresenceStore

__all__ = [
    "Backend",
    "BackendHooks",
    "BackendStartError",
    "Broker",
    "EnvelopeSink",
    "EventSink",
    "MemoryBackend",
    "MemoryBroker",
    "MemoryBus",
    "MemoryPresenceStore",
    "PresenceStore",
    "create_backend",
]


def create_backend(url: str | None, **options: object) -> Backend:
    """A backend from a URL: None or ``memory://`` for memory, ``redis://`` for Redis.

    Redis is imported only here, so the memory default needs no redis package.
    """
    if not url or url.startswith("memory:"):
        return MemoryBackend()
    if url.startswith(("redis://", "rediss://", "unix://")):
        import importlib

        # Lazy: the optional extra. (Imported by name so the memory default never loads it.)
        module = importlib.import_module(".redis", __name__)
        backend: Backend = module.RedisBackend(url, **options)
        return backend
    raise ValueError(f"unsupported backend URL scheme: {url.split(':', 1)[0]}")
