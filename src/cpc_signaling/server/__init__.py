"""The server: aiohttp transport, HTTP endpoints, configuration and lifecycle."""

from .app import create_app
from .config import Config
from .runner import serve
from .service import Peer, Service

__all__ = ["Config", "Peer", "Service", "create_app", "serve"]
