"""The join flow: from a JoinDocument the hub accepted to the Joined submitted.

A join may wait on two things before it is submitted to the backend: the
application's join check (``--join-webhook`` or an authorizer, docs/hooks.md),
and the attach of its document to a shared backend (``following.py``). While a
check is in flight the connection reads on; frames for that document wait for
the check, in order (``Joining.checks`` and :meth:`Joining.after_check`).

A join whose wait ends after its connection was let go (the server decided to
close it, or it is gone) is dropped: never applied, never announced, so nobody
sees a member that never leaves, or a join and then a leave of a ghost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..core import Event, Hub, Joined
from ..protocol import DocumentMessage, ErrorCode, ProtocolError
from .following import Following
from .hooks import HookRuntime, JoinRequest
from .hooks.authorize import Decision
from .hooks.authorize import Verdict as CheckVerdict
from .peer import Peer
from .session import Session

log = logging.getLogger("cpc_signaling.server")

__all__ = ["Dispatch", "Joining"]


class Dispatch(Protocol):
    """What the join flow needs from the frame dispatch (the service)."""

    def submit(self, doc_id: str, event: Event) -> bool:
        """Hand ``event`` to the backend; False: refused (overloaded), the sender told."""

    def reject(self, session: Session, exc: ProtocolError) -> None:
        """Send ``exc`` as an Error, counted against the error budget."""

    def send_error(self, peer: Peer, code: str, message: str) -> None:
        """Send an Error, not counted against the error budget."""

    def handle(self, session: Session, message: DocumentMessage) -> Awaitable[None] | None:
        """Handle a decoded message (a held frame, once its document's check is over)."""


class Joining:
    __slots__ = ("_dispatch", "_following", "_hooks", "_hub", "_spawn", "checks")

    def __init__(
        self,
        hub: Hub[Peer],
        following: Following,
        hooks: HookRuntime,
        dispatch: Dispatch,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._hub = hub
        self._following = following
        self._hooks = hooks
        self._dispatch = dispatch
        self._spawn = spawn
        # Join checks in flight, per (connection, document); done when the check is over.
        # A frame for that document waits for it (:meth:`after_check`); the frame
        # dispatch reads this map directly (the hot path: one truth test when empty).
        self.checks: dict[tuple[str, str], asyncio.Future[None]] = {}

    def join(self, session: Session, doc_id: str, event: Joined) -> Awaitable[None] | None:
        """A join the hub accepted: authorize it (join hook), attach, submit. Returns an
        awaitable only when it waits for the attach (the transport awaits it before
        reading on)."""
        authorizer = self._hooks.authorizer
        if authorizer is not None and session.id not in self._hub.local_members.get(doc_id, {}):
            # Not a member yet (a repeated join of a member only re-sends the snapshot).
            decision = authorizer.cached(event.user, doc_id)
            if decision is None:
                held = asyncio.get_running_loop().create_future()
                self.checks[(session.id, doc_id)] = held
                self._spawn(self._check_then_join(session, doc_id, event, held))
                return None  # the reader goes on; this document's frames wait
            if not decision.allowed:
                self._refused(session, doc_id, decision)
                return None
        if self._following.must_attach(doc_id):
            return self._attach_then_join(session, doc_id, event)
        self._dispatch.submit(doc_id, event)
        return None

    async def after_check(
        self, session: Session, held: asyncio.Future[None], message: DocumentMessage
    ) -> None:
        """A frame for a document whose join is being checked: handled after it."""
        await held
        if _let_go(session):
            return
        pending = self._dispatch.handle(session, message)
        if pending is not None:
            await pending

    async def _check_then_join(
        self, session: Session, doc_id: str, event: Joined, held: asyncio.Future[None]
    ) -> None:
        """Ask the application (join hook), then join, while the connection reads on."""
        try:
            assert self._hooks.authorizer is not None
            request = JoinRequest(event.user, doc_id, session.claims)
            decision = await self._hooks.authorizer.authorize(request)
            if _let_go(session) or doc_id not in session.conn.joined:
                self._drop(session, doc_id)
            elif not decision.allowed:
                self._refused(session, doc_id, decision)
            elif self._following.must_attach(doc_id):
                await self._attach_then_join(session, doc_id, event)
            else:
                self._dispatch.submit(doc_id, event)
        finally:
            del self.checks[(session.id, doc_id)]
            held.set_result(None)

    async def _attach_then_join(self, session: Session, doc_id: str, event: Joined) -> None:
        conn = session.conn
        try:
            await self._following.attach(doc_id)
        except Exception as exc:  # the backend says why; the client gets a typed error
            log.warning(
                "%s: attach of document %s failed: %s",
                session.describe(),
                doc_id,
                exc,
                extra=session.context(doc_id),
            )
            self._hub.cancel_join(conn, doc_id)
            self._dispatch.send_error(
                conn.peer, ErrorCode.CONNECTION_ERROR, f"cannot join {doc_id} now; retry"
            )
            self._following.detach_released()
            return
        if doc_id in conn.joined and not _let_go(session):
            self._dispatch.submit(doc_id, event)
        else:
            self._drop(session, doc_id)

    def _drop(self, session: Session, doc_id: str) -> None:
        """The connection was let go while its join waited: never a member."""
        if doc_id in session.conn.joined:
            self._hub.cancel_join(session.conn, doc_id)
        self._following.detach_released()

    def _refused(self, session: Session, doc_id: str, decision: Decision) -> None:
        """The join hook said no (AUTH_ERROR) or gave no answer (CONNECTION_ERROR)."""
        self._hub.cancel_join(session.conn, doc_id)
        self._following.detach_released()
        if decision.verdict is CheckVerdict.DENIED:
            message = f"join of document {doc_id} denied: {decision.reason}"
            self._dispatch.reject(session, ProtocolError(ErrorCode.AUTH_ERROR, message))
        else:
            self._dispatch.send_error(
                session.peer,
                ErrorCode.CONNECTION_ERROR,
                f"cannot authorize the join of document {doc_id} now; retry",
            )


def _let_go(session: Session) -> bool:
    """The server decided to close ``session`` (its leaves are on their way) or it is gone."""
    return session.closing is not None or session.left
