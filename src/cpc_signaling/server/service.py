"""The running service: hub, backend, codec and sessions, independent of the transport.

A transport (``app.py`` for aiohttp, ``asgi.py``) decides the handshake with the
front door (``frontdoor.py``), wraps the socket in a :class:`Peer`, and calls
:meth:`Service.admit`, :meth:`Service.on_frame` for each text frame and
:meth:`Service.on_close` once at the end. What happens to a connection
(routing, snapshots, errors, its limits, when and why it is closed) is decided
here and in its :class:`~.session.Session`, so every transport behaves the same.

Jobs given away: hot-path metric counts (``tally.py``), every call into the
backend (``following.py``; orders to every instance, such as "disconnect user X",
go through it too), per-connection state (``session.py``), admission (``guard.py``).

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
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..backends import Backend, BackendHooks, MemoryBackend, create_backend
from ..core import (
    Connection,
    DocumentState,
    Event,
    Hub,
    Joined,
    Limits,
    Outcome,
    Relayed,
    Send,
)
from ..protocol import (
    Annotation,
    Comment,
    Decoder,
    DocumentMessage,
    Error,
    ErrorCode,
    PresenceMessage,
    ProtocolError,
    encode,
)
from ..protocol.ids import canonical_uuid
from .config import Config
from .errors import Unavailable
from .following import Following
from .guard import Guard, Refusal
from .hooks import HookRuntime, Hooks, JoinRequest
from .hooks.authorize import Decision
from .hooks.authorize import Verdict as CheckVerdict
from .metrics import Metrics
from .session import Session, Verdict
from .tally import Tally

if TYPE_CHECKING:
    from .outbox import Outbox

__all__ = ["Peer", "PresentUser", "Service", "Unavailable"]

log = logging.getLogger("cpc_signaling.server")


class Peer(Protocol):
    """How the service reaches one connection; implemented by each transport."""

    def deliver(self, send: Send[Peer]) -> None:
        """Queue or write ``send.frames``; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """Run the closing handshake with ``code``: the close frame after what is
        queued, then a lingering close, the socket aborted if it does not finish in
        time. Never blocks; idempotent."""

    @property
    def outbox(self) -> Outbox | None:
        """Frames waiting for the socket (None: nothing ever waited)."""


@dataclass(frozen=True, slots=True)
class PresentUser:
    """A user present in a document, as :meth:`Service.presence` reports it."""

    user_id: str
    connections: int  # member connections of this user in the document, all instances
    presence: tuple[PresenceMessage, ...]  # the messages in force, in the order received


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
        limits = Limits(
            max_documents_per_connection=config.max_documents_per_connection,
            max_members_per_document=config.max_members_per_document,
            max_stored_per_document=config.max_stored_per_document,
            max_stored_bytes_per_document=config.max_stored_bytes_per_document,
            max_documents=config.max_documents,
            max_stored_bytes=config.max_stored_bytes,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hub: Hub[Peer] = Hub(
            instance_id=self.instance_id, limits=limits, retain_idle=not backend.shared
        )
        self.following = Following(backend, self.hub, self.spawn)
        self.decoder = Decoder(max_content_chars=config.max_content_chars)
        self.metrics = metrics or Metrics()
        # The application's hooks (docs/hooks.md): join checks in flight, per (connection,
        # document); frames for that document wait for the check (on_frame).
        self.hooks = HookRuntime(config, hooks, self.metrics.registry, self.instance_id)
        self._emitting = self.hooks.events is not None
        self._checks: dict[tuple[str, str], asyncio.Future[None]] = {}
        self.tally = Tally(self.metrics)
        self.guard = Guard(config, self.metrics)  # auth and connection caps
        self.sessions: dict[str, Session] = {}  # connection id -> its session, until let go
        # Connection ids whose socket is still open (until on_close): what
        # --max-connections counts, a connection lingering in its closing handshake too.
        self.sockets: set[str] = set()
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
            order=self._on_order,
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
        """Open a connection for a handshake that presented ``token`` (None: no token).

        Refused (bad token, a cap reached): ``peer`` is sent the Error and closed
        (1008 or 1013), and None is returned: the transport only waits for the close.
        """
        verdict = self.guard.admit(token, len(self.sockets))
        if isinstance(verdict, Refusal):
            self.metrics.errors.labels(verdict.code).inc()
            frame = encode(Error(code=verdict.code, message=verdict.message))
            peer.deliver(Send((peer,), (frame,), "Error"))
            self.metrics.closes.labels(verdict.reason).inc()
            peer.close(verdict.close_code, verdict.message)
            return None
        if verdict is None:
            conn = self.hub.connect(peer)
        else:
            conn = self.hub.connect(
                peer,
                user_id=verdict.user_id,
                allowed_documents=verdict.allowed_documents,
                info=verdict.info,  # the token's info wins, even when it has none
            )
        session = self.sessions[conn.id] = Session(conn, self.config)
        self.sockets.add(conn.id)
        if verdict is not None:
            if self.hooks.authorizer is not None:
                session.claims = verdict.claims  # for the join hook; else not kept
            self.guard.count(verdict)
            session.counted = verdict.user_id
            loop = asyncio.get_running_loop()
            delay = max(0.0, verdict.expires_at - time.time())
            session.expiry = loop.call_at(loop.time() + delay, self._expire, session)
        self.metrics.connections_total.inc()
        log.debug("%s opened", session.describe(), extra=session.context())
        return session

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
        self.sockets.discard(session.id)
        log.debug("%s gone", session.describe(), extra=session.context())

    def _leave(self, session: Session) -> None:
        """Forget ``session`` and submit its leave of every document it had joined; once."""
        if session.left:
            return
        session.left = True
        session.release()
        self.sessions.pop(session.id, None)
        if session.counted is not None:
            self.guard.forget(session.counted)
        for doc_id, event in self.hub.disconnect(session.conn):
            self._submit(doc_id, event)

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
        conn = session.conn
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
            if self._checks:
                held = self._checks.get((conn.id, message.document_id))
                if held is not None:  # its join is being authorized: after it, in order
                    return self._after_check(session, held, message)
            doc_id, event = self.hub.receive(conn, message)
        except ProtocolError as exc:
            self.reject(session, exc)
            return None
        self.tally.message(kind.__name__)
        if type(event) is Joined:
            return self._join(session, doc_id, event)
        self._submit(doc_id, event)
        return None

    def _join(self, session: Session, doc_id: str, event: Joined) -> Awaitable[None] | None:
        """A join the hub accepted: authorize it (join hook), attach, submit."""
        authorizer = self.hooks.authorizer
        if authorizer is not None and session.id not in self.hub.local_members.get(doc_id, {}):
            # Not a member yet (a repeated join of a member only re-sends the snapshot).
            decision = authorizer.cached(event.user, doc_id)
            if decision is None:
                held = asyncio.get_running_loop().create_future()
                self._checks[(session.id, doc_id)] = held
                self.spawn(self._check_then_join(session, doc_id, event, held))
                return None  # the reader goes on; this document's frames wait (on_frame)
            if not decision.allowed:
                self._join_refused(session, doc_id, decision)
                return None
        if self.following.must_attach(doc_id):
            return self._attach_then_join(session, doc_id, event)
        self._submit(doc_id, event)
        return None

    async def _check_then_join(
        self, session: Session, doc_id: str, event: Joined, held: asyncio.Future[None]
    ) -> None:
        """Ask the application (join hook), then join, while the connection reads on."""
        conn = session.conn
        try:
            assert self.hooks.authorizer is not None
            request = JoinRequest(event.user, doc_id, session.claims)
            decision = await self.hooks.authorizer.authorize(request)
            if session.left or session.closing is not None or doc_id not in conn.joined:
                self.following.detach_released()  # gone meanwhile: never a member
            elif not decision.allowed:
                self._join_refused(session, doc_id, decision)
            elif self.following.must_attach(doc_id):
                await self._attach_then_join(session, doc_id, event)
            else:
                self._submit(doc_id, event)
        finally:
            del self._checks[(session.id, doc_id)]
            held.set_result(None)

    def _join_refused(self, session: Session, doc_id: str, decision: Decision) -> None:
        """The join hook said no (AUTH_ERROR) or gave no answer (CONNECTION_ERROR)."""
        self.hub.cancel_join(session.conn, doc_id)
        self.following.detach_released()
        if decision.verdict is CheckVerdict.DENIED:
            message = f"join of document {doc_id} denied: {decision.reason}"
            self.reject(session, ProtocolError(ErrorCode.AUTH_ERROR, message))
        else:
            self.send_error(
                session.peer,
                ErrorCode.CONNECTION_ERROR,
                f"cannot authorize the join of document {doc_id} now; retry",
            )

    async def _after_check(
        self, session: Session, held: asyncio.Future[None], message: DocumentMessage
    ) -> None:
        """A frame for a document whose join is being authorized: handled after it."""
        await held
        if session.closing is not None or session.left:
            return
        try:
            doc_id, event = self.hub.receive(session.conn, message)
        except ProtocolError as exc:
            self.reject(session, exc)
            return
        self.tally.message(type(message).__name__)
        if type(event) is Joined:
            pending = self._join(session, doc_id, event)
            if pending is not None:
                await pending
        else:
            self._submit(doc_id, event)

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

    # -- server-side API (Python; the HTTP API in api.py wraps it) -----------------

    def publish(self, message: Annotation | Comment) -> str:
        """Post an Annotation or Comment as the server; returns its document id.

        Validated like a client's message (ProtocolError), then sequenced through
        the backend like any event: stored for later joiners and delivered to every
        member on every instance. ``user_id`` is whoever the caller says: the API is
        trusted. Raises :class:`Unavailable` while draining or the backend is down.
        """
        if type(message) not in (Annotation, Comment):
            raise ProtocolError(
                ErrorCode.PARSE_ERROR, "only Annotation or Comment can be published"
            )
        checked = self.decoder.decode_document_message(encode(message))
        assert isinstance(checked, Annotation | Comment)
        if not self.ready:
            raise Unavailable(
                "draining" if self.draining else f"backend {self.following.name} not ready"
            )
        doc_id, event = self.hub.publish(checked)
        self.metrics.api_published.labels(event.kind).inc()
        log.info("published %s", event.kind, extra={"document_id": doc_id, "user_id": event.user})
        if not self._submit(doc_id, event):
            raise Unavailable(f"backend {self.following.name} overloaded")
        return doc_id

    async def presence(self, document_id: str) -> list[PresentUser]:
        """Users present in ``document_id``, oldest join first, with their presence in force.

        With Redis this is the shared state (all instances), else this instance's replica.
        """
        doc_id = canonical_uuid(document_id)
        following = self.following
        if following.loads and doc_id not in self.hub.local_members:
            if not following.ready:
                raise Unavailable(f"backend {following.name} not ready")
            try:
                state = await following.load(doc_id)
            except Exception as exc:  # Redis went away meanwhile
                raise Unavailable(f"backend {following.name}: {exc}") from None
            if state is None:
                raise Unavailable(f"backend {following.name} not ready")
            return self._present(state)
        state = self.hub.documents.get(doc_id)
        return [] if state is None else self._present(state)

    def _present(self, state: DocumentState) -> list[PresentUser]:
        decode = self.decoder.decode
        return [
            PresentUser(
                user.user_id,
                len(user.conns),
                tuple(cast(PresenceMessage, decode(frame)) for frame in user.presence.values()),
            )
            for user in state.users.values()
        ]

    async def disconnect(self, user_id: str, reason: str = "disconnected by the server") -> int:
        """Close every connection of ``user_id`` (1008), on every instance; each leaves
        its documents at once. Returns how many connections this instance closed.

        It does not ban: a client that reconnects with a valid token gets in again.
        """
        user_id = canonical_uuid(user_id)
        closed = self.disconnect_local(user_id, reason)
        if self.following.shared:
            order = {"op": "disconnect", "user_id": user_id, "reason": reason}
            try:
                await self.following.broadcast(order)
            except ConnectionError as exc:
                raise Unavailable(f"backend {self.following.name}: {exc}") from None
        return closed

    def _on_order(self, order: Mapping[str, str]) -> None:
        """An order another instance broadcast (at most once: an instance cut off from
        the backend meanwhile does not see it)."""
        if order.get("op") == "disconnect" and "user_id" in order:
            self.disconnect_local(canonical_uuid(order["user_id"]), order.get("reason") or "")
        else:
            log.warning("order %r from instance %s ignored", order.get("op"), order.get("origin"))

    def disconnect_local(self, user_id: str, reason: str) -> int:
        self.hooks.forget_user(user_id)  # a reconnect is asked again (access revoked?)
        sessions = [s for s in self.sessions.values() if s.user_id == user_id]
        for session in sessions:
            self._leave(session)
            self.end(session, 1008, reason, "api_disconnect", quiet=True)
        if sessions:
            log.info("disconnected %d connection(s)", len(sessions), extra={"user_id": user_id})
        return len(sessions)

    # -- backend ---------------------------------------------------------------

    async def _attach_then_join(self, session: Session, doc_id: str, event: Joined) -> None:
        conn = session.conn
        try:
            await self.following.attach(doc_id)
        except Exception as exc:  # the backend says why; the client gets a typed error
            log.warning(
                "%s: attach of document %s failed: %s",
                session.describe(),
                doc_id,
                exc,
                extra=session.context(doc_id),
            )
            self.hub.cancel_join(conn, doc_id)
            self.send_error(
                conn.peer, ErrorCode.CONNECTION_ERROR, f"cannot join {doc_id} now; retry"
            )
            self.following.detach_released()
            return
        if doc_id in conn.joined and not session.left:
            self._submit(doc_id, event)
        else:
            self.following.detach_released()

    def _submit(self, doc_id: str, event: Event) -> bool:
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
            **_outbox_gauges(hub.connections.values()),
            **self.following.stats(),
        }


def _outbox_gauges(conns: Iterable[Connection[Peer]]) -> dict[str, tuple[str, float]]:
    """Queue depths: frames waiting in per-connection outboxes."""
    frames = firm = waiting = streams = 0
    for conn in conns:
        outbox = conn.peer.outbox
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


def backend_for(config: Config, instance_id: str) -> Backend:
    """The backend ``config`` asks for: memory, or Redis (``--redis-url``, one node or
    several) with its options taken from the configuration."""
    if not config.redis_url:
        return MemoryBackend()
    from ..backends.redis import RedisOptions  # the optional extra, only when asked for

    options = RedisOptions.from_urls(
        config.redis_url,
        instance_id,
        prefix=config.redis_prefix,
        heartbeat_interval=config.heartbeat_interval,
        instance_timeout=config.instance_timeout,
        document_ttl=config.document_ttl,
        max_members_per_document=config.max_members_per_document,
        max_stored_per_document=config.max_stored_per_document,
        max_stored_bytes_per_document=config.max_stored_bytes_per_document,
        flush_interval=config.redis_flush_interval,
        linger=config.redis_linger,
        strict=config.redis_strict,
        drain_timeout=config.drain_timeout,
    )
    return create_backend(config.redis_url, options=options)
