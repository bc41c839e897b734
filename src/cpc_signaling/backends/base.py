"""What a backend is: the sequencer and shared store of document events.

A backend puts each document's events in one total order, applies them to the
shared state (when there is one) and hands them, in that order, to every
instance that has local members in the document. Committing an event to the
shared state and handing it on must be one atomic step: otherwise a joiner's
snapshot and the live stream could overlap or leave a gap.

:class:`Backend` is what the server talks to. The memory backend is one
process's hub itself (``shared`` is False: nothing to attach, load or
broadcast); the Redis backend (``backends/redis/``, imported only when a
``redis://`` URL asks for it) shares state between instances.

The conformance suite (``tests/backends/``) holds the Redis roles to the memory
reference: :class:`Store` (sequencing, shared state, who follows what) with a
subscriber delivering :data:`BlockSink` blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core import DocumentState, Event
from ..core.state import Outcome

EventSink = Callable[[str, Event, bool, int | None], None]
"""Called with (document_id, event, own, decided) for each sequenced event, in order.

``own``: the event originated on this instance (its connections, its API, its
reaps of dead instances, its drain). ``decided``: the outcome the shared store
decided, for the replica to follow (``DocumentState.apply``); None: decide here.
"""

BlockSink = Callable[[str, int, str, Sequence[Event], Sequence[int]], None]
"""A subscriber's delivery: (document_id, first seq, origin, events, decided)."""

OrderSink = Callable[[Mapping[str, str]], None]
"""An order from another instance (``Backend.broadcast``)."""


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class LabeledCounter(Protocol):
    def labels(self, *values: str) -> Counter: ...


class BackendMetrics(Protocol):
    """What a backend counts (``server.metrics.Metrics`` has all of it)."""

    @property
    def backend_ready(self) -> Gauge: ...

    @property
    def backend_state_changes(self) -> LabeledCounter:
        """By new state: ready, not_ready."""

    @property
    def backend_failures(self) -> LabeledCounter:
        """By reason."""

    @property
    def backend_reaped(self) -> Counter: ...

    @property
    def backend_malformed(self) -> Counter: ...


def _no_replica(document_id: str) -> DocumentState | None:
    return None


def _no_resync(state: DocumentState) -> None:
    return None


def _no_settle(document_id: str, event: Event, outcome: Outcome | None) -> None:
    return None


def _no_unfollowed(document_id: str, event: Event, outcome: Outcome) -> None:
    return None


def _no_held() -> list[tuple[str, str, str]]:
    return []


def _no_order(order: Mapping[str, str]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BackendHooks:
    """What a backend with shared state may ask of the service that runs it.

    ``replica(doc)``: this instance's replica of a document (to re-register its
    local members after an outage). ``resync(state)``: replace a replica with
    one reloaded from the shared store, telling local members what changed
    (``Hub.resync``). ``settle(doc, event, outcome)``: the local side only of this
    instance's own Joined or Left that an installed state already contains
    (``Hub.settle``; ``outcome``: what it did in the shared store, None if unknown).
    ``unfollowed(doc, event, outcome)``: an event that originated here in a document
    this instance does not follow (an API publish, a reap), with what it did: it
    goes to no replica here, but the application may want to hear of it.
    ``held()``: (document, connection, user) for every document a local connection
    has joined and not left, whatever the shared state says (a
    survivor may have reaped them while this instance stalled): what a restore
    re-registers (``Hub.memberships``). ``live(conn)``: is this a local connection
    still open. ``order(order)``: another instance's :meth:`Backend.broadcast`.
    ``metrics``: where readiness changes and failures count.
    """

    replica: Callable[[str], DocumentState | None] = _no_replica
    resync: Callable[[DocumentState], None] = _no_resync
    settle: Callable[[str, Event, Outcome | None], None] = _no_settle
    held: Callable[[], list[tuple[str, str, str]]] = _no_held
    live: Callable[[str], bool] = bool
    order: OrderSink = _no_order
    unfollowed: Callable[[str, Event, Outcome], None] = _no_unfollowed
    metrics: BackendMetrics | None = None


class Store(Protocol):
    """Shared state of one set of documents: sequencing, state, who follows what.

    One instance's view (``instance_id``); every instance's store shares the state.
    """

    async def commit(self, items: Sequence[tuple[str, Event]]) -> list[int]:
        """Sequence and apply each (document, event), in order; hand each to every
        instance following its document but this one. Returns the seqs given."""

    async def follow(self, document_id: str) -> DocumentState:
        """From now on this instance gets the document's events; returns the state
        holding every earlier one (with the seq of the last): atomically."""

    async def unfollow(self, document_id: str) -> None:
        """Stop getting the document's events."""

    async def load(self, document_id: str) -> DocumentState:
        """The shared state of a document, with the seq of the last event in it."""

    async def reap(self, instance_id: str) -> int:
        """Commit a ``Left`` for every membership of a dead instance; returns how many."""


class Backend(Protocol):
    """The server's view of a backend."""

    name: str
    shared: bool
    """True when instances share state through it (Redis): the service attaches
    documents before joins, detaches them after, and reads a document it does not
    follow with :meth:`load`. False (memory): the hub itself is the state."""

    @property
    def ready(self) -> bool:
        """True while the backend can serve (Redis: connected and restored)."""

    async def start(self, sink: EventSink, hooks: BackendHooks | None = None) -> None:
        """Connect; from now on sequenced events go to ``sink``."""

    async def close(self) -> None:
        """Disconnect; the caller has already submitted every local leave."""

    async def attach(self, document_id: str) -> DocumentState | None:
        """Called before the first local join of a document: follow and load.

        Returns the state the local replica must start from, or None when the
        local replica is already the truth (memory, or Redis away).
        """

    async def detach(self, document_id: str) -> None:
        """Called after the last local member of a document left."""

    def submit(self, document_id: str, event: Event) -> bool:
        """Sequence ``event``; it comes back through the sink, in order. Never blocks.

        False: refused (overloaded); the event will not come back and the caller
        tells the sender (CONNECTION_ERROR). The memory backend never refuses.
        """

    async def load(self, document_id: str) -> DocumentState | None:
        """A document's shared state (for the server API's presence read), or None
        when there is no shared state (memory) or it cannot be read now."""

    async def broadcast(self, order: Mapping[str, str]) -> int:
        """Send ``order`` to every other instance (their ``BackendHooks.order``);
        returns how many received it. Raises ConnectionError when it cannot."""

    def stats(self) -> dict[str, tuple[str, float]]:
        """Gauges for /metrics, read at scrape time: {name: (help, value)}."""
