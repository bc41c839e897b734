"""The Redis backend (``pip install 'cpc-signaling[redis]'``); see docs/scaling.md.

By job: ``options`` (what it is configured with), ``resp`` (one lean RESP3
connection), ``wire`` (channel names, the messages on an instance's inbox),
``scripts`` (the Lua scripts) and ``store`` (calling them), ``stream`` (the
per-document ordering state machine, pure), ``node`` (one Redis node: writer,
supervisor, restore), ``backend`` (the Backend the service uses: documents
partitioned over nodes, orders to every instance).
"""

from __future__ import annotations

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
    url: str, *, options: RedisOptions | None = None, metrics: BackendMetrics | None = None
) -> RedisBackend:
    """A Redis backend for ``url`` (one or more nodes, comma-separated): with
    ``options`` as the service builds them, or the defaults."""
    if options is None:
        raise ValueError("the Redis backend needs its RedisOptions (an instance id at least)")
    if options.nodes != parse_nodes(url):
        raise ValueError("the URL and the options name different Redis nodes")
    return RedisBackend(options, metrics)
