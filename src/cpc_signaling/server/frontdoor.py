"""The front door: what both transports (aiohttp, ASGI) share about a WebSocket.

Each transport keeps only the code that talks to its framework; everything
decided about a connection's socket is decided here, once:

* **The handshake** (:func:`handshake`): draining → 503; a browser origin not
  allowed → 403 (logged at INFO, it is the client's mistake); the token, from
  ``Authorization: Bearer``, else the ``cpc.token.<JWT>`` subprotocol, else
  ``?token=``; the subprotocol ``cpc.v1`` is selected when offered, and the
  token's subprotocol is never echoed. A token offered as a subprotocol without
  ``cpc.v1`` is refused (400): a browser would fail such a handshake anyway,
  and the server must select one of the offered protocols or none.
* **The slow-reader bound** (:class:`Link`): frames wait in an
  :class:`~.outbox.Outbox` while the socket will not take more; presence is
  conflated, everything else counted; past ``--outbox-max-bytes`` the reader is
  closed with 1013.
* **Snapshot streaming**: a join snapshot (any multi-frame send over
  ``STREAM_THRESHOLD`` bytes) is queued as references to the document's frames,
  uncounted, and written only as the socket drains; what arrives meanwhile
  queues behind it. A joiner that never reads costs the outbox bound plus its
  socket buffers, however large the document.
* **The close policy**: the service decides (``Service.end``) and announces the
  leaves at once; the link then sends the close frame after what is queued
  (except for 1013: the reader is over its bound, its backlog is dropped; and
  the rest of a snapshot being streamed, which is dropped), reads and discards
  until the peer's close frame (a lingering close), and aborts the socket if
  that has not happened within ``CLOSE_TIMEOUT`` seconds.
* **Binary frames** get ``PARSE_ERROR`` (``Service.on_binary``).

The plain HTTP endpoints both transports serve are in ``endpoints.py``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..core import Send
from .auth import bearer_token
from .outbox import Outbox

if TYPE_CHECKING:
    from .service import Peer, Service
    from .session import Session

log = logging.getLogger("cpc_signaling.server")

SUBPROTOCOL: Final = "cpc.v1"
TOKEN_SUBPROTOCOL: Final = "cpc.token."
# From the decision to close to the end of the socket, whatever the peer does.
CLOSE_TIMEOUT: Final = 2.0
# A multi-frame send (a join snapshot) larger than this is streamed, not queued.
STREAM_THRESHOLD: Final = 64 * 1024
# RFC 6455 §5.5: a control frame's payload is at most 125 bytes (2 of them the code).
_MAX_REASON: Final = 123


@dataclass(frozen=True, slots=True)
class Handshake:
    """The front door's answer to a WebSocket handshake."""

    status: int = 101  # 101: upgrade; anything else: refuse with this HTTP status
    body: str = ""  # the refusal's text
    token: str | None = None
    subprotocol: str | None = None  # to select in the response (never the token's)

    @property
    def accepted(self) -> bool:
        return self.status == 101


def handshake(
    service: Service,
    *,
    origin: str | None,
    authorization: str | None,
    subprotocols: Iterable[str],
    query_token: str | None,
    remote: str | None,
) -> Handshake:
    """Decide a WebSocket handshake from its headers (``subprotocols``: every value
    offered in ``Sec-WebSocket-Protocol``, split on commas)."""
    if service.draining:
        return Handshake(503, "shutting down\n")
    if not service.guard.origin_allowed(origin):
        # A browser page from another site: refused before the upgrade (docs/security.md).
        log.info("handshake from %s refused: origin %.200s is not allowed", remote or "?", origin)
        return Handshake(403, "origin not allowed\n")
    selected: str | None = None
    offered_token: str | None = None
    for protocol in subprotocols:
        protocol = protocol.strip()
        if protocol == SUBPROTOCOL:
            selected = protocol
        elif protocol.startswith(TOKEN_SUBPROTOCOL) and offered_token is None:
            offered_token = protocol[len(TOKEN_SUBPROTOCOL) :]
    if offered_token is not None and selected is None:
        service.guard.refused.labels("subprotocol").inc()
        log.info("handshake from %s refused: cpc.token. offered without cpc.v1", remote or "?")
        return Handshake(400, f"offer {SUBPROTOCOL} together with {TOKEN_SUBPROTOCOL}<JWT>\n")
    token = bearer_token(None, authorization) or offered_token or query_token or None
    return Handshake(token=token, subprotocol=selected)


def split_protocols(values: Iterable[str]) -> list[str]:
    """``Sec-WebSocket-Protocol`` header values as one list of offered protocols."""
    return [p.strip() for value in values for p in value.split(",") if p.strip()]


def close_reason(reason: str) -> str:
    """``reason`` cut to fit a close frame (123 bytes of UTF-8)."""
    return reason.encode()[:_MAX_REASON].decode(errors="ignore")


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload: the code, then the reason cut to fit."""
    return struct.pack("!H", code) + close_reason(reason).encode()


def _size(frames: Sequence[bytes]) -> int:
    return sum(map(len, frames))


class Link:
    """The transport-independent half of one WebSocket: its outbox and its closing.

    A transport's peer subclasses it and provides ``drop`` (drop the socket now)
    and, where its outbox holds something else than the frames themselves,
    ``counted`` (what to queue for a send) and ``wrap`` (a streamed frame as it
    is written).

    Ending is idempotent: the server may find several reasons to give up on one
    connection (its close deadline, a failed write, a second decision while the
    first close lingers); the socket is dropped once (:meth:`abort`), the
    deadline never re-armed after that or after :meth:`finished`, and the abort
    logged and counted once. The leaves are the service's, once per session.
    """

    __slots__ = ("_deadline", "_finished", "aborted", "closing", "outbox", "service", "session")

    def __init__(self, service: Service) -> None:
        self.service = service
        self.session: Session | None = None  # None: a refused handshake, or not admitted yet
        self.outbox: Outbox | None = None  # created on first need: most peers never lag
        self.closing: tuple[int, str] | None = None  # (code, reason) once closing
        self._deadline: asyncio.TimerHandle | None = None
        self.aborted = False  # the socket was dropped (once)
        self._finished = False  # the transport is done with the socket

    # -- what a transport provides ------------------------------------------------

    def drop(self) -> None:
        """Drop the socket now (nothing more is written); called once, by :meth:`abort`."""
        raise NotImplementedError

    def counted(self, send: Send[Peer]) -> Sequence[bytes]:
        """What the outbox holds for ``send`` (counted against the bound)."""
        return send.frames

    @staticmethod
    def wrap(frame: bytes) -> bytes:
        """A streamed frame as the transport writes it."""
        return frame

    # -- the slow-reader bound and snapshot streaming -------------------------------

    def name(self) -> str:
        session = self.session
        return session.describe() if session is not None else "connection (not admitted)"

    def context(self) -> dict[str, str]:
        session = self.session
        return session.context() if session is not None else {}

    def queue(self, send: Send[Peer], *, behind: bool) -> bool:
        """Queue ``send`` in the outbox: its frames (presence conflated when ``behind``:
        the socket is full or a stream is pending), or, for a large multi-frame send,
        a stream. False when this put the reader over its bound (it is being closed)."""
        outbox = self._outbox()
        frames = send.frames
        if len(frames) > 1 and _size(frames) > STREAM_THRESHOLD:
            outbox.push_stream(frames)
            return True
        key = send.key if behind and len(frames) == 1 else None
        conflated = 0
        for frame in self.counted(send):
            conflated += outbox.push(frame, key)
        if conflated:
            self.service.metrics.conflated.inc(conflated)
        return self._within_bound(outbox)

    def queue_control(self, wire: bytes, what: str) -> bool:
        """Queue a control frame the peer is owed (a pong), counted against the bound
        like any frame that may not be dropped; False when this put the reader over
        its bound (it is being closed 1013, ``what`` says what piled up)."""
        outbox = self._outbox()
        outbox.push(wire)
        return self._within_bound(outbox, what)

    def _outbox(self) -> Outbox:
        """The outbox, created on first need."""
        outbox = self.outbox
        if outbox is None:
            outbox = self.outbox = Outbox(self.service.config.outbox_max_bytes, self.wrap)
        return outbox

    def _within_bound(self, outbox: Outbox, what: str = "") -> bool:
        """False, and the reader closed (1013), when ``outbox`` is past its bound."""
        if outbox.overflowed:
            self.overflow(what)
            return False
        return True

    def overflow(self, what: str = "") -> None:
        """Past ``--outbox-max-bytes`` of frames that may not be dropped: 1013."""
        log.info(
            "%s: slow reader over its %d-byte bound%s",
            self.name(),
            self.service.config.outbox_max_bytes,
            f" ({what})" if what else "",
            extra=self.context(),
        )
        self.end(1013, "reader too slow", "slow_reader")

    def end(self, code: int, reason: str, why: str) -> None:
        """The transport decided to close (1009, 1011, 1013...): through the service's
        close policy when admitted (leaves at once), else only the closing handshake."""
        session = self.session
        if session is not None:
            self.service.end(session, code, reason, why)
        else:
            self.close(code, reason)

    # -- closing --------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (``Peer.close``); transports extend it."""
        self.begin_close(code, reason)

    def begin_close(self, code: int, reason: str) -> bool:
        """Record the close and arm the deadline; False when already closing. What is
        queued stays (it goes before the close frame) but a snapshot being streamed;
        a reader over its bound (1013) loses its backlog."""
        if self.closing is not None:
            return False
        self.closing = (code, reason)
        outbox = self.outbox
        if outbox is not None:
            if code == 1013:
                outbox.clear()
            else:
                outbox.drop_streams()
        self.arm_deadline()
        return True

    def arm_deadline(self) -> None:
        """Abort the socket ``CLOSE_TIMEOUT`` from now unless :meth:`finished` first
        (never again once aborted: one connection is given up on once)."""
        if self._deadline is None and not self.aborted:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(CLOSE_TIMEOUT, self._overdue)

    def _overdue(self) -> None:
        self._deadline = None
        if self.aborted:
            return
        self.service.metrics.close_timeouts.inc()
        log.info(
            "%s: closing handshake not finished within %gs: socket aborted",
            self.name(),
            CLOSE_TIMEOUT,
            extra=self.context(),
        )
        self.abort()

    def abort(self) -> bool:
        """Drop the socket now, once; False when it was dropped already."""
        if self.aborted:
            return False
        self.aborted = True
        self._disarm()
        self.drop()
        return True

    def finished(self) -> None:
        """The socket is gone: disarm the deadline (idempotent)."""
        self._finished = True
        self._disarm()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
