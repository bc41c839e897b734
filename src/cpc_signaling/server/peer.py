"""How the service reaches one connection: the interface each transport implements.

Its own module so that the service, the session and the join flow can all name it
without importing one another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..core import Send

if TYPE_CHECKING:
    from .outbox import Outbox

__all__ = ["Peer"]


class Peer(Protocol):
    """How the service reaches one connection; implemented by each transport."""

    def deliver(self, send: Send[Peer]) -> None:
        """Queue or write ``send.frames``; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """Run the closing handshake with ``code``: the close frame after what is
        queued, then a lingering close, the socket aborted if it does not finish in
        time. Never blocks; idempotent."""

    @property
    def outbox(self) -> Outbox | None:
        """Frames waiting for the socket (None: nothing ever waited)."""
