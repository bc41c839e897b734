"""Opening connections: a handshake's token checked against the caps, its session made.

The guard (``guard.py``) says who may connect and how many; this module acts on
its answer: a refused handshake is told why and closed, an admitted one gets its
hub connection and its :class:`~.session.Session`, counted against its user's cap,
with a timer for its token's expiry. It keeps the two registries the caps count:
``sessions``, the connections not let go yet (the per-user cap counts these), and
``sockets``, the connections whose socket is still open, a connection lingering
in its closing handshake too (``--max-connections`` counts these).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..core import Hub
from .config import Config
from .guard import Guard, Refusal
from .metrics import Metrics
from .peer import Peer
from .session import Session

log = logging.getLogger("cpc_signaling.server")

__all__ = ["Admission"]


class Admission:
    __slots__ = (
        "_config",
        "_expire",
        "_guard",
        "_hub",
        "_metrics",
        "_send_error",
        "keep_claims",
        "sessions",
        "sockets",
    )

    def __init__(
        self,
        config: Config,
        guard: Guard,
        hub: Hub[Peer],
        metrics: Metrics,
        expire: Callable[[Session], None],
        send_error: Callable[[Peer, str, str], None],
    ) -> None:
        self._config = config
        self._guard = guard
        self._hub = hub
        self._metrics = metrics
        self._expire = expire  # called when an open connection's token expires
        self._send_error = send_error  # the service's: counted, then delivered
        self.keep_claims = False  # keep the token's claims on the session (for a join hook)
        self.sessions: dict[str, Session] = {}  # connection id -> its session, until let go
        self.sockets: set[str] = set()  # connection ids whose socket is still open

    def admit(self, peer: Peer, token: str | None) -> Session | None:
        """Open a connection for a handshake that presented ``token`` (None: no token).

        Refused (bad token, a cap reached): ``peer`` is sent the Error and closed
        (1008 or 1013), and None is returned: the transport only waits for the close.
        """
        verdict = self._guard.admit(token, len(self.sockets))
        if isinstance(verdict, Refusal):
            self._send_error(peer, verdict.code, verdict.message)
            self._metrics.closes.labels(verdict.reason).inc()
            peer.close(verdict.close_code, verdict.message)
            return None
        if verdict is None:
            conn = self._hub.connect(peer)
        else:
            conn = self._hub.connect(
                peer,
                user_id=verdict.user_id,
                allowed_documents=verdict.allowed_documents,
                info=verdict.info,  # the token's info wins, even when it has none
            )
        session = self.sessions[conn.id] = Session(conn, self._config)
        self.sockets.add(conn.id)
        if verdict is not None:
            if self.keep_claims:
                session.claims = verdict.claims  # for the join hook; else not kept
            self._guard.count(verdict)
            session.counted = verdict.user_id
            loop = asyncio.get_running_loop()
            delay = max(0.0, verdict.expires_at - time.time())
            session.expiry = loop.call_at(loop.time() + delay, self._expire, session)
        self._metrics.connections_total.inc()
        log.debug("%s opened", session.describe(), extra=session.context())
        return session

    def let_go(self, session: Session) -> None:
        """``session`` is let go (its leaves are being submitted): it no longer counts
        against its user's cap. Its socket still counts until :meth:`gone`."""
        self.sessions.pop(session.id, None)
        if session.counted is not None:
            self._guard.forget(session.counted)

    def gone(self, session: Session) -> None:
        """``session``'s socket is gone: its --max-connections slot is free."""
        self.sockets.discard(session.id)
