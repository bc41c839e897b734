"""The running service: hub, backend, codec and sessions, independent of the transport.

A transport (``app.py`` for aiohttp, ``asgi.py``) decides the handshake with the
front door (``frontdoor.py``), wraps the socket in a :class:`Peer`, and calls
:meth:`Service.admit`, :meth:`Service.on_frame` for each text frame and
:meth:`Service.on_close` once at the end. What happens to a connection
(routing, snapshots, errors, its limits, when and why it is closed) is decided
here and in its :class:`~.session.Session`, so every transport behaves the same.

Its own jobs: composing the parts, the close policy, frame dispatch, and the
fan-out between the hub and the backend. Jobs given away: hot-path metric counts
(``tally.py``), every call into the backend (``following.py``; orders to every
instance, such as "disconnect user X", go through it too), per-connection state
(``session.py``), admission (``guard.py`` decides, ``admission.py`` opens the
connection), the join flow (join checks, attach: ``joining.py``), the server-side
API (publish, presence, disconnect: ``serverapi.py``), building the backend from
the configuration (``wiring.py``).

The close policy: from the moment the server decides to close a connection
(:meth:`Service.end`, whatever the reason), it is let go: frames still arriving
are ignored and its leaves are announced at once (on the next turn of the event
loop, not when its socket is finally gone); the transport then runs the closing
handshake (``Peer.close``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from ..backends import Backend, BackendHooks
from ..core import DocumentState, Event, Hub, Joined, Outcome, Relayed, Send
from ..protocol import (
    Annotation,
    Comment,
    Decoder,
    DocumentMessage,
    Error,
    ErrorCode,
    ProtocolError,
    encode,
)
from .admission import Admission
from .config import Config
from .errors import Unavailable
from .following import Following
from .guard import Guard
from .hooks import HookRuntime, Hooks
from .joining import Joining
from .metrics import Metrics
from .outbox import outbox_gauges
from .peer import Peer
from .serverapi import PresentUser, ServerApi
from .session import Session, Verdict
from .tally import Tally
from .wiring import backend_for, limits_for

__all__ = ["Peer", "PresentUser", "Service", "Unavailable", "backend_for"]

log = logging.getLogger("cpc_signaling.server")


class Service:
    def __init__(
        self,
        config: Config,
        *,
        backend: Backend | None = None,
        metrics: Metrics | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.config = config
        self.instance_id = config.instance_id or uuid.uuid4().hex[:12]
        if backend is None:
            backend = backend_for(config, self.instance_id)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hub: Hub[Peer] = Hub(
            instance_id=self.instance_id, limits=limits_for(config), retain_idle=not backend.shared
        )
        self.following = Following(backend, self.hub, self.spawn)
        self.decoder = Decoder(max_content_chars=config.max_content_chars)
        self.metrics = metrics or Metrics()
        self.hooks = HookRuntime(config, hooks, self.metrics.registry, self.instance_id)
        self._emitting = self.hooks.events is not None
        self.joining = Joining(self.hub, self.following, self.hooks, self, self.spawn)
        self._checks = self.joining.checks  # join checks in flight (on_frame's hot path)
        self.api = ServerApi(self, self.hub, self.following, self.decoder, self.hooks, self.metrics)
        self.tally = Tally(self.metrics)
        self.guard = Guard(config, self.metrics)  # auth and connection caps
        self.admission = Admission(
            config, self.guard, self.hub, self.metrics, self._expire, self.send_error
        )
        self.admission.keep_claims = self.hooks.authorizer is not None
        # Connections not let go yet (drain, the server API's disconnect).
        self.sessions = self.admission.sessions
        self.draining = False
        self._fanout_sample = 0
        self.metrics.watch(self._live_metrics)

    @property
    def backend(self) -> Backend:
        return self.following.backend

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        hooks = BackendHooks(
            replica=self.hub.documents.get,
            resync=self._on_resync,
            settle=self._on_settle,
            held=self.hub.memberships,
            live=self.hub.connections.__contains__,
            order=self.api.on_order,
            unfollowed=self._on_unfollowed,
            metrics=self.metrics,
        )
        await self.following.start(self._on_event, hooks)
        self.hooks.start()

    def readiness(self) -> tuple[bool, str]:
        """(ready, the body of /readyz) for every transport."""
        if self.ready:
            return True, "ready\n"
        reason = "draining" if self.draining else f"backend {self.following.name} not ready"
        return False, f"not ready: {reason}\n"

    @property
    def ready(self) -> bool:
        return not self.draining and self.following.ready

    async def drain(self) -> None:
        """Stop serving: every local connection leaves every document, as if it had said
        so, then is closed with 1001."""
        self.draining = True
        sessions = list(self.sessions.values())
        for session in sessions:
            self._leave(session)  # now: the backend is about to close
        for session in sessions:
            self.end(session, 1001, "server shutting down", "drain", quiet=True)
        log.info("drained %d connections", len(sessions))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.drain_timeout)
        await self.following.close()
        await self.hooks.close()  # delivers the drain's leaves, within its grace period

    # -- connections ---------------------------------------------------------

    def admit(self, peer: Peer, token: str | None) -> Session | None:
        """Open a connection (:meth:`Admission.admit`): its session, or None if refused
        (the peer was told why and is being closed)."""
        return self.admission.admit(peer, token)

    def _expire(self, session: Session) -> None:
        """The connection's token expired while it was open: AUTH_ERROR, then 1008."""
        session.expiry = None
        if session.closing is None:
            self.send_error(session.peer, ErrorCode.AUTH_ERROR, "token expired")
            self.end(session, 1008, "token expired", "token_expired")

    def end(self, session: Session, code: int, reason: str, why: str, quiet: bool = False) -> None:
        """The server closes ``session`` with ``code`` (the close policy).

        From now on it is let go: its frames are ignored, its leaves are submitted on
        the next turn of the loop (not from inside a fan-out that may be running), and
        its peer runs the closing handshake. ``why`` labels ``cpc_closes_total``.
        Idempotent: the first decision wins.
        """
        if session.closing is not None:
            return
        session.closing = (code, reason)
        session.release()
        self.metrics.closes.labels(why).inc()
        if not quiet:
            log.info(
                "%s: closing with %d (%s)",
                session.describe(),
                code,
                reason,
                extra=session.context(),
            )
        asyncio.get_running_loop().call_soon(self._leave, session)
        session.peer.close(code, reason)

    def on_close(self, session: Session) -> None:
        """The connection is gone (closed, failed or timed out): it leaves everything
        (if it has not already) and its socket stops counting against --max-connections."""
        self._leave(session)
        self.admission.gone(session)
        log.debug("%s gone", session.describe(), extra=session.context())

    def _leave(self, session: Session) -> None:
        """Forget ``session`` and submit its leave of every document it had joined; once."""
        if session.left:
            return
        session.left = True
        session.release()
        self.admission.let_go(session)
        for doc_id, event in self.hub.disconnect(session.conn):
            self.submit(doc_id, event)

    def on_frame(self, session: Session, data: bytes | str) -> Awaitable[None] | None:
        """Handle one text frame. Returns an awaitable only when a join must wait for
        the backend; the transport awaits it before reading the next frame."""
        self.tally.received(len(data))
        if session.closing is not None:
            return None  # the server let it go (kicked, drained, expired...): buffered frames
        now = time.monotonic()
        verdict = session.check_rate(now)
        if verdict:  # over --rate-limit: dropped, the sender told at most once a second
            self.guard.rate_limited.inc()
            if verdict is Verdict.DROP_NOTIFY:
                self.reject(
                    session,
                    ProtocolError(
                        ErrorCode.CONNECTION_ERROR,
                        f"rate limited: more than {self.config.rate_limit:g} messages/s; "
                        "messages are being dropped",
                    ),
                )
            return None
        try:
            message = self.decoder.decode_document_message(data)
            kind = type(message)
            if kind is Annotation or kind is Comment:
                verdict = session.check_stored_rate(now)
                if verdict:  # over --stored-rate-limit: the same policy, its own bucket
                    self.guard.stored_rate_limited.inc()
                    if verdict is Verdict.DROP:
                        return None
                    raise ProtocolError(
                        ErrorCode.CONNECTION_ERROR,
                        f"rate limited: more than {self.config.stored_rate_limit:g} "
                        "annotations and comments/s; they are being dropped",
                    )
        except ProtocolError as exc:
            self.reject(session, exc)
            return None
        if self._checks:
            held = self._checks.get((session.id, message.document_id))
            if held is not None:  # its join is being checked: after it, in order
                return self.joining.after_check(session, held, message)
        return self.handle(session, message)

    def handle(self, session: Session, message: DocumentMessage) -> Awaitable[None] | None:
        """A decoded message, checked by the hub and dispatched: every frame's, and the
        join flow's for frames held behind a join check."""
        try:
            doc_id, event = self.hub.receive(session.conn, message)
        except ProtocolError as exc:
            self.reject(session, exc)
            return None
        self.tally.message(type(message).__name__)
        if type(event) is Joined:
            return self.joining.join(session, doc_id, event)
        self.submit(doc_id, event)
        return None

    def on_binary(self, session: Session, nbytes: int) -> None:
        """A binary frame: ``PARSE_ERROR`` (text JSON only), counted like any error."""
        self.tally.received(nbytes)
        if session.closing is None:
            self.reject(
                session,
                ProtocolError(
                    ErrorCode.PARSE_ERROR, "binary frames are not accepted: send JSON text"
                ),
            )

    def on_too_big(self, session: Session) -> None:
        """A frame over ``--max-message-bytes``: closed with 1009."""
        self.end(
            session,
            1009,
            f"message over {self.config.max_message_bytes} bytes",
            "message_too_big",
        )

    def reject(self, session: Session, exc: ProtocolError) -> None:
        """Send ``exc`` as an Error; close with 1008 when the error budget is spent."""
        self.send_error(session.peer, exc.code, exc.message)
        if session.spend(time.monotonic()):
            self.end(
                session,
                1008,
                "too many errors",
                "error_budget",
                quiet=True,
            )
            log.info(
                "%s closed: more than %d errors in %ss",
                session.describe(),
                self.config.error_limit,
                self.config.error_window,
                extra=session.context(),
            )

    def send_error(self, peer: Peer, code: str, message: str) -> None:
        frame = encode(Error(code=code, message=message))
        self.metrics.errors.labels(code).inc()
        self._deliver(Send((peer,), (frame,), "Error"))

    # -- server-side API (serverapi.py; the HTTP API in api.py wraps it) ----------

    def publish(self, message: Annotation | Comment) -> str:
        """Post an Annotation or Comment as the server (:meth:`ServerApi.publish`)."""
        return self.api.publish(message)

    async def presence(self, document_id: str) -> list[PresentUser]:
        """Users present in ``document_id`` (:meth:`ServerApi.presence`)."""
        return await self.api.presence(document_id)

    async def disconnect(self, user_id: str, reason: str = "disconnected by the server") -> int:
        """Close every connection of ``user_id``, all instances (:meth:`ServerApi.disconnect`)."""
        return await self.api.disconnect(user_id, reason)

    def disconnect_local(self, user_id: str, reason: str) -> int:
        return self.api.disconnect_local(user_id, reason)

    def kick(self, session: Session, reason: str) -> None:
        """Let ``session`` go now (its leaves submitted at once), then close it (1008)."""
        self._leave(session)
        self.end(session, 1008, reason, "api_disconnect", quiet=True)

    # -- backend ---------------------------------------------------------------

    def submit(self, doc_id: str, event: Event) -> bool:
        """Hand ``event`` to the backend; False: refused (overloaded), the sender told."""
        accepted = self.following.submit(doc_id, event)
        if not accepted:
            self._refused(doc_id, event)
        return accepted

    def _refused(self, doc_id: str, event: Event) -> None:
        """The backend is overloaded and refused ``event``: the sender is told."""
        kind = event.kind if type(event) is Relayed else type(event).__name__
        self.metrics.backend_refused.labels(kind).inc()
        conn = self.hub.connections.get(event.conn)
        if conn is None:
            return
        if type(event) is Joined and conn.id not in self.hub.local_members.get(doc_id, {}):
            self.hub.cancel_join(conn, doc_id)  # not a member yet: the join did not happen
        self.send_error(
            conn.peer,
            ErrorCode.CONNECTION_ERROR,
            f"server overloaded: {kind} for document {doc_id} not delivered; retry",
        )

    def _on_resync(self, state: DocumentState) -> None:
        """The backend reloaded a document after an outage: reconcile local members."""
        for send in self.hub.resync(state):
            self._deliver(send)
        if self.hub.released:
            self.following.detach_released()

    def _on_settle(self, doc_id: str, event: Event, outcome: Outcome | None = None) -> None:
        """The local side of this instance's own join or leave that a reloaded state
        already contains (the backend skipped its event): member, snapshot, acks.
        ``outcome``: what the event did in the shared store (None: not known)."""
        if self._emitting and outcome is not None:
            self.hooks.decided(doc_id, event, outcome)  # an event nobody else sends
        for send in self.hub.settle(doc_id, event):
            self._deliver(send)
        if self.hub.released:
            self.following.detach_released()

    def _on_unfollowed(self, doc_id: str, event: Event, outcome: Outcome) -> None:
        """An event that happened here in a document this instance does not follow (an
        API publish, a reap's leave): for the application's event hook only."""
        if self._emitting:
            self.hooks.decided(doc_id, event, outcome)

    def _on_event(
        self, doc_id: str, event: Event, own: bool = True, decided: int | None = None
    ) -> None:
        """The backend's sink: a sequenced event to apply and fan out locally.

        ``own``: the event happened on this instance; only then is it sent to the
        application's event hook (once per service, not once per instance).
        ``decided``: the outcome the shared store decided, for the replica to follow.
        """
        # The fan-out histogram samples one event in 8: timing each costs more than
        # a small fan-out itself, and the distribution is what it is for.
        sample = self._fanout_sample = (self._fanout_sample + 1) & 7
        started = 0.0 if sample else time.perf_counter()
        before = None
        if self._emitting and own:
            before = self.hooks.observe(self.hub.documents.get(doc_id), event)
        for send in self.hub.apply(doc_id, event, decided):
            self._deliver(send)
        if before is not None:
            self.hooks.applied(doc_id, self.hub.documents.get(doc_id), event, before)
        if not sample:
            self.metrics.fanout_seconds.observe(time.perf_counter() - started)
        if self.hub.released:
            self.following.detach_released()

    def _deliver(self, send: Send[Peer]) -> None:
        peers = send.peers
        for peer in peers:
            peer.deliver(send)
        self.tally.sent(send.kind, len(peers), send.frames)

    def flush_tally(self) -> None:
        """Hand this loop iteration's hot-path counts to the Prometheus counters."""
        self.tally.flush()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, kept referenced until done (awaited on close)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _live_metrics(self) -> dict[str, tuple[str, float]]:
        hub = self.hub
        return {
            "connections": ("open WebSocket connections", len(hub.connections)),
            "documents": ("documents held by this instance", len(hub.documents)),
            "members": (
                "local member connections over all documents",
                sum(len(m) for m in hub.local_members.values()),
            ),
            "ready": ("1 when /readyz answers 200", 1.0 if self.ready else 0.0),
            **outbox_gauges(conn.peer.outbox for conn in hub.connections.values()),
            **self.following.stats(),
        }
