"""The in-memory backend: one process is the whole service.

Sequencing is the call order; the hub's replicas are the only state. Submit
hands the event straight back, so a message is fanned out within the call that
received it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core import DocumentState, Event, Left
from ..core.state import DEFAULT_MAX_STORED_BYTES
from .base import BackendHooks, EnvelopeSink, EventSink


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._sink: EventSink | None = None

    @property
    def ready(self) -> bool:
        return self._sink is not None

    async def start(self, sink: EventSink, hooks: BackendHooks | None = None) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    async def attach(self, document_id: str) -> DocumentState | None:
        return None

    async def detach(self, document_id: str) -> None:
        return None

    def submit(self, document_id: str, event: Event) -> bool:
        sink = self._sink
        if sink is None:
            raise RuntimeError("backend not started")
        sink(document_id, event)
        return True


# -- The Broker and PresenceStore roles in memory ---------------------------------
#
# The reference implementations the conformance suite (tests/backends/) holds the
# Redis ones to: the canonical state is a DocumentState, so the Redis scripts are
# checked against the very code every replica runs.


class MemoryBus:
    """The "Redis" of memory brokers: routes envelopes to subscribed brokers."""

    def __init__(self) -> None:
        self.subscribers: dict[str, list[MemoryBroker]] = {}

    def publish(self, document_id: str, seq: int, origin: str, event: Event) -> None:
        for broker in list(self.subscribers.get(document_id, ())):
            broker.deliver(document_id, seq, origin, event)


class MemoryBroker:
    """One instance's subscriptions on a :class:`MemoryBus`, reference-counted."""

    def __init__(self, bus: MemoryBus, deliver: EnvelopeSink) -> None:
        self.bus = bus
        self.deliver = deliver
        self.refs: dict[str, int] = {}

    async def subscribe(self, document_id: str) -> None:
        refs = self.refs.get(document_id, 0)
        self.refs[document_id] = refs + 1
        if refs == 0:
            self.bus.subscribers.setdefault(document_id, []).append(self)

    async def unsubscribe(self, document_id: str) -> None:
        refs = self.refs.get(document_id, 0) - 1
        if refs > 0:
            self.refs[document_id] = refs
            return
        self.refs.pop(document_id, None)
        subscribers = self.bus.subscribers.get(document_id, [])
        if self in subscribers:
            subscribers.remove(self)
        if not subscribers:
            self.bus.subscribers.pop(document_id, None)


class MemoryPresenceStore:
    """Canonical state as DocumentStates; commit applies, numbers and publishes."""

    def __init__(
        self,
        bus: MemoryBus,
        *,
        instance_id: str = "memory",
        max_members: int = 1000,
        max_stored: int = 1000,
        max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES,
    ) -> None:
        self.bus = bus
        self.instance_id = instance_id
        self.max_members = max_members
        self.max_stored = max_stored
        self.max_stored_bytes = max_stored_bytes
        self.documents: dict[str, DocumentState] = {}

    def _state(self, document_id: str) -> DocumentState:
        state = self.documents.get(document_id)
        if state is None:
            state = DocumentState(
                document_id, max_stored=self.max_stored, max_stored_bytes=self.max_stored_bytes
            )
            self.documents[document_id] = state
        return state

    async def commit(self, items: Sequence[tuple[str, Event]]) -> list[int]:
        seqs = []
        for document_id, event in items:
            state = self._state(document_id)
            state.apply(event, max_members=self.max_members)
            seqs.append(state.seq)
            self.bus.publish(document_id, state.seq, self.instance_id, event)
        return seqs

    async def load(self, document_id: str) -> DocumentState:
        source = self._state(document_id)
        copy = DocumentState(
            document_id,
            max_stored=self.max_stored,
            max_stored_bytes=self.max_stored_bytes,
            seq=source.seq,
        )
        for user in source.users.values():
            copy.restore_user(user.user_id, sorted(user.conns), info=user.info)
        for conn, seq, kind, frame in source.connection_presence():
            copy.restore_presence(conn, seq, kind, frame)
        copy.load_stored(source.stored)
        return copy

    async def reap(self, instance_id: str) -> int:
        prefix = instance_id + "/"
        leaves = [
            (document_id, Left(conn, user))
            for document_id, state in self.documents.items()
            for conn, user in state.conns.items()
            if conn.rsplit("/", 1)[0] + "/" == prefix
        ]
        await self.commit(leaves)
        return len(leaves)
