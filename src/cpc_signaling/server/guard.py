"""Admission: who may connect, and how many, per process and per user.

The service asks the guard when a handshake arrives (:meth:`Guard.admit`:
token, per-process and per-user caps) and tells it when an admitted connection
goes (:meth:`Guard.forget`). What a connection may do once admitted (its rates,
its error budget, its token's expiry) is its session's (``session.py``).

Overflow policies (docs/security.md): a refused handshake is accepted as a
WebSocket, told why (``AUTH_ERROR``, or ``CONNECTION_ERROR`` for a cap) and
closed (1008 for authentication, 1013 "try again later" for a cap), so a
browser client, which cannot read an HTTP status of a failed upgrade, learns
the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from ..errors import AuthError
from ..protocol import ErrorCode
from .auth import Authenticator, Identity, OriginPolicy
from .config import Config
from .metrics import Metrics


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a handshake is refused: sent as an Error, then the connection is closed."""

    code: str
    message: str
    close_code: int
    reason: str  # metrics label and close reason (short)


class Guard:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.auth = Authenticator.from_config(config)
        self.origins = OriginPolicy(config.allowed_origins)
        self._per_user: dict[str, int] = {}
        r = metrics.registry
        self.rate_limited = Counter(
            "cpc_rate_limited",
            "messages dropped because a connection exceeded --rate-limit",
            registry=r,
        )
        self.stored_rate_limited = Counter(
            "cpc_stored_rate_limited",
            "Annotations and Comments dropped because a connection exceeded --stored-rate-limit",
            registry=r,
        )
        self.refused = Counter(
            "cpc_connections_refused",
            "handshakes refused, by reason (origin, auth, max_connections, max_per_user, "
            "max_handshakes, subprotocol)",
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

    def count(self, identity: Identity | None) -> None:
        """An admitted connection of ``identity``'s user (None: open mode) starts."""
        if identity is not None:
            user = identity.user_id
            self._per_user[user] = self._per_user.get(user, 0) + 1

    def forget(self, user_id: str) -> None:
        """A connection :meth:`count` counted for ``user_id`` is over."""
        left = self._per_user.get(user_id, 1) - 1
        if left > 0:
            self._per_user[user_id] = left
        else:
            self._per_user.pop(user_id, None)

    def users(self) -> int:
        """Distinct authenticated users connected (for metrics)."""
        return len(self._per_user)
