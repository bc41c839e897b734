"""The per-connection error budget (docs/protocol.md, errors), as a pure object fed with ``now``."""

from __future__ import annotations

from collections import deque


class ErrorBudget:
    """More than ``limit`` errors within ``window`` seconds exhausts the budget.

    ``record(now)`` returns True when this error is the one that exceeds it:
    the caller sends that error, then closes the connection (1008).
    """

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int = 20, window: float = 10.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque(maxlen=limit + 1)

    def record(self, now: float) -> bool:
        times = self._times
        times.append(now)
        while times and now - times[0] > self.window:
            times.popleft()
        return len(times) > self.limit
