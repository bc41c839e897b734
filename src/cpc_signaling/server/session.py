"""One connection's server-side state, from admission to its last leave.

Everything the server keeps about a connection besides its membership (which
the hub keeps in :class:`~cpc_signaling.core.Connection`): its error budget,
its rate buckets (every message; annotations and comments on top), the timer
that closes it when its token expires, and whether the server has decided to
close it. Pure bookkeeping: the clock is passed in, the service acts on the
answers.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING, Any

from ..core import Connection, ErrorBudget
from ..core.ratelimit import Notices, TokenBucket
from .config import Config

if TYPE_CHECKING:
    from .peer import Peer


class Verdict(enum.IntEnum):
    PASS = 0
    DROP = 1  # over the rate: drop silently (a notice was sent less than a second ago)
    DROP_NOTIFY = 2  # over the rate: drop and tell the sender


class _Rate:
    """A token bucket and its notices: a message over the rate is dropped, the sender
    told at most once a second."""

    __slots__ = ("bucket", "notices")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.bucket = TokenBucket(rate, max(1, burst), now)
        self.notices = Notices(1.0)

    def check(self, now: float) -> Verdict:
        if self.bucket.take(now):
            return Verdict.PASS
        return Verdict.DROP_NOTIFY if self.notices.due(now) else Verdict.DROP


class Session:
    __slots__ = (
        "_budget",
        "_config",
        "_rate",
        "_stored_rate",
        "claims",
        "closing",
        "conn",
        "counted",
        "expiry",
        "left",
    )

    def __init__(self, conn: Connection[Peer], config: Config) -> None:
        self.conn = conn
        self._config = config
        self._budget: ErrorBudget | None = None  # created on the first error
        self._rate: _Rate | None = None  # created on the first message
        self._stored_rate: _Rate | None = None  # on the first annotation or comment
        self.expiry: asyncio.TimerHandle | None = None  # closes it when its token expires
        # (code, reason) once the server decided to close it: it is let go, frames
        # still arriving are ignored, its leaves are announced at once.
        self.closing: tuple[int, str] | None = None
        self.left = False  # its leaves were submitted (exactly once)
        self.counted: str | None = None  # the user its token counted against the per-user cap
        self.claims: dict[str, Any] | None = None  # its token's claims, kept for the join hook

    @property
    def id(self) -> str:
        return self.conn.id

    @property
    def user_id(self) -> str | None:
        return self.conn.user_id

    @property
    def peer(self) -> Peer:
        return self.conn.peer

    def describe(self) -> str:
        """How log lines name it: ``connection ID (user ID)``."""
        return f"connection {self.conn.id} (user {self.conn.user_id or 'unbound'})"

    def context(self, document_id: str | None = None) -> dict[str, Any]:
        """Log fields (``--log-format json``); never a token."""
        ctx = {"connection_id": self.conn.id}
        if self.conn.user_id is not None:
            ctx["user_id"] = self.conn.user_id
        if document_id is not None:
            ctx["document_id"] = document_id
        return ctx

    # -- limits ------------------------------------------------------------------

    def check_rate(self, now: float) -> Verdict:
        """``--rate-limit``: every message."""
        rate = self._rate
        if rate is None:
            if self._config.rate_limit <= 0:
                return Verdict.PASS
            rate = self._rate = _Rate(self._config.rate_limit, self._config.rate_burst, now)
        return rate.check(now)

    def check_stored_rate(self, now: float) -> Verdict:
        """``--stored-rate-limit``: annotations and comments, on top of ``check_rate``."""
        rate = self._stored_rate
        if rate is None:
            if self._config.stored_rate_limit <= 0:
                return Verdict.PASS
            rate = self._stored_rate = _Rate(
                self._config.stored_rate_limit, self._config.stored_rate_burst, now
            )
        return rate.check(now)

    def spend(self, now: float) -> bool:
        """Count one error against the budget; True when it is spent (close 1008)."""
        budget = self._budget
        if budget is None:
            budget = self._budget = ErrorBudget(self._config.error_limit, self._config.error_window)
        return budget.record(now)

    def release(self) -> None:
        """The connection is over: stop its timer."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
