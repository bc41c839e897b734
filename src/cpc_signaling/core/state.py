"""One document's state: who is present, their presence in force, stored messages.

Pure and deterministic: the same events applied in the same order give the same
state and the same outcomes on every instance. No clocks, no I/O.

Presence belongs to the connection that sent it. Each member connection keeps,
per kind, its latest presence message with the ``seq`` of the event that set it
(a PresenceUpdate drops that connection's earlier cursor, selection and typing).
A user's presence *in force* is the replay, in ``seq`` order, of the messages
kept by all of the user's remaining connections: per kind the latest, and a
PresenceUpdate supersedes earlier cursor, selection and typing messages of the
user. While a user's connections stay, that is exactly the per-user rule (latest
per kind, in the order received). When a connection leaves and the user stays,
what it set goes with it; :func:`presence_changes` says what the other members
must be sent so their view matches the new presence in force.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final

import msgspec

from ..protocol import JoinDocument, LeaveDocument, encode
from .events import Event, Joined, Left, Relayed

DEFAULT_MAX_STORED_BYTES: Final = 4 << 20

# Kinds a user has at most one of in force.
PRESENCE_KINDS: Final = frozenset(
    {"PresenceUpdate", "CursorUpdate", "SelectionUpdate", "TypingIndicator", "PresenceStatus"}
)
STORED_KINDS: Final = frozenset({"Annotation", "Comment"})
_SUPERSEDED: Final = frozenset({"CursorUpdate", "SelectionUpdate", "TypingIndicator"})
# A PresenceUpdate carries cursor, selection and typing: it supersedes those kinds.
_SUPERSEDED_BY: Final[dict[str, tuple[str, ...]]] = {
    "PresenceUpdate": ("CursorUpdate", "SelectionUpdate", "TypingIndicator"),
}
# What each presence kind sets in a client's view of the user.
_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "PresenceUpdate": ("cursor", "selection", "typing"),
    "CursorUpdate": ("cursor",),
    "SelectionUpdate": ("selection",),
    "TypingIndicator": ("typing",),
    "PresenceStatus": ("status",),
}


class _Authored(msgspec.Struct, gc=False):
    user_id: str = ""


_AUTHOR: Final = msgspec.json.Decoder(dict[str, _Authored])


def stored_author(frame: bytes) -> str:
    """The ``user_id`` of a stored Annotation or Comment frame ("" for a frame without one)."""
    try:
        (body,) = _AUTHOR.decode(frame).values()
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return ""
    return body.user_id


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


def join_frame(document_id: str, user_id: str, info: bytes = b"") -> bytes:
    """The ``JoinDocument`` frame about a user: with ``"info"`` last, only when there is
    info (``info`` is already canonical JSON, spliced in as it is)."""
    frame = encode(JoinDocument(document_id=document_id, user_id=user_id))
    if not info:
        return frame
    return frame[:-2] + b',"info":' + info + b"}}"


def replay(messages: Iterable[tuple[int, str, bytes]]) -> dict[str, bytes]:
    """Presence in force from (seq, kind, frame) messages: kind -> frame, in seq order.

    Per kind the latest counts; a PresenceUpdate drops earlier cursor, selection and
    typing messages. Equal seqs (a store that did not record them) keep their order.
    """
    in_force: dict[str, bytes] = {}
    for _, kind, frame in sorted(messages, key=_seq):
        for superseded in _SUPERSEDED_BY.get(kind, ()):
            in_force.pop(superseded, None)
        in_force.pop(kind, None)  # re-insert at the end: received last
        in_force[kind] = frame
    return in_force


def _seq(message: tuple[int, str, bytes]) -> int:
    return message[0]


def presence_changes(before: dict[str, bytes], after: dict[str, bytes]) -> list[bytes]:
    """The frames of ``after`` (presence in force, in order) to send to members whose
    view is ``before``, so that every field ``after`` sets reads as ``after`` says.

    A client's view of a user is four fields (cursor, selection, typing, status), each
    set by the last message carrying it. A frame of ``after`` is sent when it sets a
    field whose last setter differs from ``before``'s (compared by bytes); and since
    replaying a frame also resets its other fields, every later frame of ``after``
    that sets one of those is sent too. In ``after``'s order. A field nothing in
    ``after`` sets keeps what the client last saw: nothing is synthesized.
    """
    old, new = _setters(before), _setters(after)
    changed = {frame for field, frame in new.items() if old.get(field) != frame}
    frames: list[bytes] = []
    reset: set[str] = set()
    for kind, frame in after.items():
        fields = _FIELDS.get(kind, ())
        if frame in changed or not reset.isdisjoint(fields):
            frames.append(frame)
            reset.update(fields)
    return frames


def _setters(in_force: dict[str, bytes]) -> dict[str, bytes]:
    """field -> the frame that last set it."""
    return {field: frame for kind, frame in in_force.items() for field in _FIELDS.get(kind, ())}


class UserPresence:
    """A present user: its connections here and the presence messages each set.

    ``conns``: connection id -> {kind: (seq, frame)}, that connection's latest
    presence message of each kind (after its own PresenceUpdates superseded its
    earlier cursor, selection and typing). ``presence``: the user's presence in
    force (kind -> frame, in the order received), computed from ``conns``.

    ``info`` (canonical JSON, or empty) is fixed by the join that made the user
    present; ``join_frame`` is the ``JoinDocument`` others are sent about the user.
    """

    __slots__ = ("_in_force", "conns", "info", "join_frame", "user_id")

    def __init__(self, user_id: str, join_frame: bytes, info: bytes = b"") -> None:
        self.user_id = user_id
        self.join_frame = join_frame
        self.info = info
        self.conns: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._in_force: dict[str, bytes] | None = {}  # None: to compute again

    @property
    def presence(self) -> dict[str, bytes]:
        """The presence in force: kind -> frame, in the order the server received them."""
        in_force = self._in_force
        if in_force is None:
            in_force = self._in_force = replay(
                (seq, kind, frame)
                for messages in self.conns.values()
                for kind, (seq, frame) in messages.items()
            )
        return in_force

    def set_presence(self, conn: str, seq: int, kind: str, frame: bytes) -> None:
        """``conn`` (a connection of this user) set ``kind`` to ``frame`` at ``seq``, a seq
        above any it set before (events are applied in order): the hot path."""
        mine = self.conns[conn]
        superseded = _SUPERSEDED_BY.get(kind)
        if superseded is not None:
            for older in superseded:
                mine.pop(older, None)
        mine.pop(kind, None)  # re-insert at the end: set last
        mine[kind] = (seq, frame)
        self._in_force = None

    def restore_presence(self, conn: str, seq: int, kind: str, frame: bytes) -> None:
        """As :meth:`set_presence`, in any order: a message older than what ``conn``
        keeps for its kind, or than ``conn``'s PresenceUpdate for a kind that one
        supersedes, is dropped."""
        mine = self.conns[conn]
        held = mine.get(kind)
        if held is not None and held[0] > seq:
            return
        if kind in _SUPERSEDED:
            update = mine.get("PresenceUpdate")
            if update is not None and update[0] > seq:
                return
        for superseded in _SUPERSEDED_BY.get(kind, ()):
            older = mine.get(superseded)
            if older is not None and older[0] <= seq:
                del mine[superseded]
        mine.pop(kind, None)
        mine[kind] = (seq, frame)
        self._in_force = None

    def add_conn(self, conn: str) -> None:
        self.conns.setdefault(conn, {})

    def remove_conn(self, conn: str) -> bool:
        """Forget ``conn`` and what it set; True when the presence in force may change."""
        mine = self.conns.pop(conn, None)
        if mine:
            self._in_force = None
            return True
        return False


class DocumentState:
    """The replica of one document. ``seq`` is the last event applied.

    Stored messages (Annotation, Comment) are kept oldest first within two bounds,
    both applied in ``add_stored`` (so on every replica, whatever the backend):
    at most ``max_stored`` of them, and at most ``max_stored_bytes`` bytes of their
    frames (the encoded bytes every joiner is sent). A new message goes in at the
    end; then, while either bound is exceeded, the oldest goes. A single message
    larger than ``max_stored_bytes`` therefore goes at once: relayed, never stored.
    """

    __slots__ = (
        "conns",
        "document_id",
        "held",
        "max_stored",
        "max_stored_bytes",
        "reinstated",
        "seq",
        "stored",
        "stored_bytes",
        "users",
    )

    def __init__(
        self,
        document_id: str,
        *,
        max_stored: int = 1000,
        max_stored_bytes: int = DEFAULT_MAX_STORED_BYTES,
        seq: int = 0,
    ) -> None:
        self.document_id = document_id
        self.seq = seq
        # dict order is join order: oldest first, as snapshots need.
        self.users: dict[str, UserPresence] = {}
        self.conns: dict[str, str] = {}  # connection id -> user id
        # Annotations and comments, oldest first; the oldest go when full (the
        # bounds below, or what a shared store decided: see ``apply``).
        self.stored: deque[bytes] = deque()
        self.max_stored = max_stored
        self.max_stored_bytes = max_stored_bytes
        self.stored_bytes = 0  # of ``stored``: what the byte budgets count
        # author (the frame's user_id) -> bytes of ``stored`` they wrote: what a
        # fair share of a process-wide budget is measured by (Hub, memory backend).
        self.held: dict[str, int] = {}
        # Right after a Left with outcome LEFT_OTHERS_REMAIN: the leaving user's
        # presence frames the other members must be sent (``presence_changes``).
        self.reinstated: list[bytes] = []

    def add_stored(self, frame: bytes, evict: int | None = None) -> None:
        """Append a stored frame, then drop the oldest while a bound is exceeded; or,
        when a shared store decided how many of the oldest go (``evict``), that many."""
        stored = self.stored
        stored.append(frame)
        self._count(frame, len(frame))
        if evict is not None:
            for _ in range(min(evict, len(stored))):
                self._drop_oldest()
            return
        while stored and (
            len(stored) > self.max_stored or self.stored_bytes > self.max_stored_bytes
        ):
            self._drop_oldest()

    def load_stored(self, frames: Iterable[bytes], *, as_recorded: bool = False) -> None:
        """Set the stored messages (oldest first) as a shared store recorded them;
        the bounds apply as if they had been added one by one, unless ``as_recorded``
        (the store applied them: a replica keeps what the store keeps)."""
        self.stored.clear()
        self.stored_bytes = 0
        self.held = {}
        for frame in frames:
            self.add_stored(frame, 0 if as_recorded else None)

    def drop_oldest_by(self, author: str) -> int:
        """Drop the oldest stored message of ``author``; returns the bytes freed (0: none).

        Not an event: only for a backend whose replica is the only copy (memory),
        making room in a process-wide budget (``Hub``).
        """
        for index, frame in enumerate(self.stored):
            if stored_author(frame) == author:
                del self.stored[index]
                self._count(frame, -len(frame), author)
                return len(frame)
        return 0

    def _drop_oldest(self) -> None:
        frame = self.stored.popleft()
        self._count(frame, -len(frame))

    def _count(self, frame: bytes, nbytes: int, author: str | None = None) -> None:
        self.stored_bytes += nbytes
        if author is None:
            author = stored_author(frame)
        held = self.held.get(author, 0) + nbytes
        if held:
            self.held[author] = held
        else:
            self.held.pop(author, None)

    @property
    def member_count(self) -> int:
        return len(self.conns)

    def is_empty(self) -> bool:
        """No members and nothing stored: nothing worth keeping."""
        return not self.conns and not self.stored

    def join_frame(self, user_id: str) -> bytes:
        """The JoinDocument about ``user_id``: with the user's info in force, if present."""
        user = self.users.get(user_id)
        if user is not None:
            return user.join_frame
        return join_frame(self.document_id, user_id)

    def leave_frame(self, user_id: str) -> bytes:
        return encode(LeaveDocument(document_id=self.document_id, user_id=user_id))

    def snapshot(self, for_user: str) -> Iterator[bytes]:
        """Snapshot items 1 and 2 (docs/protocol.md): every other user with their presence
        in force, then the stored messages.

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
        decide here, with ``max_members`` and the stored bounds (this process is the
        truth: the memory backend, or Redis away).
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
            info = event.info
            user = UserPresence(event.user, join_frame(self.document_id, event.user, info), info)
            self.users[event.user] = user
        user.add_conn(event.conn)
        return Outcome.JOINED_FIRST if first else Outcome.JOINED_AGAIN

    def _leave(self, event: Left) -> Outcome:
        user_id = self.conns.pop(event.conn, None)
        if user_id is None:
            return Outcome.IGNORED
        user = self.users[user_id]
        self.reinstated = []
        if len(user.conns) > 1:
            before = user.presence
            if user.remove_conn(event.conn):
                self.reinstated = presence_changes(before, user.presence)
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
            self.users[event.user].set_presence(event.conn, self.seq, event.kind, event.frame)
        return Outcome.RELAYED

    # -- for backends that rebuild a replica from shared state ---------------

    def restore_user(
        self,
        user_id: str,
        conns: Iterable[str],
        presence: Iterable[tuple[str, bytes]] = (),
        *,
        info: bytes = b"",
    ) -> None:
        """Add a present user as a shared store recorded it (join order = call order).

        ``info``: the user's info in force (canonical JSON, or empty). Presence per
        connection, with seqs: :meth:`restore_presence`, after this call. ``presence``
        is for a store that keeps it per user only: (kind, frame) pairs in the order
        received, all attributed to the first of ``conns`` (seq 0).
        """
        user = UserPresence(user_id, join_frame(self.document_id, user_id, info), info)
        first = None
        for conn in conns:
            user.add_conn(conn)
            self.conns[conn] = user_id
            first = first or conn
        self.users[user_id] = user
        if first is not None:
            for kind, frame in presence:
                user.restore_presence(first, 0, kind, frame)

    def restore_presence(self, conn: str, seq: int, kind: str, frame: bytes) -> None:
        """Record that member connection ``conn`` set ``kind`` to ``frame`` with the event
        numbered ``seq`` (as a shared store recorded it; any order). Ignored for a
        connection that is not a member."""
        user_id = self.conns.get(conn)
        if user_id is not None:
            self.users[user_id].restore_presence(conn, seq, kind, frame)

    def connection_presence(self) -> Iterator[tuple[str, int, str, bytes]]:
        """(connection, seq, kind, frame) of every presence message kept: what a store
        records, and what :meth:`restore_presence` takes back."""
        for user in self.users.values():
            for conn, messages in user.conns.items():
                for kind, (seq, frame) in messages.items():
                    yield conn, seq, kind, frame
