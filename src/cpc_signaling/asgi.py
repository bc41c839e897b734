"""The ASGI app: ``from cpc_signaling.asgi import create_app``.

The transport lives in :mod:`cpc_signaling.server.asgi`; this module keeps the
short import path (docs/embedding.md).
"""

from __future__ import annotations

from .server.asgi import AsgiPeer, SignalingApp, create_app, from_environment

__all__ = ["AsgiPeer", "SignalingApp", "create_app", "from_environment"]
