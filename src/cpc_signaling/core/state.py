"""One document's state: who is present, their presence in force, stored messages.

Pure and deterministic: the same events applied in the same order give the same
state and the same outcomes on every instance. No clocks, no I/O.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final

from ..protocol import JoinDocument, LeaveDocument, encode
from .events import Event, Joined, Left, Relayed

# Kinds a user has at most one of in force.
PRESENCE_KINDS: Final = frozenset(
    {"PresenceUpdate", "CursorUpdate", "SelectionUpdate", "TypingIndicator", "PresenceStatus"}
)
STORED_KINDS: Final = frozenset({"Annotation", "Comment"})
# A PresenceUpdate carries cursor, selection and typing: it supersedes those kinds.
_SUPERSEDED_BY: Final[dict[str, tuple[str, ...]]] = {
    "PresenceUpdate": ("CursorUpdate", "SelectionUpdate", "TypingIndicator"),
}


class Outcome(enum.Enum):
    """What applying one event did; the hub turns it into deliveries."""

    JOINED_FIRST = "joined, first connection of the user: announce"
    JOINED_AGAIN = "joined, the user was already present: tell nobody"
    REJOINED = "the connection was already a member: snapshot again, tell nobody"
    REJECTED_FULL = "the document has max members: refuse the join"
    LEFT_LAST = "left, the user's last connection: announce"
    LEFT_OTHERS_REMAIN = "left, the user is still present through another connection"
    RELAYED = "relayed to the other members"
    IGNORED = "not a member: nothing to do"


class UserPresence:
    """A present user: its connections here and its presence messages in force."""

    __slots__ = ("conns", "join_frame", "presence", "user_id")

    def __init__(self, user_id: str, join_frame: bytes) -> None:
        self.user_id = user_id
        self.join_frame = join_frame
        self.conns: set[str] = set()
        # kind -> frame; dict order is the order the messages in force were received.
        self.presence: dict[str, bytes] = {}

    def set_presence(self, kind: str, frame: bytes) -> None:
        for superseded in _SUPERSEDED_BY.get(kind, ()):
            self.presence.pop(superseded, None)
        self.presence.pop(kind, None)  # re-insert at the end: received last
        self.presence[kind] = frame


class DocumentState:
    """The replica of one document. ``seq`` is the last event applied."""

    __slots__ = ("conns", "document_id", "max_stored", "seq", "stored", "stored_bytes", "users")

    def __init__(self, document_id: str, *, max_stored: int = 1000, seq: int = 0) -> None:
        self.document_id = document_id
        self.seq = seq
        # dict order is join order: oldest first, as snapshots need.
        self.users: dict[str, UserPresence] = {}
        self.conns: dict[str, str] = {}  # connection id -> user id
        # Annotations and comments, oldest first; the oldest go when full (``max_stored``,
        # or what a shared store decided: see ``apply``).
        self.max_stored = max_stored
        self.stored: deque[bytes] = deque()
        self.stored_bytes = 0  # of ``stored``: what a memory budget counts

    def add_stored(self, frame: bytes, evict: int | None = None) -> None:
        """Append ``frame``; then drop the ``evict`` oldest (None: beyond ``max_stored``)."""
        stored = self.stored
        stored.append(frame)
        self.stored_bytes += len(frame)
        if evict is None:
            evict = len(stored) - self.max_stored
        for _ in range(min(evict, len(stored))):
            self.stored_bytes -= len(stored.popleft())

    def load_stored(self, frames: Iterable[bytes]) -> None:
        """Set the stored messages (oldest first) as a shared store recorded them."""
        self.stored.clear()
        self.stored.extend(frames)
        self.stored_bytes = sum(map(len, self.stored))

    @property
    def member_count(self) -> int:
        return len(self.conns)

    def is_empty(self) -> bool:
        """No members and nothing stored: nothing worth keeping."""
        return not self.conns and not self.stored

    def join_frame(self, user_id: str) -> bytes:
        user = self.users.get(user_id)
        if user is not None:
            return user.join_frame
        return encode(JoinDocument(document_id=self.document_id, user_id=user_id))

    def leave_frame(self, user_id: str) -> bytes:
        return encode(LeaveDocument(document_id=self.document_id, user_id=user_id))

    def snapshot(self, for_user: str) -> Iterator[bytes]:
        """CONTRACT §4 items 1 and 2: every other user with presence, then stored messages.

        The caller appends the joiner's own acknowledgement (item 3).
        """
        for user in self.users.values():
            if user.user_id == for_user:
                continue
            yield user.join_frame
            yield from user.presence.values()
        yield from self.stored

    def apply(self, event: Event, *, max_members: int, decided: int | None = None) -> Outcome:
        """Apply one event.

        ``decided`` is what a shared store (Redis) decided when it sequenced the event,
        so that every replica has the same outcome whatever its own configuration: for
        a ``Joined``, 1 if the document was full (0 if not); for a stored Annotation or
        Comment, how many of the oldest stored messages go once it is appended. None:
        decide here, with ``max_members`` and ``max_stored`` (one process is the truth).
        """
        self.seq += 1
        if type(event) is Relayed:
            return self._relay(event, decided)
        if type(event) is Joined:
            return self._join(event, max_members, decided)
        assert type(event) is Left
        return self._leave(event)

    def _join(self, event: Joined, max_members: int, decided: int | None) -> Outcome:
        if event.conn in self.conns:
            return Outcome.REJOINED
        full = len(self.conns) >= max_members if decided is None else decided == 1
        if full:
            return Outcome.REJECTED_FULL
        self.conns[event.conn] = event.user
        user = self.users.get(event.user)
        first = user is None
        if user is None:
            user = UserPresence(
                event.user,
                encode(JoinDocument(document_id=self.document_id, user_id=event.user)),
            )
            self.users[event.user] = user
        user.conns.add(event.conn)
        return Outcome.JOINED_FIRST if first else Outcome.JOINED_AGAIN

    def _leave(self, event: Left) -> Outcome:
        user_id = self.conns.pop(event.conn, None)
        if user_id is None:
            return Outcome.IGNORED
        user = self.users[user_id]
        user.conns.discard(event.conn)
        if user.conns:
            return Outcome.LEFT_OTHERS_REMAIN
        del self.users[user_id]
        return Outcome.LEFT_LAST

    def _relay(self, event: Relayed, decided: int | None) -> Outcome:
        if not event.conn:
            # From the server itself (the HTTP/Python API): stored kinds only, no membership.
            if event.kind not in STORED_KINDS:
                return Outcome.IGNORED
        elif self.conns.get(event.conn) != event.user:
            return Outcome.IGNORED
        if event.kind in STORED_KINDS:
            self.add_stored(event.frame, decided)
        else:
            self.users[event.user].set_presence(event.kind, event.frame)
        return Outcome.RELAYED

    # -- for backends that rebuild a replica from shared state ---------------

    def restore_user(
        self, user_id: str, conns: Iterable[str], presence: Iterable[tuple[str, bytes]]
    ) -> None:
        """Add a present user as a shared store recorded it (join order = call order)."""
        user = UserPresence(
            user_id, encode(JoinDocument(document_id=self.document_id, user_id=user_id))
        )
        for conn in conns:
            user.conns.add(conn)
            self.conns[conn] = user_id
        for kind, frame in presence:
            user.set_presence(kind, frame)
        self.users[user_id] = user
