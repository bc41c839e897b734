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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..core import DocumentState, Event

if TYPE_CHECKING:
    from ..server.metrics import Metrics


class BackendStartError(RuntimeError):
    """The backend must not start (say, its instance id is in use); a clear message."""


EventSink = Callable[[str, Event], None]
"""Called with (document_id, event) for each sequenced event, in order."""

EnvelopeSink = Callable[[str, int, str, Event], None]
"""A broker's delivery: (document_id, seq, origin instance id, event)."""


def _no_replica(document_id: str) -> DocumentState | None:
    return None


def _no_resync(state: DocumentState) -> None:
    return None


def _no_settle(document_id: str, event: Event) -> None:
    return None


def _no_held() -> list[tuple[str, str, str]]:
    return []


@dataclass(frozen=True, slots=True)
class BackendHooks:
    """What a backend with shared state may ask of the service that runs it.

    ``replica(doc)``: this instance's replica of a document (to re-register its
    local members after an outage). ``resync(state)``: replace a replica with
    one reloaded from the shared store, telling local members what changed
    (``Hub.resync``). ``settle(doc, event)``: the local side only of this
    instance's own Joined or Left that an installed state already contains
    (``Hub.settle``). ``held()``: (document, connection, user) for every document
    a local connection has joined and not left, whatever the shared state says (a
    survivor may have reaped them while this instance stalled): what a restore
    re-registers (``Hub.memberships``). ``metrics``: where readiness changes and
    failures count.
    """

    replica: Callable[[str], DocumentState | None] = _no_replica
    resync: Callable[[DocumentState], None] = _no_resync
    settle: Callable[[str, Event], None] = _no_settle
    held: Callable[[], list[tuple[str, str, str]]] = _no_held
    metrics: Metrics | None = None


class Broker(Protocol):
    """Fan-out between instances. Envelopes of subscribed documents go, in the
    order they were sequenced, to the callback the broker was built with."""

    async def subscribe(self, document_id: str) -> None:
        """Receive ``document_id``'s envelopes from now on (reference-counted).

        Returns once the subscription is active: anything sequenced later arrives.
        """

    async def unsubscribe(self, document_id: str) -> None:
        """Drop one reference; at zero, stop receiving ``document_id``'s envelopes."""


class PresenceStore(Protocol):
    """Shared state: members, presence in force, stored messages, sequence numbers."""

    async def commit(self, items: Sequence[tuple[str, Event]]) -> list[int]:
        """Apply, number and publish each (document, event), in order; each atomically.

        Returns the sequence numbers given.
        """

    async def load(self, document_id: str) -> DocumentState:
        """The shared state of a document, with the seq of the last event in it."""

    async def reap(self, instance_id: str) -> int:
        """Commit a ``Left`` for every membership of a dead instance; returns how many."""


class Backend(Protocol):
    """The server's view of a backend."""

    name: str

    @property
    def ready(self) -> bool:
        """True while the backend can serve (Redis: connected and restored)."""

    async def start(self, sink: EventSink, hooks: BackendHooks | None = None) -> None:
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

    def submit(self, document_id: str, event: Event) -> bool:
        """Sequence ``event``; it comes back through the sink, in order. Never blocks.

        False: refused (overloaded); the event will not come back and the caller
        tells the sender (CONNECTION_ERROR). The memory backend never refuses.
        """
