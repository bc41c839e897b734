"""Admission and abuse limits per connection: who may connect, how many, how fast, how long.

The service asks the guard at three points: when a handshake arrives
(:meth:`Guard.admit`: token, per-process and per-user caps), for each frame
(:meth:`Guard.check_rate`: the token bucket) and when a connection goes
(:meth:`Guard.forget`). The guard also owns the timer that closes a
connection when its token expires: one ``loop.call_at`` handle per
authenticated connection, cancelled on close (no task per connection).

Overflow policies (docs/security.md): a refused handshake is accepted as a
WebSocket, told why (``AUTH_ERROR``, or ``CONNECTION_ERROR`` for a cap) and
closed (1008 for authentication, 1013 "try again later" for a cap), so a
browser client, which cannot read an HTTP status of a failed upgrade, learns
the reason. Messages over the rate are dropped; the sender gets at most one
``CONNECTION_ERROR`` per second saying so; drops are counted.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from ..core.ratelimit import Notices, TokenBucket
from ..protocol import ErrorCode
from .auth import Authenticator, AuthError, Identity, OriginPolicy
from .config import Config
from .metrics import Metrics


class Verdict(enum.IntEnum):
    PASS = 0
    DROP = 1  # over the rate: drop silently (a notice was sent less than a second ago)
    DROP_NOTIFY = 2  # over the rate: drop and tell the sender


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handshake is refused: sent as an Error, then the connection is closed."""

    code: str
    message: str
    close_code: int
    reason: str  # metrics label and close reason (short)


class _Tracked:
    __slots__ = ("bucket", "notices", "timer", "user_id")

    def __init__(self) -> None:
        self.bucket: TokenBucket | None = None
        self.notices: Notices | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.user_id: str | None = None


class Guard:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.auth = Authenticator.from_config(config)
        self.origins = OriginPolicy(config.allowed_origins)
        self._tracked: dict[str, _Tracked] = {}
        self._per_user: dict[str, int] = {}
        r = metrics.registry
        self.rate_limited = Counter(
            "cpc_rate_limited",
            "messages dropped because a connection exceeded --rate-limit",
            registry=r,
        )
        self.refused = Counter(
            "cpc_connections_refused",
            "handshakes refused, by reason (origin, auth, max_connections, max_per_user)",
            ["reason"],
            registry=r,
        )

    # -- handshakes --------------------------------------------------------

    def origin_allowed(self, origin: str | None) -> bool:
        if self.origins.allows(origin):
            return True
        self.refused.labels("origin").inc()
        return False

    def admit(self, token: str | None, open_connections: int) -> Identity | Refusal | None:
        """The identity a handshake's token grants (None: open mode), or why it is refused."""
        cap = self.config.max_connections
        if cap and open_connections >= cap:
            return self._refuse(
                ErrorCode.CONNECTION_ERROR,
                f"server full ({cap} connections); retry later",
                1013,
                "max_connections",
            )
        if not self.auth.enabled:
            return None
        try:
            identity = self.auth.authenticate(token)
        except AuthError as exc:
            return self._refuse(ErrorCode.AUTH_ERROR, exc.message, 1008, "auth")
        per_user = self.config.max_connections_per_user
        if per_user and self._per_user.get(identity.user_id, 0) >= per_user:
            return self._refuse(
                ErrorCode.CONNECTION_ERROR,
                f"user {identity.user_id} already holds {per_user} connections; retry later",
                1013,
                "max_per_user",
            )
        return identity

    def _refuse(self, code: str, message: str, close_code: int, reason: str) -> Refusal:
        self.refused.labels(reason).inc()
        return Refusal(code, message, close_code, reason)

    def attach(self, conn_id: str, identity: Identity | None, on_expiry: Callable[[], Any]) -> None:
        """Start tracking an admitted connection: its user count and its expiry timer."""
        tracked = self._tracked.setdefault(conn_id, _Tracked())
        if identity is None:
            return
        tracked.user_id = identity.user_id
        self._per_user[identity.user_id] = self._per_user.get(identity.user_id, 0) + 1
        loop = asyncio.get_running_loop()
        delay = max(0.0, identity.expires_at - time.time())
        tracked.timer = loop.call_at(loop.time() + delay, on_expiry)

    def forget(self, conn_id: str) -> None:
        tracked = self._tracked.pop(conn_id, None)
        if tracked is None:
            return
        if tracked.timer is not None:
            tracked.timer.cancel()
        user = tracked.user_id
        if user is not None:
            left = self._per_user.get(user, 1) - 1
            if left > 0:
                self._per_user[user] = left
            else:
                self._per_user.pop(user, None)

    # -- frames --------------------------------------------------------------

    def check_rate(self, conn_id: str, now: float | None = None) -> Verdict:
        rate = self.config.rate_limit
        if rate <= 0:
            return Verdict.PASS
        now = time.monotonic() if now is None else now
        tracked = self._tracked.get(conn_id)
        if tracked is None:
            tracked = self._tracked[conn_id] = _Tracked()
        bucket = tracked.bucket
        if bucket is None:
            bucket = tracked.bucket = TokenBucket(rate, max(1, self.config.rate_burst), now)
        if bucket.take(now):
            return Verdict.PASS
        self.rate_limited.inc()
        notices = tracked.notices
        if notices is None:
            notices = tracked.notices = Notices(1.0)
        return Verdict.DROP_NOTIFY if notices.due(now) else Verdict.DROP

    def users(self) -> int:
        """Distinct authenticated users connected (for metrics)."""
        return len(self._per_user)
