"""A connection's pending outgoing frames, bounded, with presence conflation.

Pure data structure. Frames wait here only while the peer's socket will not
take more. Presence frames (cursor, selection, typing, presence, status) carry
a conflation key (document, user, kind): a newer one replaces the pending older
one and moves to the end, so a slow reader gets the latest state in the order
it was set, never a growing backlog. Other frames (joins, leaves, annotations,
comments, errors) are never dropped; past ``max_bytes`` of them the connection
is over its bound and must be closed (1013). The latest presence state is
bounded too (``LATEST_STATE_FACTOR`` times ``max_bytes``): conflation caps it
by keys, but a reader in many crowded documents could still hold a lot.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable

_unique = itertools.count()

LATEST_STATE_FACTOR = 4


class Outbox:
    __slots__ = ("_frames", "firm_bytes", "latest_bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.firm_bytes = 0  # bytes of pending frames that may not be dropped
        self.latest_bytes = 0  # bytes of pending conflatable (presence) frames
        # key -> frame; insertion order is sending order.
        self._frames: dict[Hashable, bytes] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def __bool__(self) -> bool:
        return bool(self._frames)

    @property
    def overflowed(self) -> bool:
        return (
            self.firm_bytes > self.max_bytes
            or self.latest_bytes > self.max_bytes * LATEST_STATE_FACTOR
        )

    def push(self, frame: bytes, key: Hashable | None = None) -> bool:
        """Queue ``frame``; with a ``key``, replace a pending frame of the same key.

        Returns True when a pending frame was replaced (conflated).
        """
        frames = self._frames
        if key is None:
            frames[next(_unique)] = frame
            self.firm_bytes += len(frame)
            return False
        old = frames.pop(key, None)
        frames[key] = frame
        self.latest_bytes += len(frame)
        if old is None:
            return False
        self.latest_bytes -= len(old)
        return True

    def take(self) -> list[bytes]:
        """All pending frames, in order; the outbox is empty afterwards."""
        out = list(self._frames.values())
        self._frames.clear()
        self.firm_bytes = 0
        self.latest_bytes = 0
        return out
