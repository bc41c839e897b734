"""Following documents: every call the service makes into its backend, in one place.

A shared backend (Redis) holds the documents' state; this instance follows a
document (subscribes and loads it: ``attach``) while a local connection joins
it, and lets go (``detach``) once the last local member's leave has applied.
The memory backend's state is the hub itself: nothing to attach or detach.

Rules kept here:

* the first local join of a document waits for its attach; joins arriving
  meanwhile wait for the same attach (one future per document);
* an attach of a document whose detach is still under way waits for it;
* a document is detached once no local connection holds it (``Hub.released``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..backends import Backend, BackendHooks, EventSink
from ..core import DocumentState, Event, Hub

log = logging.getLogger("cpc_signaling.server")


class Following:
    __slots__ = ("_attached", "_hub", "_spawn", "backend", "detaching", "shared")

    def __init__(
        self, backend: Backend, hub: Hub[Any], spawn: Callable[[Awaitable[Any]], None]
    ) -> None:
        self.backend = backend
        self._hub = hub
        self._spawn = spawn
        # A shared backend (Redis) holds the state and must be attached to per document;
        # the memory backend's state is the hub itself: no attach, no detach, no task.
        self.shared = backend.shared
        self._attached: dict[str, asyncio.Future[None]] = {}
        # Detaches under way: a new attach of the document waits for its detach first.
        self.detaching: dict[str, asyncio.Future[None]] = {}

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

    async def attach(self, doc_id: str) -> None:
        """Follow ``doc_id`` (subscribe, load, install the replica); raises what the
        backend raises. Concurrent callers share one attach."""
        attached = self._attached.get(doc_id)
        if attached is not None:
            await attached
            return
        attached = asyncio.get_running_loop().create_future()
        self._attached[doc_id] = attached
        try:
            detaching = self.detaching.get(doc_id)
            if detaching is not None:  # attach after the detach, never during it
                await asyncio.wait([detaching])
            state = await self.backend.attach(doc_id)
        except Exception as exc:
            del self._attached[doc_id]
            attached.set_exception(exc)
            attached.exception()  # retrieved: others waiting get it through their await
            raise
        if state is not None:
            self._hub.install(state)
        attached.set_result(None)

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
                if attached is not None:
                    detaching = asyncio.ensure_future(self._detach(doc_id))
                    self.detaching[doc_id] = detaching
                    self._spawn(detaching)

    async def _detach(self, doc_id: str) -> None:
        try:
            await self.backend.detach(doc_id)
        finally:
            self._hub.forget(doc_id)
            if self.detaching.get(doc_id) is asyncio.current_task():
                del self.detaching[doc_id]
