"""Hot-path counts, added up per event-loop iteration and handed to Prometheus once.

A Prometheus counter's ``inc()`` takes a lock: too dear once per frame. The
service counts each frame here (plain ints and dicts) and one ``call_soon``
callback per loop iteration hands the sums to the counters. ``/metrics`` flushes
before rendering, on every transport, so a scrape never misses the current
iteration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .metrics import Metrics


class Tally:
    __slots__ = ("_bytes_in", "_due", "_in", "_metrics", "_out")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._in: dict[str, int] = {}  # message type -> count
        self._out: dict[str, list[int]] = {}  # kind -> [frames, bytes]
        self._bytes_in = 0
        self._due = False

    def received(self, nbytes: int) -> None:
        """A frame of ``nbytes`` came in (valid or not)."""
        self._bytes_in += nbytes
        if not self._due:
            self._schedule()

    def message(self, kind: str) -> None:
        """A valid message of type ``kind`` came in (counted with its frame's bytes)."""
        tally = self._in
        tally[kind] = tally.get(kind, 0) + 1

    def sent(self, kind: str, peers: int, frames: Sequence[Any]) -> None:
        """``frames`` went to ``peers`` recipients."""
        tally = self._out.get(kind)
        if tally is None:
            tally = self._out[kind] = [0, 0]
        tally[0] += peers * len(frames)
        tally[1] += peers * (len(frames[0]) if len(frames) == 1 else sum(map(len, frames)))
        if not self._due:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): count now
            self.flush()
            return
        self._due = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand the counts of this loop iteration to the Prometheus counters."""
        self._due = False
        metrics = self._metrics
        if self._bytes_in:
            metrics.bytes_in.inc(self._bytes_in)
            self._bytes_in = 0
        if self._in:
            for kind, n in self._in.items():
                metrics.count_in(kind, n)
            self._in.clear()
        if self._out:
            for kind, (frames, nbytes) in self._out.items():
                metrics.count_out(kind, frames, nbytes)
            self._out.clear()
