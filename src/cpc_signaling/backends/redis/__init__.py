"""The Redis backend (``pip install 'cpc-signaling[redis]'``); see docs/scaling.md.

By job: ``options`` (what it is configured with), ``resp`` (one lean RESP3
connection), ``wire`` (channel names, the messages on an instance's inbox),
``scripts`` (the Lua scripts) and ``store`` (calling them), ``stream`` (the
per-document ordering state machine, pure), ``node`` (one Redis node: writer,
supervisor, restore), ``backend`` (the Backend the service uses: documents
partitioned over nodes, orders to every instance).
"""

from __future__ import annotations

from typing import Any

from ..base import BackendMetrics
from .backend import RedisBackend, shard
from .options import NodeAddress, RedisOptions, parse_nodes

__all__ = [
    "NodeAddress",
    "RedisBackend",
    "RedisOptions",
    "backend_from",
    "parse_nodes",
    "shard",
]


def backend_from(
    url: str,
    *,
    options: RedisOptions | None = None,
    metrics: BackendMetrics | None = None,
    config: Any = None,
    instance_id: str | None = None,
) -> RedisBackend:
    """A Redis backend for ``url`` (one or more nodes, comma-separated).

    ``options`` is what the service builds; ``config`` + ``instance_id`` (any
    object with the server configuration's field names) is read when it does not.
    """
    if options is None:
        if instance_id is None:
            raise ValueError("an instance id is needed")
        options = options_from(url, instance_id, config)
    return RedisBackend(options, metrics)


def options_from(url: str, instance_id: str, config: Any) -> RedisOptions:
    """RedisOptions from a configuration object's fields (``redis_*`` and the limits)."""
    fields = {
        "prefix": "redis_prefix",
        "heartbeat_interval": "heartbeat_interval",
        "instance_timeout": "instance_timeout",
        "document_ttl": "document_ttl",
        "max_members_per_document": "max_members_per_document",
        "max_stored_per_document": "max_stored_per_document",
        "max_stored_bytes_per_document": "max_stored_bytes_per_document",
        "flush_interval": "redis_flush_interval",
        "linger": "redis_linger",
        "strict": "redis_strict",
        "drain_timeout": "drain_timeout",
    }
    given = {
        name: getattr(config, field) for name, field in fields.items() if hasattr(config, field)
    }
    return RedisOptions.from_urls(url, instance_id, **given)
