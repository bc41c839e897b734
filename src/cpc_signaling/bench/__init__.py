"""``cpc-signaling bench``: the load generator (see :mod:`.runner`), never imported by the server.

:mod:`.runner` plans a run, coordinates the worker processes and reports;
:mod:`.worker` is one generator process: raw WebSocket connections that send and count.
"""

from .runner import add_arguments, main

__all__ = ["add_arguments", "main"]
