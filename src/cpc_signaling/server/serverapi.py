"""The server-side API, in Python: what the application does as the server itself.

Post an Annotation or Comment (:meth:`ServerApi.publish`), read who is present in
a document (:meth:`ServerApi.presence`), close a user's connections on every
instance (:meth:`ServerApi.disconnect`). The HTTP API (``api.py``) and embedders
(docs/embedding.md) reach it through the service's methods of the same names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from ..core import DocumentState, Event, Hub
from ..protocol import (
    Annotation,
    Comment,
    Decoder,
    ErrorCode,
    PresenceMessage,
    ProtocolError,
    encode,
)
from ..protocol.ids import canonical_uuid
from .errors import Unavailable
from .following import Following
from .hooks import HookRuntime
from .metrics import Metrics
from .peer import Peer
from .session import Session

log = logging.getLogger("cpc_signaling.server")

__all__ = ["Host", "PresentUser", "ServerApi"]


@dataclass(frozen=True, slots=True)
class PresentUser:
    """A user present in a document, as :meth:`ServerApi.presence` reports it."""

    user_id: str
    connections: int  # member connections of this user in the document, all instances
    presence: tuple[PresenceMessage, ...]  # the messages in force, in the order received


class Host(Protocol):
    """What the API needs from the service: its state, the backend's door, its close policy."""

    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def sessions(self) -> dict[str, Session]: ...

    def submit(self, doc_id: str, event: Event) -> bool: ...

    def kick(self, session: Session, reason: str) -> None:
        """Let ``session`` go now (its leaves submitted at once), then close it with 1008."""


class ServerApi:
    __slots__ = ("_decoder", "_following", "_hooks", "_host", "_hub", "_metrics")

    def __init__(
        self,
        host: Host,
        hub: Hub[Peer],
        following: Following,
        decoder: Decoder,
        hooks: HookRuntime,
        metrics: Metrics,
    ) -> None:
        self._host = host
        self._hub = hub
        self._following = following
        self._decoder = decoder
        self._hooks = hooks
        self._metrics = metrics

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
        checked = self._decoder.decode_document_message(encode(message))
        assert isinstance(checked, Annotation | Comment)
        host = self._host
        if not host.ready:
            raise Unavailable(
                "draining" if host.draining else f"backend {self._following.name} not ready"
            )
        doc_id, event = self._hub.publish(checked)
        self._metrics.api_published.labels(event.kind).inc()
        log.info("published %s", event.kind, extra={"document_id": doc_id, "user_id": event.user})
        if not host.submit(doc_id, event):
            raise Unavailable(f"backend {self._following.name} overloaded")
        return doc_id

    async def presence(self, document_id: str) -> list[PresentUser]:
        """Users present in ``document_id``, oldest join first, with their presence in force.

        With Redis this is the shared state (all instances), else this instance's replica.
        """
        doc_id = canonical_uuid(document_id)
        following = self._following
        if following.loads and doc_id not in self._hub.local_members:
            if not following.ready:
                raise Unavailable(f"backend {following.name} not ready")
            try:
                state = await following.load(doc_id)
            except Exception as exc:  # Redis went away meanwhile
                raise Unavailable(f"backend {following.name}: {exc}") from None
            if state is None:
                raise Unavailable(f"backend {following.name} not ready")
            return self._present(state)
        state = self._hub.documents.get(doc_id)
        return [] if state is None else self._present(state)

    def _present(self, state: DocumentState) -> list[PresentUser]:
        decode = self._decoder.decode
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
        if self._following.shared:
            order = {"op": "disconnect", "user_id": user_id, "reason": reason}
            try:
                await self._following.broadcast(order)
            except ConnectionError as exc:
                raise Unavailable(f"backend {self._following.name}: {exc}") from None
        return closed

    def on_order(self, order: Mapping[str, str]) -> None:
        """An order another instance broadcast (at most once: an instance cut off from
        the backend meanwhile does not see it)."""
        if order.get("op") == "disconnect" and "user_id" in order:
            self.disconnect_local(canonical_uuid(order["user_id"]), order.get("reason") or "")
        else:
            log.warning("order %r from instance %s ignored", order.get("op"), order.get("origin"))

    def disconnect_local(self, user_id: str, reason: str) -> int:
        """Close this instance's connections of ``user_id``; how many."""
        self._hooks.forget_user(user_id)  # a reconnect is asked again (access revoked?)
        sessions = [
            s for s in self._host.sessions.values() if s.user_id == user_id and s.closing is None
        ]
        for session in sessions:
            self._host.kick(session, reason)
        if sessions:
            log.info("disconnected %d connection(s)", len(sessions), extra={"user_id": user_id})
        return len(sessions)
