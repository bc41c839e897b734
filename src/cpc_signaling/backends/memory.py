"""The in-memory backend: one process is the whole service.

Sequencing is the call order; the hub's replicas are the only state. Submit
hands the event straight back, so a message is fanned out within the call that
received it.
"""

from __future__ import annotations

from ..core import DocumentState, Event
from .base import EventSink


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._sink: EventSink | None = None

    @property
    def ready(self) -> bool:
        return self._sink is not None

    async def start(self, sink: EventSink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    async def attach(self, document_id: str) -> DocumentState | None:
        return None

    async def detach(self, document_id: str) -> None:
        return None

    def submit(self, document_id: str, event: Event) -> None:
        sink = self._sink
        if sink is None:
            raise RuntimeError("backend not started")
        sink(document_id, event)
