"""What the configuration asks for, built: the backend and the hub's limits.

Kept apart from the service so that it composes parts it is handed, and so that
the optional Redis extra is imported only when ``--redis-url`` asks for it.
"""

from __future__ import annotations

from ..backends import Backend, MemoryBackend, create_backend
from ..core import Limits
from .config import Config

__all__ = ["backend_for", "limits_for"]


def limits_for(config: Config) -> Limits:
    """The hub's bounds, from the flags."""
    return Limits(
        max_documents_per_connection=config.max_documents_per_connection,
        max_members_per_document=config.max_members_per_document,
        max_stored_per_document=config.max_stored_per_document,
        max_stored_bytes_per_document=config.max_stored_bytes_per_document,
        max_documents=config.max_documents,
        max_stored_bytes=config.max_stored_bytes,
    )


def backend_for(config: Config, instance_id: str) -> Backend:
    """The backend ``config`` asks for: memory, or Redis (``--redis-url``, one node or
    several) with its options taken from the configuration."""
    if not config.redis_url:
        return MemoryBackend()
    from ..backends.redis import RedisOptions  # the optional extra, only when asked for

    options = RedisOptions.from_urls(
        config.redis_url,
        instance_id,
        prefix=config.redis_prefix,
        heartbeat_interval=config.heartbeat_interval,
        instance_timeout=config.instance_timeout,
        document_ttl=config.document_ttl,
        max_members_per_document=config.max_members_per_document,
        max_stored_per_document=config.max_stored_per_document,
        max_stored_bytes_per_document=config.max_stored_bytes_per_document,
        flush_interval=config.redis_flush_interval,
        linger=config.redis_linger,
        strict=config.redis_strict,
        drain_timeout=config.drain_timeout,
    )
    return create_backend(config.redis_url, options=options)
