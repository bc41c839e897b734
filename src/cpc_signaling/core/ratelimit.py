"""A token bucket fed with ``now``: the per-connection message rate limit."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; one token per message.

    Pure: the caller passes the clock. ``take(now)`` returns False when the
    message exceeds the rate (the caller drops it). A bucket starts full, so a
    client may send ``burst`` messages at once (a join storm after a reconnect)
    and then ``rate`` per second forever.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = now - self._last
        if elapsed > 0:
            self._last = now
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    @property
    def tokens(self) -> float:
        """Tokens left at the last ``take`` (for tests and metrics)."""
        return self._tokens


class Notices:
    """At most one notice per ``interval`` seconds: how often a dropped message is reported."""

    __slots__ = ("_next", "interval")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = float("-inf")

    def due(self, now: float) -> bool:
        if now >= self._next:
            self._next = now + self.interval
            return True
        return False
