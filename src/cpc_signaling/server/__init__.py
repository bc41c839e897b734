"""The server: transports (aiohttp, ASGI), the front door, the service and its lifecycle."""

from .app import create_app, listen
from .config import Config
from .runner import serve
from .service import Peer, Service

__all__ = ["Config", "Peer", "Service", "create_app", "listen", "serve"]
