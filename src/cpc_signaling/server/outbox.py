"""A connection's pending outgoing frames, bounded, with presence conflation and streams.

Pure data structure, shared by both transports. Frames wait here only while the
peer's socket will not take more (or behind a snapshot still being written).

* Presence frames (cursor, selection, typing, presence, status) carry a
  conflation key (document, user, kind): a newer one replaces the pending older
  one and moves to the end, so a slow reader gets the latest state in the order
  it was set, never a growing backlog.
* Other frames (joins, leaves, annotations, comments, errors) are never dropped;
  past ``max_bytes`` of them the connection is over its bound and must be closed
  (1013). The latest presence state is bounded too (``LATEST_STATE_FACTOR``
  times ``max_bytes``): conflation caps it by keys, but a reader in many crowded
  documents could still hold a lot.
* A **stream** is a join snapshot (or any large multi-frame send cut from a
  document's state): a list of references to frames the document replica holds
  anyway (immutable bytes, shared, never copied). It is not counted against
  ``max_bytes``: what it costs is one pointer per frame, and it is written only
  as fast as the socket takes it. Frames pushed after it wait behind it (and are
  counted), so the order a joiner sees is the order the server decided.

``pop`` hands the transport the next frames to write, in order, up to a byte
budget: whole counted frames, and a stream a frame at a time.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence

_unique = itertools.count()

LATEST_STATE_FACTOR = 4


class _Stream:
    """Frames of one stream not written yet: ``frames[pos:]``."""

    __slots__ = ("frames", "pos")

    def __init__(self, frames: Sequence[bytes]) -> None:
        self.frames = frames
        self.pos = 0


def _same(frame: bytes) -> bytes:
    return frame


class Outbox:
    __slots__ = ("_items", "_wrap", "firm_bytes", "latest_bytes", "max_bytes", "streams")

    def __init__(self, max_bytes: int, wrap: Callable[[bytes], bytes] = _same) -> None:
        """``wrap`` turns a streamed frame into what ``pop`` returns (the aiohttp
        transport frames it for the wire; counted frames are pushed already wrapped)."""
        self.max_bytes = max_bytes
        self.firm_bytes = 0  # bytes of pending frames that may not be dropped
        self.latest_bytes = 0  # bytes of pending conflatable (presence) frames
        self.streams = 0  # streams pending (not counted in bytes)
        self._wrap = wrap
        # key -> frame or stream; order is sending order. Firm frames have int keys,
        # presence frames their conflation key, streams a _Stream key (themselves).
        self._items: OrderedDict[Hashable, bytes | _Stream] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

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
        items = self._items
        if key is None:
            items[next(_unique)] = frame
            self.firm_bytes += len(frame)
            return False
        old = items.pop(key, None)
        items[key] = frame
        self.latest_bytes += len(frame)
        if old is None:
            return False
        assert type(old) is bytes
        self.latest_bytes -= len(old)
        return True

    def push_stream(self, frames: Sequence[bytes]) -> None:
        """Queue ``frames`` (references, not copies) to be written lazily, uncounted."""
        if frames:
            stream = _Stream(frames)
            self._items[stream] = stream
            self.streams += 1

    def pop(self, limit: int) -> list[bytes]:
        """The next frames to write, in order: at least one if any, then while the
        total stays within ``limit`` bytes. They leave the outbox."""
        items = self._items
        out: list[bytes] = []
        size = 0
        wrap = self._wrap
        while items and (size < limit or not out):
            key = next(iter(items))
            item = items[key]
            if type(item) is _Stream:
                frame = wrap(item.frames[item.pos])
                item.pos += 1
                if item.pos >= len(item.frames):
                    del items[key]
                    self.streams -= 1
            else:
                assert type(item) is bytes
                del items[key]
                frame = item
                if type(key) is int:
                    self.firm_bytes -= len(frame)
                else:
                    self.latest_bytes -= len(frame)
            out.append(frame)
            size += len(frame)
        return out

    def drop_streams(self) -> None:
        """Forget every stream not written yet (the connection is closing)."""
        if self.streams:
            for key in [k for k in self._items if type(k) is _Stream]:
                del self._items[key]
            self.streams = 0

    def clear(self) -> None:
        self._items.clear()
        self.firm_bytes = self.latest_bytes = self.streams = 0

    def take(self) -> list[bytes]:
        """Every pending frame, in order (streams in full); the outbox is empty afterwards."""
        out = self.pop(1 << 62) if self._items else []
        self.clear()
        return out


def outbox_gauges(outboxes: Iterable[Outbox | None]) -> dict[str, tuple[str, float]]:
    """Queue depths over ``outboxes`` (one per connection; None: nothing ever waited)."""
    frames = firm = waiting = streams = 0
    for outbox in outboxes:
        if outbox:
            waiting += 1
            frames += len(outbox)
            firm += outbox.firm_bytes
            streams += outbox.streams
    return {
        "outbox_frames": ("frames waiting in slow readers' outboxes", frames),
        "outbox_firm_bytes": (
            "bytes of non-droppable frames waiting in outboxes (closed past --outbox-max-bytes)",
            firm,
        ),
        "slow_readers": ("connections with frames waiting in their outbox", waiting),
        "snapshots_streaming": (
            "join snapshots being written as their reader's socket drains",
            streams,
        ),
    }
