"""Following documents: every call the service makes into its backend, in one place.

A shared backend (Redis) holds the documents' state; this instance follows a
document (subscribes and loads it: ``attach``) while a local connection joins
it, and lets go (``detach``) once the last local member's leave has applied.
The memory backend's state is the hub itself: nothing to attach or detach.

Rules kept here:

* the first local join of a document waits for its attach; joins arriving
  meanwhile wait for the same attach (one future per document);
* a document is detached once no local connection holds it (``Hub.released``),
  even while its attach is still in flight (the joiner left meanwhile);
* the backend's attaches and detaches of one document run one at a time, in the
  order they were decided (a lock per document, FIFO): a detach decided during an
  attach runs after it (and not at all if the attach failed), an attach decided
  during a detach runs after it. Without this, "last member leaves, detach in
  flight, a member joins, attach, the member leaves again" let an attach and a
  detach of one document overlap in the backend: the document stayed followed
  with nobody here (its events kept coming, forever), and the next member's
  attach and detach no longer balanced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from ..backends import Backend, BackendHooks, EventSink
from ..core import DocumentState, Event, Hub

log = logging.getLogger("cpc_signaling.server")


class Following:
    __slots__ = ("_attached", "_hub", "_locks", "_spawn", "backend", "detaching", "shared")

    def __init__(
        self, backend: Backend, hub: Hub[Any], spawn: Callable[[Awaitable[Any]], None]
    ) -> None:
        self.backend = backend
        self._hub = hub
        self._spawn = spawn
        # A shared backend (Redis) holds the state and must be attached to per document;
        # the memory backend's state is the hub itself: no attach, no detach, no task.
        self.shared = backend.shared
        self._attached: dict[str, asyncio.Future[None]] = {}  # attach tasks, done or not
        # Detaches decided and not finished (waiting for their turn, or under way).
        self.detaching: dict[str, asyncio.Future[None]] = {}
        # Per document: its lock (the backend's attach/detach one at a time) and how
        # many attaches and detaches hold it or wait for it (dropped at zero).
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # -- the backend's life ------------------------------------------------------

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def ready(self) -> bool:
        return self.backend.ready

    async def start(self, sink: EventSink, hooks: BackendHooks) -> None:
        await self.backend.start(sink, hooks)

    async def close(self) -> None:
        await self.backend.close()

    def stats(self) -> dict[str, tuple[str, float]]:
        return self.backend.stats()

    async def broadcast(self, order: Mapping[str, str]) -> int:
        """Send ``order`` to every other instance (raises ConnectionError when it cannot)."""
        return await self.backend.broadcast(order)

    # -- events --------------------------------------------------------------------

    def submit(self, doc_id: str, event: Event) -> bool:
        """Sequence ``event``; False when the backend refused it (overloaded)."""
        accepted = self.backend.submit(doc_id, event)
        if self._hub.released:
            self.detach_released()
        return accepted

    def must_attach(self, doc_id: str) -> bool:
        """True when a join of ``doc_id`` must wait for :meth:`attach` first."""
        if not self.shared:
            return False
        attached = self._attached.get(doc_id)
        return attached is None or not attached.done()

    @contextlib.asynccontextmanager
    async def _turn(self, doc_id: str) -> AsyncIterator[None]:
        """Hold ``doc_id``'s lock: its attaches and detaches, one at a time, in order."""
        entry = self._locks.get(doc_id)
        if entry is None:
            entry = self._locks[doc_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0] and self._locks.get(doc_id) is entry:
                del self._locks[doc_id]

    async def attach(self, doc_id: str) -> None:
        """Follow ``doc_id`` (subscribe, load, install the replica); raises what the
        backend raises. Concurrent callers share one attach, which runs as its own
        task: a caller cancelled meanwhile (its connection aborted) does not cut the
        backend's attach in half, and the detach that follows can undo it."""
        attached = self._attached.get(doc_id)
        if attached is None:
            attached = asyncio.ensure_future(self._attach(doc_id))
            attached.add_done_callback(_retrieve)
            self._attached[doc_id] = attached
            self._spawn(attached)
        await asyncio.shield(attached)

    async def _attach(self, doc_id: str) -> None:
        async with self._turn(doc_id):  # after a detach decided before it
            try:
                state = await self.backend.attach(doc_id)
            except Exception:
                if self._attached.get(doc_id) is asyncio.current_task():
                    del self._attached[doc_id]  # the next join tries again
                raise
            if state is not None:
                self._hub.install(state)

    async def _detach(self, doc_id: str, attached: asyncio.Future[None]) -> None:
        try:
            async with self._turn(doc_id):  # after the attach it undoes, even in flight
                if not attached.done():
                    await asyncio.wait([attached])
                if not attached.cancelled() and attached.exception() is not None:
                    return  # that attach did not happen: nothing to undo
                await self.backend.detach(doc_id)
        finally:
            if doc_id not in self._attached:  # not attached again meanwhile
                self._hub.forget(doc_id)
            if self.detaching.get(doc_id) is asyncio.current_task():
                del self.detaching[doc_id]

    async def load(self, doc_id: str) -> DocumentState | None:
        """The shared state of a document this instance does not follow (None: the
        backend has no shared state, or cannot say now)."""
        return await self.backend.load(doc_id)

    @property
    def loads(self) -> bool:
        """True when :meth:`load` reads a shared store (else the hub's replica is the truth)."""
        return self.shared

    def detach_released(self) -> None:
        """Detach documents no local connection holds any more (once their leaves applied)."""
        hub = self._hub
        for doc_id in list(hub.released):
            if doc_id in hub.local_refs:
                hub.released.discard(doc_id)  # joined again meanwhile
            elif doc_id not in hub.local_members:
                hub.released.discard(doc_id)
                attached = self._attached.pop(doc_id, None)
                if attached is not None:  # attached, or its attach still in flight
                    detaching = asyncio.ensure_future(self._detach(doc_id, attached))
                    self.detaching[doc_id] = detaching
                    self._spawn(detaching)


def _retrieve(task: asyncio.Future[None]) -> None:
    """Its callers get an attach's exception; nobody may be left to (all cancelled)."""
    if not task.cancelled():
        task.exception()
