"""The running service: hub, backend, codec and metrics, independent of the transport.

A transport (the aiohttp server, the ASGI app) accepts a connection, wraps it
in a :class:`Peer`, and calls :meth:`Service.open`, :meth:`Service.on_frame`
for each text frame and :meth:`Service.on_close` once at the end. Everything
else (routing, snapshots, errors, the error budget, attaching documents to the
backend) happens here, so every transport behaves the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..backends import Backend, BackendHooks, MemoryBackend, create_backend
from ..core import (
    Connection,
    DocumentState,
    ErrorBudget,
    Event,
    Hub,
    Joined,
    Limits,
    Relayed,
    Send,
)
from ..protocol import (
    Annotation,
    Comment,
    Decoder,
    Error,
    ErrorCode,
    PresenceMessage,
    ProtocolError,
    encode,
)
from ..protocol.ids import canonical_uuid
from .config import Config
from .guard import Guard, Refusal, Verdict
from .metrics import Metrics

if TYPE_CHECKING:
    from .control import ControlChannel

log = logging.getLogger("cpc_signaling.server")


class Peer(Protocol):
    """How the service reaches one connection; implemented by each transport."""

    def deliver(self, send: Send[Peer]) -> None:
        """Queue or write ``send.frames``; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection with ``code``; never blocks."""


class Unavailable(Exception):
    """The service cannot act now (draining, or its backend is not ready)."""


@dataclass(frozen=True, slots=True)
class PresentUser:
    """A user present in a document, as :meth:`Service.presence` reports it."""

    user_id: str
    connections: int  # member connections of this user in the document, all instances
    presence: tuple[PresenceMessage, ...]  # the messages in force, in the order received


class Service:
    def __init__(
        self, config: Config, *, backend: Backend | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.instance_id = config.instance_id or uuid.uuid4().hex[:12]
        if backend is None:
            backend = create_backend(config.redis_url, config=config, instance_id=self.instance_id)
        self.backend = backend
        limits = Limits(
            max_documents_per_connection=config.max_documents_per_connection,
            max_members_per_document=config.max_members_per_document,
            max_stored_per_document=config.max_stored_per_document,
            max_stored_bytes_per_document=config.max_stored_bytes_per_document,
            max_documents=config.max_documents,
            max_stored_bytes=config.max_stored_bytes,
        )
        # A shared backend (Redis) holds the state and must be attached to per document;
        # the memory backend's state is this hub itself: no attach, no detach, no task.
        self._shared = not isinstance(backend, MemoryBackend)
        self.hub: Hub[Peer] = Hub(
            instance_id=self.instance_id,
            limits=limits,
            retain_idle=not self._shared,
        )
        self.decoder = Decoder(max_content_chars=config.max_content_chars)
        self.metrics = metrics or Metrics()
        self.draining = False
        self._attached: dict[str, asyncio.Future[None]] = {}
        # Detaches under way: a new attach of the document waits for its detach first.
        self._detaching: dict[str, asyncio.Future[None]] = {}
        self._budgets: dict[str, ErrorBudget] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Hot-path counts, added up per event-loop iteration and handed to the
        # Prometheus counters once (their inc() takes a lock: too dear per frame).
        self._tally_in: dict[str, int] = {}  # message type -> count
        self._tally_out: dict[str, list[int]] = {}  # kind -> [frames, bytes]
        self._tally_bytes_in = 0
        self._tally_due = False
        self._fanout_sample = 0
        self.guard = Guard(config, self.metrics)  # auth, caps, rate limits, token expiry
        self.metrics.watch(self._live_metrics)
        # Cross-instance "disconnect user X" (server/control.py); only with Redis.
        self.control: ControlChannel | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        hooks = BackendHooks(
            replica=self.hub.documents.get,
            resync=self._on_resync,
            settle=self._on_settle,
            held=self.hub.memberships,
            metrics=self.metrics,
        )
        await self.backend.start(self._on_event, hooks)
        if self.config.redis_url:
            from .control import ControlChannel

            self.control = ControlChannel(self)
            await self.control.start()

    def readiness(self) -> tuple[bool, str]:
        """(ready, the body of /readyz) for every transport."""
        if self.ready:
            return True, "ready\n"
        reason = "draining" if self.draining else f"backend {self.backend.name} not ready"
        return False, f"not ready: {reason}\n"

    @property
    def ready(self) -> bool:
        return not self.draining and self.backend.ready

    async def drain(self) -> None:
        """Stop serving: every local connection leaves every document, as if it had said so."""
        self.draining = True
        conns = list(self.hub.connections.values())
        for conn in conns:
            self._leave_all(conn)
        for conn in conns:
            conn.peer.close(1001, "server shutting down")
        log.info("drained %d connections", len(conns))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.drain_timeout)
        if self.control is not None:
            await self.control.close()
        await self.backend.close()

    # -- connections ---------------------------------------------------------

    def open(
        self,
        peer: Peer,
        *,
        user_id: str | None = None,
        allowed_documents: frozenset[str] | None = None,
        info: bytes | None = None,
    ) -> Connection[Peer]:
        conn = self.hub.connect(
            peer, user_id=user_id, allowed_documents=allowed_documents, info=info
        )
        self.metrics.connections_total.inc()
        log.debug("connection %s opened (user %s)", conn.id, user_id or "unbound", extra=_ctx(conn))
        return conn

    def admit(self, peer: Peer, token: str | None) -> Connection[Peer] | None:
        """Open a connection for a handshake that presented ``token`` (None: no token).

        Refused (bad token, a cap reached): ``peer`` is sent the Error and closed
        (1008 or 1013), and None is returned: the transport only waits for the close.
        """
        verdict = self.guard.admit(token, len(self.hub.connections))
        if isinstance(verdict, Refusal):
            frame = encode(Error(code=verdict.code, message=verdict.message))
            self.metrics.errors.labels(verdict.code).inc()
            peer.deliver(Send((peer,), (frame,), "Error"))
            self.metrics.closes.labels(verdict.reason).inc()
            peer.close(verdict.close_code, verdict.message[:100])
            return None
        if verdict is None:
            conn = self.open(peer)
        else:
            conn = self.open(
                peer,
                user_id=verdict.user_id,
                allowed_documents=verdict.allowed_documents,
                info=verdict.info,  # the token's info wins, even when it has none
            )
        self.guard.attach(conn.id, verdict, lambda: self._expire(conn))
        return conn

    def _expire(self, conn: Connection[Peer]) -> None:
        """The connection's token expired while it was open: AUTH_ERROR, then 1008."""
        if self.hub.connections.get(conn.id) is not conn:
            return
        log.info(
            "connection %s (user %s): token expired, closing",
            conn.id,
            conn.user_id,
            extra=_ctx(conn),
        )
        self.send_error(conn, ErrorCode.AUTH_ERROR, "token expired")
        self.metrics.closes.labels("token_expired").inc()
        conn.peer.close(1008, "token expired")

    def on_close(self, conn: Connection[Peer]) -> None:
        """The connection is gone (closed, failed or timed out): it leaves everything."""
        self._leave_all(conn)
        self._budgets.pop(conn.id, None)
        self.guard.forget(conn.id)
        log.debug("connection %s closed (user %s)", conn.id, conn.user_id, extra=_ctx(conn))

    def _leave_all(self, conn: Connection[Peer]) -> None:
        """Forget ``conn`` and submit its leave of every document it had joined."""
        for doc_id, event in self.hub.disconnect(conn):
            self._submit(doc_id, event)

    def on_frame(self, conn: Connection[Peer], data: bytes | str) -> Awaitable[None] | None:
        """Handle one text frame. Returns an awaitable only when a join must wait for
        the backend; the transport awaits it before reading the next frame."""
        self._tally_bytes_in += len(data)
        if not self._tally_due:
            self._schedule_tally()
        if self.hub.connections.get(conn.id) is not conn:
            return None  # the server already let it go (kicked, drained, expired): buffered frames
        verdict = self.guard.check_rate(conn.id)
        if verdict:  # over --rate-limit: dropped, the sender told at most once a second
            if verdict is Verdict.DROP_NOTIFY:
                self.reject(
                    conn,
                    ProtocolError(
                        ErrorCode.CONNECTION_ERROR,
                        f"rate limited: more than {self.config.rate_limit:g} messages/s; "
                        "messages are being dropped",
                    ),
                )
            return None
        try:
            message = self.decoder.decode_document_message(data)
            doc_id, event = self.hub.receive(conn, message)
        except ProtocolError as exc:
            self.reject(conn, exc)
            return None
        kind = type(message).__name__
        tally_in = self._tally_in
        tally_in[kind] = tally_in.get(kind, 0) + 1
        if type(event) is Joined and self._shared:
            attached = self._attached.get(doc_id)
            if attached is None or not attached.done():
                return self._attach_then_join(conn, doc_id, event)
        self._submit(doc_id, event)
        return None

    def reject(self, conn: Connection[Peer], exc: ProtocolError) -> None:
        """Send ``exc`` as an Error; close with 1008 when the error budget is spent."""
        self.send_error(conn, exc.code, exc.message)
        budget = self._budgets.get(conn.id)
        if budget is None:
            budget = self._budgets[conn.id] = ErrorBudget(
                self.config.error_limit, self.config.error_window
            )
        if budget.record(time.monotonic()):
            log.info(
                "connection %s (user %s) closed: more than %d errors in %ss",
                conn.id,
                conn.user_id,
                self.config.error_limit,
                self.config.error_window,
                extra=_ctx(conn),
            )
            self.metrics.closes.labels("error_budget").inc()
            conn.peer.close(1008, "too many errors")

    def send_error(self, conn: Connection[Peer], code: str, message: str) -> None:
        frame = encode(Error(code=code, message=message))
        self.metrics.errors.labels(code).inc()
        self._deliver(Send((conn.peer,), (frame,), "Error"))

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
                "draining" if self.draining else f"backend {self.backend.name} not ready"
            )
        doc_id, event = self.hub.publish(checked)
        self.metrics.api_published.labels(event.kind).inc()
        log.info("published %s", event.kind, extra={"document_id": doc_id, "user_id": event.user})
        if not self._submit(doc_id, event):
            raise Unavailable(f"backend {self.backend.name} overloaded")
        return doc_id

    async def presence(self, document_id: str) -> list[PresentUser]:
        """Users present in ``document_id``, oldest join first, with their presence in force.

        With Redis this is the shared state (all instances), else this instance's replica.
        """
        doc_id = canonical_uuid(document_id)
        load = getattr(self.backend, "load", None)
        if load is not None and doc_id not in self.hub.local_members:
            if not self.backend.ready:
                raise Unavailable(f"backend {self.backend.name} not ready")
            try:
                state = await load(doc_id)
            except Exception as exc:  # Redis went away meanwhile
                raise Unavailable(f"backend {self.backend.name}: {exc}") from None
            if state is None:
                raise Unavailable(f"backend {self.backend.name} not ready")
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
        if self.control is not None:
            await self.control.broadcast_disconnect(user_id, reason)
        return closed

    def disconnect_local(self, user_id: str, reason: str) -> int:
        conns = [c for c in self.hub.connections.values() if c.user_id == user_id]
        for conn in conns:
            self._leave_all(conn)
            conn.peer.close(1008, reason)
            self.metrics.closes.labels("api_disconnect").inc()
        if conns:
            log.info("disconnected %d connection(s)", len(conns), extra={"user_id": user_id})
        return len(conns)

    # -- backend ---------------------------------------------------------------

    async def _attach_then_join(self, conn: Connection[Peer], doc_id: str, event: Joined) -> None:
        attached = self._attached.get(doc_id)
        if attached is None:
            attached = asyncio.get_running_loop().create_future()
            self._attached[doc_id] = attached
            try:
                detaching = self._detaching.get(doc_id)
                if detaching is not None:  # attach after the detach, never during it
                    await asyncio.wait([detaching])
                state = await self.backend.attach(doc_id)
            except Exception as exc:  # the backend says why; the client gets a typed error
                del self._attached[doc_id]
                attached.set_exception(exc)
                attached.exception()  # retrieved: others waiting get it through their await
                log.warning(
                    "attach of document %s failed: %s", doc_id, exc, extra=_ctx(conn, doc_id)
                )
                self._join_failed(conn, doc_id)
                return
            if state is not None:
                self.hub.install(state)
            attached.set_result(None)
        else:
            try:
                await attached
            except Exception:
                self._join_failed(conn, doc_id)
                return
        if doc_id in conn.joined and conn.id in self.hub.connections:
            self._submit(doc_id, event)
        else:
            self._detach_released()

    def _join_failed(self, conn: Connection[Peer], doc_id: str) -> None:
        self.hub.cancel_join(conn, doc_id)
        self.send_error(conn, ErrorCode.CONNECTION_ERROR, f"cannot join {doc_id} now; retry")
        self._detach_released()

    def _submit(self, doc_id: str, event: Event) -> bool:
        accepted = self.backend.submit(doc_id, event)
        if not accepted:
            self._refused(doc_id, event)
        if self.hub.released:
            self._detach_released()
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
            conn,
            ErrorCode.CONNECTION_ERROR,
            f"server overloaded: {kind} for document {doc_id} not delivered; retry",
        )

    def _on_resync(self, state: DocumentState) -> None:
        """The backend reloaded a document after an outage: reconcile local members."""
        for send in self.hub.resync(state):
            self._deliver(send)
        if self.hub.released:
            self._detach_released()

    def _on_settle(self, doc_id: str, event: Event) -> None:
        """The local side of this instance's own join or leave that a reloaded state
        already contains (the backend skipped its event): member, snapshot, acks."""
        for send in self.hub.settle(doc_id, event):
            self._deliver(send)
        if self.hub.released:
            self._detach_released()

    def _on_event(self, doc_id: str, event: Event) -> None:
        """The backend's sink: a sequenced event to apply and fan out locally."""
        # The fan-out histogram samples one event in 8: timing each costs more than
        # a small fan-out itself, and the distribution is what it is for.
        sample = self._fanout_sample = (self._fanout_sample + 1) & 7
        started = 0.0 if sample else time.perf_counter()
        for send in self.hub.apply(doc_id, event):
            self._deliver(send)
        if not sample:
            self.metrics.fanout_seconds.observe(time.perf_counter() - started)
        if self.hub.released:
            self._detach_released()

    def _deliver(self, send: Send[Peer]) -> None:
        peers = send.peers
        for peer in peers:
            peer.deliver(send)
        count = len(peers)
        frames = send.frames
        tally = self._tally_out.get(send.kind)
        if tally is None:
            tally = self._tally_out[send.kind] = [0, 0]
        tally[0] += count * len(frames)
        tally[1] += count * (len(frames[0]) if len(frames) == 1 else sum(map(len, frames)))
        if not self._tally_due:
            self._schedule_tally()

    def _schedule_tally(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): count now
            self.flush_tally()
            return
        self._tally_due = True
        loop.call_soon(self.flush_tally)

    def flush_tally(self) -> None:
        """Hand the hot-path counts of this loop iteration to the Prometheus counters."""
        self._tally_due = False
        metrics = self.metrics
        if self._tally_bytes_in:
            metrics.bytes_in.inc(self._tally_bytes_in)
            self._tally_bytes_in = 0
        if self._tally_in:
            for kind, n in self._tally_in.items():
                metrics.count_in(kind, n)
            self._tally_in.clear()
        if self._tally_out:
            for kind, (frames, nbytes) in self._tally_out.items():
                metrics.count_out(kind, frames, nbytes)
            self._tally_out.clear()

    def _detach_released(self) -> None:
        """Detach documents no local connection holds any more (once their leaves applied)."""
        hub = self.hub
        for doc_id in list(hub.released):
            if doc_id in hub.local_refs:
                hub.released.discard(doc_id)  # joined again meanwhile
            elif doc_id not in hub.local_members:
                hub.released.discard(doc_id)
                attached = self._attached.pop(doc_id, None)
                if attached is not None:
                    detaching = asyncio.ensure_future(self._detach(doc_id))
                    self._detaching[doc_id] = detaching
                    self.spawn(detaching)

    async def _detach(self, doc_id: str) -> None:
        try:
            await self.backend.detach(doc_id)
        finally:
            self.hub.forget(doc_id)
            if self._detaching.get(doc_id) is asyncio.current_task():
                del self._detaching[doc_id]

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
            **(self.backend.stats() if hasattr(self.backend, "stats") else {}),
        }


def _outbox_gauges(conns: Iterable[Connection[Peer]]) -> dict[str, tuple[str, float]]:
    """Queue depths: frames waiting in per-connection outboxes (each transport's peer
    keeps its :class:`~.outbox.Outbox` as ``_outbox``)."""
    frames = firm = waiting = 0
    for conn in conns:
        outbox = getattr(conn.peer, "_outbox", None)
        if outbox:
            waiting += 1
            frames += len(outbox)
            firm += outbox.firm_bytes
    return {
        "outbox_frames": ("frames waiting in slow readers' outboxes", frames),
        "outbox_firm_bytes": (
            "bytes of non-droppable frames waiting in outboxes (closed past --outbox-max-bytes)",
            firm,
        ),
        "slow_readers": ("connections with frames waiting in their outbox", waiting),
    }


def _ctx(conn: Connection[Peer], document_id: str | None = None) -> dict[str, str]:
    """Log context (``--log-format json`` emits these as fields); never a token."""
    ctx = {"connection_id": conn.id}
    if conn.user_id is not None:
        ctx["user_id"] = conn.user_id
    if document_id is not None:
        ctx["document_id"] = document_id
    return ctx
