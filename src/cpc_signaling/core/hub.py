"""The hub: this instance's connections and its replicas of documents.

Sans-I/O. The transport hands the hub decoded messages (``receive``) and closed
connections (``disconnect``); the hub answers with events for the backend to
sequence, or raises :class:`ProtocolError`. The backend hands sequenced events
back (``apply``) and the hub answers with :class:`Send` instructions: which
local peers get which frames. ``P`` is whatever the transport uses to reach a
peer; the hub only stores and returns it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..protocol import (
    Annotation,
    Comment,
    DocumentMessage,
    Error,
    ErrorCode,
    JoinDocument,
    LeaveDocument,
    ProtocolError,
    encode,
    encode_info,
)
from .events import Event, Joined, Left, Relayed
from .state import (
    DEFAULT_MAX_STORED_BYTES,
    PRESENCE_KINDS,
    STORED_KINDS,
    DocumentState,
    Outcome,
    presence_changes,
)

P = TypeVar("P")

ConflationKey = tuple[str, str, str]
"""(document, user, kind): a newer frame with the same key may replace an older, unsent one."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits the core enforces; the same on every instance of a service."""

    max_documents_per_connection: int = 100
    max_members_per_document: int = 1000
    max_stored_per_document: int = 1000
    max_stored_bytes_per_document: int = DEFAULT_MAX_STORED_BYTES
    max_documents: int = 100_000
    max_stored_bytes: int = 256 << 20


@dataclass(slots=True)
class Send(Generic[P]):
    """Send ``frames``, in order, to each of ``peers``.

    ``kind`` names what is sent, for metrics. ``wire`` is for the transport:
    it may cache the frames in its own encoding there, so that it encodes once
    for all peers.
    """

    peers: Sequence[P]
    frames: Sequence[bytes]
    kind: str
    key: ConflationKey | None = None
    wire: bytes | None = None


class Connection(Generic[P]):
    """A local connection as the hub sees it.

    ``info``: the user info its joins carry, canonical JSON (empty: none) when a
    token decided it; None in open mode, where each JoinDocument's own ``info`` counts.
    """

    __slots__ = ("allowed_documents", "id", "info", "joined", "peer", "user_id")

    def __init__(
        self,
        conn_id: str,
        peer: P,
        user_id: str | None,
        allowed_documents: frozenset[str] | None,
        info: bytes | None = None,
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self.user_id = user_id
        self.allowed_documents = allowed_documents
        self.info = info
        # Documents joined or being joined (the join may still be in the backend).
        self.joined: set[str] = set()


def _others(members: dict[str, P], sender: str) -> list[P]:
    """Every local member's peer but the sending connection's."""
    return [p for c, p in members.items() if c != sender]


class Hub(Generic[P]):
    """Connections, membership and routing for one instance.

    ``retain_idle`` keeps documents without members (for their annotations and
    comments): right when this hub is the only holder of state (memory
    backend); a shared store makes it unnecessary.
    """

    def __init__(
        self, *, instance_id: str, limits: Limits | None = None, retain_idle: bool = True
    ) -> None:
        self.instance_id = instance_id
        self.limits = limits or Limits()
        self.retain_idle = retain_idle
        self.connections: dict[str, Connection[P]] = {}
        self.documents: dict[str, DocumentState] = {}
        # document -> local connection id -> peer: who on this instance gets a document's traffic.
        self.local_members: dict[str, dict[str, P]] = {}
        # Documents kept only for their stored messages, least recently active first.
        self._idle: OrderedDict[str, None] = OrderedDict()
        self.stored_bytes = 0  # annotations and comments held, over all documents
        # Who holds those bytes (retain_idle only: the memory backend's process-wide
        # budget): author -> bytes, and author -> document -> bytes.
        self.held: dict[str, int] = {}
        self._held_in: dict[str, dict[str, int]] = {}
        self._ids = itertools.count(1)
        # document -> local connections that joined or are joining it.
        self.local_refs: dict[str, int] = {}
        # Documents whose last local connection let go since the caller last looked:
        # the caller detaches them from the backend (and clears this list).
        self.released: set[str] = set()

    # -- connections -----------------------------------------------------

    def connect(
        self,
        peer: P,
        *,
        user_id: str | None = None,
        allowed_documents: frozenset[str] | None = None,
        info: bytes | None = None,
    ) -> Connection[P]:
        """Register a new local connection; ``user_id`` is set when a token bound it.

        ``info``: the user info a token gave (canonical JSON, ``protocol.encode_info``;
        empty when the token has none); the client's own is then ignored. None (no
        token): each JoinDocument's ``info`` is the one its join carries.
        """
        conn = Connection(
            f"{self.instance_id}/{next(self._ids)}", peer, user_id, allowed_documents, info
        )
        self.connections[conn.id] = conn
        return conn

    def disconnect(self, conn: Connection[P]) -> list[tuple[str, Event]]:
        """Forget a closed connection; return the leaves to sequence (one per document)."""
        self.connections.pop(conn.id, None)
        events: list[tuple[str, Event]] = []
        assert conn.user_id is not None or not conn.joined
        for doc_id in list(conn.joined):
            members = self.local_members.get(doc_id)
            if members is not None:
                members.pop(conn.id, None)
            self._release(conn, doc_id)
            events.append((doc_id, Left(conn.id, conn.user_id or "")))
        return events

    def _claim(self, conn: Connection[P], doc_id: str) -> None:
        conn.joined.add(doc_id)
        self.local_refs[doc_id] = self.local_refs.get(doc_id, 0) + 1

    def _release(self, conn: Connection[P], doc_id: str) -> None:
        if doc_id not in conn.joined:
            return
        conn.joined.discard(doc_id)
        refs = self.local_refs[doc_id] - 1
        if refs:
            self.local_refs[doc_id] = refs
        else:
            del self.local_refs[doc_id]
            self.released.add(doc_id)

    def receive(self, conn: Connection[P], message: DocumentMessage) -> tuple[str, Event]:
        """Check a client's message; return the event it makes, or raise ProtocolError."""
        doc_id = message.document_id
        if conn.user_id is None:
            if type(message) is not JoinDocument:
                raise ProtocolError(ErrorCode.DOCUMENT_ERROR, f"not joined to document {doc_id}")
        elif message.user_id != conn.user_id:
            raise ProtocolError(
                ErrorCode.AUTH_ERROR,
                f"user_id {message.user_id} is not this connection's user; message dropped",
            )
        kind = type(message)
        if kind is JoinDocument:
            assert isinstance(message, JoinDocument)
            joined = self._check_join(conn, doc_id, message)
            conn.user_id = message.user_id  # open mode: the first join binds the user
            return doc_id, joined
        assert conn.user_id is not None
        if doc_id not in conn.joined:
            raise ProtocolError(ErrorCode.DOCUMENT_ERROR, f"not joined to document {doc_id}")
        if kind is LeaveDocument:
            self._release(conn, doc_id)
            return doc_id, Left(conn.id, conn.user_id)
        frame = encode(message)
        if (kind is Annotation or kind is Comment) and self.retain_idle:
            self._make_room(len(frame), conn.user_id)
        return doc_id, Relayed(conn.id, conn.user_id, kind.__name__, frame)

    def publish(self, message: Annotation | Comment) -> tuple[str, Relayed]:
        """An Annotation or Comment from the server itself (its API), not from a member."""
        frame = encode(message)
        if self.retain_idle:
            self._make_room(len(frame), message.user_id)
        return message.document_id, Relayed("", message.user_id, type(message).__name__, frame)

    def _check_join(self, conn: Connection[P], doc_id: str, message: JoinDocument) -> Joined:
        """The Joined a JoinDocument makes (``message.user_id`` is the connection's user,
        or will be: nothing is bound or claimed when this raises)."""
        info = conn.info
        if info is None:
            try:
                info = encode_info(message.info)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.PARSE_ERROR, f"JoinDocument.info: {exc}") from None
        allowed = conn.allowed_documents
        if allowed is not None and doc_id not in allowed:
            raise ProtocolError(ErrorCode.AUTH_ERROR, f"this token may not join document {doc_id}")
        if doc_id not in conn.joined:
            if len(conn.joined) >= self.limits.max_documents_per_connection:
                raise ProtocolError(
                    ErrorCode.DOCUMENT_ERROR,
                    f"cannot join {doc_id}: a connection may join at most "
                    f"{self.limits.max_documents_per_connection} documents",
                )
            self._claim(conn, doc_id)
        return Joined(conn.id, message.user_id, info)

    # -- sequenced events ----------------------------------------------------

    def document(self, doc_id: str) -> DocumentState:
        """The replica of ``doc_id``, created empty if this hub has none."""
        state = self.documents.get(doc_id)
        if state is None:
            state = DocumentState(
                doc_id,
                max_stored=self.limits.max_stored_per_document,
                max_stored_bytes=self.limits.max_stored_bytes_per_document,
            )
            self.documents[doc_id] = state
        else:
            self._idle.pop(doc_id, None)
        return state

    def install(self, state: DocumentState) -> None:
        """Replace a replica with one loaded from a shared store (seq included)."""
        old = self.documents.get(state.document_id)
        self.stored_bytes += state.stored_bytes - (old.stored_bytes if old is not None else 0)
        if self.retain_idle:
            self._account(state.document_id, old.held if old is not None else {}, state.held)
        self.documents[state.document_id] = state
        self._idle.pop(state.document_id, None)

    def resync(self, state: DocumentState) -> list[Send[P]]:
        """Install ``state`` (reloaded after an outage) over the local replica and tell
        local members what changed meanwhile: a JoinDocument (and presence) for each
        user that appeared, a LeaveDocument for each that vanished, and presence
        messages that changed. Nobody is told about their own user."""
        doc_id = state.document_id
        old = self.documents.get(doc_id)
        old_users = old.users if old is not None else {}
        members = self.local_members.get(doc_id, {})
        sends: list[Send[P]] = []

        def others(user_id: str) -> list[P]:
            return self._others_than(members, user_id)

        for user_id in old_users:
            if user_id not in state.users and (peers := others(user_id)):
                sends.append(Send(peers, (state.leave_frame(user_id),), "LeaveDocument"))
        for user_id, user in state.users.items():
            before = old_users.get(user_id)
            if before is None:
                frames = [user.join_frame, *user.presence.values()]
                kind = "JoinDocument"
            else:
                frames = presence_changes(before.presence, user.presence)
                kind = "presence"
            if frames and (peers := others(user_id)):
                sends.append(Send(peers, frames, kind))
        # Annotations and comments stored meanwhile (elsewhere, or before a join made
        # while the store was away): every local member gets those it was not sent.
        if members and state.stored:
            sent: dict[bytes, int] = {}
            for frame in old.stored if old is not None else ():
                sent[frame] = sent.get(frame, 0) + 1
            fresh: list[bytes] = []
            for frame in state.stored:
                if sent.get(frame, 0):
                    sent[frame] -= 1
                else:
                    fresh.append(frame)
            if fresh:
                sends.append(Send(list(members.values()), fresh, "stored"))
        self.install(state)
        return sends

    def settle(self, doc_id: str, event: Event) -> list[Send[P]]:
        """The local side of this instance's own Joined or Left that an installed
        state already contains (a reload skipped it): add or remove the local
        member and answer its connection, as ``apply`` would have.

        A joiner's snapshot is cut from the installed state, so every event is
        still delivered exactly once: up to the state's seq in the snapshot,
        after it live. Call Lefts before ``resync`` and Joineds after it.
        """
        state = self.documents.get(doc_id)
        conn = self.connections.get(event.conn)
        sends: list[Send[P]] = []
        if type(event) is Left:
            members = self.local_members.get(doc_id)
            if members is not None:
                members.pop(event.conn, None)
                if not members:
                    del self.local_members[doc_id]
            if conn is not None and state is not None:
                sends.append(Send((conn.peer,), (state.leave_frame(event.user),), "LeaveDocument"))
            return sends
        if type(event) is not Joined or conn is None or doc_id not in conn.joined or state is None:
            return sends
        if state.conns.get(conn.id) == event.user:
            sends.append(self._admit(conn, state, event.user))
        elif len(state.conns) >= self.limits.max_members_per_document:
            # Refused by the shared store (full). Otherwise it left and joined again:
            # that later Joined is still on its way.
            sends.append(self._refuse_full(conn, doc_id))
        return sends

    def _admit(self, conn: Connection[P], state: DocumentState, user_id: str) -> Send[P]:
        """Make ``conn`` a local member; its snapshot, cut here, and acknowledgement."""
        self.local_members.setdefault(state.document_id, {})[conn.id] = conn.peer
        frames = [*state.snapshot(user_id), state.join_frame(user_id)]
        return Send((conn.peer,), frames, "snapshot")

    def _refuse_full(self, conn: Connection[P], doc_id: str) -> Send[P]:
        self._release(conn, doc_id)
        error = Error(
            code=ErrorCode.DOCUMENT_ERROR,
            message=f"document {doc_id} is full ({self.limits.max_members_per_document} members)",
        )
        return Send((conn.peer,), (encode(error),), "Error")

    def apply(self, doc_id: str, event: Event, decided: int | None = None) -> list[Send[P]]:
        """Apply a sequenced event; return what local peers must be sent.

        ``decided``: the outcome a shared store decided (``DocumentState.apply``).
        """
        state = self.document(doc_id)
        if type(event) is Relayed and event.kind in STORED_KINDS:
            outcome = self._apply_stored(state, event, decided)
        else:  # presence, joins, leaves: no stored bytes move (kept off the hot path)
            outcome = state.apply(
                event, max_members=self.limits.max_members_per_document, decided=decided
            )
        conn = self.connections.get(event.conn)
        if conn is not None and doc_id not in conn.joined and type(event) is not Left:
            conn = None  # it left (or closed) while this event was in flight
        members = self.local_members.get(doc_id)
        sends: list[Send[P]] = []

        if outcome is Outcome.RELAYED:
            assert type(event) is Relayed
            if members:
                key = (doc_id, event.user, event.kind) if event.kind in PRESENCE_KINDS else None
                peers = _others(members, event.conn)
                if peers:
                    sends.append(Send(peers, (event.frame,), event.kind, key))
        elif outcome in (Outcome.JOINED_FIRST, Outcome.JOINED_AGAIN, Outcome.REJOINED):
            if outcome is Outcome.JOINED_FIRST and members:
                peers = _others(members, event.conn)
                if peers:
                    sends.append(Send(peers, (state.join_frame(event.user),), "JoinDocument"))
            if conn is not None:
                sends.append(self._admit(conn, state, event.user))
                members = self.local_members[doc_id]
        elif outcome is Outcome.REJECTED_FULL:
            if conn is not None:
                sends.append(self._refuse_full(conn, doc_id))
        elif outcome in (Outcome.LEFT_LAST, Outcome.LEFT_OTHERS_REMAIN):
            if members is not None:
                members.pop(event.conn, None)
            leave = state.leave_frame(event.user)
            if conn is not None:
                sends.append(Send((conn.peer,), (leave,), "LeaveDocument"))  # the ack
            if outcome is Outcome.LEFT_LAST:
                if members:
                    sends.append(Send(list(members.values()), (leave,), "LeaveDocument"))
            elif state.reinstated and members:
                # The user stays, and what the leaving connection set went with it: the
                # others are sent the user's presence now in force that differs.
                peers = self._others_than(members, event.user)
                if peers:
                    sends.append(Send(peers, state.reinstated, "presence"))
        elif outcome is Outcome.IGNORED and type(event) is Left and conn is not None:
            # A leave sent while its join was in flight, and the join was then refused:
            # still acknowledged, as every LeaveDocument the hub accepted is.
            sends.append(Send((conn.peer,), (state.leave_frame(event.user),), "LeaveDocument"))

        if members is not None and not members:
            del self.local_members[doc_id]
        if not state.conns:
            self._forget_if_idle(state)
        return sends

    def _apply_stored(self, state: DocumentState, event: Relayed, decided: int | None) -> Outcome:
        """Apply an Annotation or Comment: the only events that move stored bytes, so the
        process-wide total and the per-author ledger are kept here only."""
        stored_before = state.stored_bytes
        held_before = dict(state.held) if self.retain_idle else None
        outcome = state.apply(
            event, max_members=self.limits.max_members_per_document, decided=decided
        )
        if held_before is not None:
            self._account(state.document_id, held_before, state.held)
        self.stored_bytes += state.stored_bytes - stored_before
        return outcome

    def _others_than(self, members: dict[str, P], user_id: str) -> list[P]:
        """The peers of local members whose user is not ``user_id`` (nobody is told
        about their own user's presence, as in snapshots)."""
        return [
            peer
            for conn_id, peer in members.items()
            if (c := self.connections.get(conn_id)) is not None and c.user_id != user_id
        ]

    def _forget_if_idle(self, state: DocumentState) -> None:
        doc_id = state.document_id
        if doc_id in self.local_members or doc_id in self.local_refs:
            return  # a local join is on its way: it needs this replica (stored messages)
        if not self.retain_idle:
            return  # a shared store's replica: kept until the backend lets go (``forget``)
        if state.is_empty():
            self._drop(doc_id)
            return
        self._idle[doc_id] = None
        self._idle.move_to_end(doc_id)
        # Overflow policy: drop the least recently active documents that have no members.
        while len(self.documents) > self.limits.max_documents and self._idle:
            self._drop(next(iter(self._idle)))

    def _drop(self, doc_id: str) -> None:
        state = self.documents.pop(doc_id, None)
        self._idle.pop(doc_id, None)
        if state is not None:
            self.stored_bytes -= state.stored_bytes
            if self.retain_idle:
                self._account(doc_id, state.held, {})

    def _account(self, doc_id: str, before: dict[str, int], after: dict[str, int]) -> None:
        """Move the per-author totals from a document's ``held`` before to after."""
        for user in before.keys() | after.keys():
            delta = after.get(user, 0) - before.get(user, 0)
            if delta:
                self._credit(user, doc_id, delta)

    def _credit(self, user: str, doc_id: str, delta: int) -> None:
        total = self.held.get(user, 0) + delta
        docs = self._held_in.setdefault(user, {})
        here = docs.get(doc_id, 0) + delta
        if here:
            docs[doc_id] = here
        else:
            docs.pop(doc_id, None)
        if total:
            self.held[user] = total
        else:
            del self.held[user]
            del self._held_in[user]

    def _make_room(self, nbytes: int, user: str) -> None:
        """Keep stored messages within ``max_stored_bytes`` (memory backend), fairly.

        When ``nbytes`` more of ``user``'s would not fit:

        1. the least recently active idle documents (no members) are dropped first;
        2. if it still does not fit, the fair share is the budget divided by the
           number of users holding stored messages (``user`` counted in). A user
           whose holding would exceed it is refused (CONNECTION_ERROR): whoever
           floods is stopped, not everyone else;
        3. a user within it gets the room: the oldest stored messages of whoever
           holds the most (at least a fair share, since the store is full) go, one
           at a time, from the document where that user holds the most.
        """
        budget = self.limits.max_stored_bytes
        if self.stored_bytes + nbytes <= budget:
            return
        while self.stored_bytes + nbytes > budget and self._idle:
            self._drop(next(iter(self._idle)))
        if self.stored_bytes + nbytes <= budget:
            return
        held = self.held
        holders = len(held) + (user not in held)
        share = budget // holders
        if held.get(user, 0) + nbytes > share:
            raise ProtocolError(
                ErrorCode.CONNECTION_ERROR,
                "the server's storage for annotations and comments is full, and this user "
                f"holds more than a fair share of it ({share} bytes); try later",
            )
        while self.stored_bytes + nbytes > budget:
            victim = max(((n, u) for u, n in held.items() if u != user), default=None)
            if victim is None:
                break
            docs = self._held_in[victim[1]]
            doc_id = max(docs, key=lambda d: (docs[d], d))
            freed = self.documents[doc_id].drop_oldest_by(victim[1])
            if not freed:
                break  # (cannot happen: the ledger says it holds bytes there)
            self.stored_bytes -= freed
            self._credit(victim[1], doc_id, -freed)
        if self.stored_bytes + nbytes > budget:
            raise ProtocolError(
                ErrorCode.CONNECTION_ERROR,
                "the server's storage for annotations and comments is full; try later",
            )

    def cancel_join(self, conn: Connection[P], doc_id: str) -> None:
        """Undo ``receive``'s claim for a join that will not be submitted."""
        self._release(conn, doc_id)

    def forget(self, doc_id: str) -> None:
        """Drop the replica of a document this instance no longer follows."""
        if doc_id not in self.local_members and doc_id not in self.local_refs:
            state = self.documents.get(doc_id)
            if self.retain_idle and state is not None and not state.is_empty():
                return  # the only copy of its annotations and comments (memory backend)
            self._drop(doc_id)

    # -- reading ---------------------------------------------------------

    def memberships(self) -> list[tuple[str, str, str]]:
        """(document, connection, user) for every document a local connection joined
        and has not left: what this instance holds, whatever a replica says."""
        return [
            (doc_id, conn.id, conn.user_id)
            for conn in self.connections.values()
            if conn.user_id is not None
            for doc_id in conn.joined
        ]

    def present_users(self, doc_id: str) -> list[str]:
        """User ids present in ``doc_id`` (as this replica knows), oldest join first."""
        state = self.documents.get(doc_id)
        return [] if state is None else list(state.users)
