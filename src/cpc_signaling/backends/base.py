"""What a backend is: the sequencer and shared store of document events.

A backend puts each document's events in one total order, applies them to the
shared state (when there is one) and hands them, in that order, to every
instance that has local members in the document. Committing an event to the
shared state and publishing it must be one atomic step: otherwise a joiner's
snapshot and the live stream could overlap or leave a gap.

Two roles, kept apart so each can be tested on its own (see
``tests/backends/``):

* :class:`Broker`: fan-out. Delivers sequenced events of the documents this
  instance subscribed to, in sequence order, each once.
* :class:`PresenceStore`: shared state. Commits events (assigning their
  sequence numbers) and returns a document's state for a replica to start from.

:class:`Backend` is what the server talks to: both roles behind one object, plus
readiness. The memory backend is one process's hub itself; the Redis backend
lives in ``redis.py`` and is imported only when a ``redis://`` URL asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..core import DocumentState, Event

EventSink = Callable[[str, Event], None]
"""Called with (document_id, event) for each sequenced event, in order."""


class Broker(Protocol):
    async def subscribe(self, document_id: str) -> None:
        """Start receiving ``document_id``'s events (reference-counted by the caller)."""

    async def unsubscribe(self, document_id: str) -> None:
        """Stop receiving ``document_id``'s events."""


class PresenceStore(Protocol):
    def commit(self, document_id: str, event: Event) -> None:
        """Sequence ``event`` and apply it to the shared state; fans out through the broker."""

    async def load(self, document_id: str) -> DocumentState | None:
        """The shared state of a document (with its seq), or None where this instance holds it."""


class Backend(Protocol):
    """The server's view of a backend."""

    name: str

    @property
    def ready(self) -> bool:
        """True while the backend can serve (Redis: connected and restored)."""

    async def start(self, sink: EventSink) -> None:
        """Connect; from now on sequenced events go to ``sink``."""

    async def close(self) -> None:
        """Disconnect; the caller has already submitted every local leave."""

    async def attach(self, document_id: str) -> DocumentState | None:
        """Called before the first local join of a document: subscribe and load.

        Returns the state the local replica must start from, or None when the
        local replica is already the truth (memory).
        """

    async def detach(self, document_id: str) -> None:
        """Called after the last local member of a document left."""

    def submit(self, document_id: str, event: Event) -> None:
        """Sequence ``event``; it comes back through the sink, in order. Never blocks."""
