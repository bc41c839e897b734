"""The in-memory backend: one process is the whole service.

Sequencing is the call order; the hub's replicas are the only state. Submit
hands the event straight back, so a message is fanned out within the call that
received it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..core import DocumentState, Event, Left, Relayed
from ..core.state import DEFAULT_MAX_STORED_BYTES, STORED_KINDS, Outcome
from .base import BackendHooks, BlockSink, EventSink


class MemoryBackend:
    name = "memory"
    shared = False

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
        sink(document_id, event, True, None)
        return True

    async def load(self, document_id: str) -> DocumentState | None:
        return None  # the hub is the state

    async def broadcast(self, order: Mapping[str, str]) -> int:
        return 0  # no other instance

    def stats(self) -> dict[str, tuple[str, float]]:
        return {}


# -- The Store role in memory -----------------------------------------------------
#
# The reference the conformance suite (tests/backends/) holds the Redis store to:
# the canonical state is a DocumentState, so the Redis scripts are checked against
# the very code every replica runs.


DECIDED: dict[Outcome, int] = {  # what a shared store tells followers (redis/wire.py)
    Outcome.JOINED_AGAIN: 0,
    Outcome.REJECTED_FULL: 1,
    Outcome.JOINED_FIRST: 2,
    Outcome.REJOINED: 3,
    Outcome.LEFT_OTHERS_REMAIN: 0,
    Outcome.LEFT_LAST: 1,
    Outcome.IGNORED: -1,  # a leave of no member
}


class MemoryBus:
    """The "Redis" of memory stores: canonical states, followers, inboxes."""

    def __init__(self) -> None:
        self.documents: dict[str, DocumentState] = {}
        self.appended: dict[str, int] = {}  # document -> stored messages ever appended
        self.followers: dict[str, set[str]] = {}
        self.inboxes: dict[str, BlockSink] = {}


class MemoryStore:
    """One instance's view of a :class:`MemoryBus` (see ``base.Store``)."""

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

    def subscribe(self, deliver: BlockSink) -> None:
        """Receive the events of followed documents that other instances commit."""
        self.bus.inboxes[self.instance_id] = deliver

    def _state(self, document_id: str) -> DocumentState:
        state = self.bus.documents.get(document_id)
        if state is None:
            state = DocumentState(document_id)
            self.bus.documents[document_id] = state
        return state

    def _decide(self, document_id: str, state: DocumentState, event: Event) -> int:
        """What Redis tells replicas (``wire``): join refused, oldest stored index.
        Each event is decided with the limits of the instance committing it."""
        state.max_stored = self.max_stored
        state.max_stored_bytes = self.max_stored_bytes
        outcome = state.apply(event, max_members=self.max_members)
        if type(event) is not Relayed:
            return DECIDED[outcome]
        if event.kind in STORED_KINDS:
            if outcome is not Outcome.RELAYED:
                return -1
            appended = self.bus.appended.get(document_id, 0) + 1
            self.bus.appended[document_id] = appended
            return appended - len(state.stored)
        return 0

    async def commit(self, items: Sequence[tuple[str, Event]], origin: str = "") -> list[int]:
        seqs = []
        for document_id, event in items:
            state = self._state(document_id)
            decided = self._decide(document_id, state, event)
            seqs.append(state.seq)
            for follower in sorted(self.bus.followers.get(document_id, ())):
                deliver = self.bus.inboxes.get(follower)
                if deliver is not None and follower != self.instance_id:
                    deliver(document_id, state.seq, origin or self.instance_id, [event], [decided])
        return seqs

    async def follow(self, document_id: str) -> DocumentState:
        self.bus.followers.setdefault(document_id, set()).add(self.instance_id)
        return await self.load(document_id)

    async def unfollow(self, document_id: str) -> None:
        self.bus.followers.get(document_id, set()).discard(self.instance_id)

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
        copy.load_stored(source.stored, as_recorded=True)
        return copy

    async def reap(self, instance_id: str) -> int:
        prefix = instance_id + "/"
        leaves: list[tuple[str, Event]] = [
            (document_id, Left(conn, user))
            for document_id, state in self.bus.documents.items()
            for conn, user in state.conns.items()
            if conn.rsplit("/", 1)[0] + "/" == prefix
        ]
        for document_id, event in leaves:
            # Every follower gets them, and the reaper (their origin) whether it follows
            # the document or not.
            state = self._state(document_id)
            decided = self._decide(document_id, state, event)
            followers = self.bus.followers.get(document_id, set()) | {self.instance_id}
            for follower in sorted(followers):
                deliver = self.bus.inboxes.get(follower)
                if deliver is not None:
                    deliver(document_id, state.seq, self.instance_id, [event], [decided])
        for followers in self.bus.followers.values():
            followers.discard(instance_id)
        return len(leaves)
