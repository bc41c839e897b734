"""The core without an event loop: every rule of joining, presence and leaving, as state
transitions."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cpc_signaling.core import (
    Connection,
    DocumentState,
    Hub,
    Joined,
    Left,
    Limits,
    Outcome,
    Send,
)
from cpc_signaling.core.state import presence_changes, replay, stored_author
from cpc_signaling.protocol import (
    Annotation,
    Comment,
    CursorUpdate,
    Decoder,
    DocumentMessage,
    Error,
    ErrorCode,
    JoinDocument,
    LeaveDocument,
    Message,
    Position,
    PresenceStatus,
    PresenceUpdate,
    ProtocolError,
    Selection,
    SelectionUpdate,
    TypingIndicator,
    encode,
)

DOC = "d0000000-0000-4000-8000-000000000000"
DOC2 = "d0000000-0000-4000-8000-000000000002"
ALICE = "a0000000-0000-4000-8000-000000000000"
BOB = "b0000000-0000-4000-8000-000000000000"
CAROL = "c0000000-0000-4000-8000-000000000000"
TS = "2023-01-01T00:00:00Z"
_decoder = Decoder(accept_errors=True)


class World:
    """A hub with the memory backend's behaviour: every event applied at once."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.hub: Hub[str] = Hub(instance_id="i", limits=limits)
        self.inbox: dict[str, list[Message]] = {}
        self.conns: dict[str, Connection[str]] = {}

    def connect(
        self, name: str, user: str | None = None, info: bytes | None = None
    ) -> Connection[str]:
        conn = self.hub.connect(name, user_id=user, info=info)
        self.conns[name] = conn
        self.inbox[name] = []
        return conn

    def send(self, name: str, message: DocumentMessage) -> None:
        doc, event = self.hub.receive(self.conns[name], message)
        self._deliver(self.hub.apply(doc, event))

    def close(self, name: str) -> None:
        for doc, event in self.hub.disconnect(self.conns[name]):
            self._deliver(self.hub.apply(doc, event))

    def _deliver(self, sends: list[Send[str]]) -> None:
        for send in sends:
            for peer in send.peers:
                self.inbox[peer].extend(_decoder.decode(f) for f in send.frames)

    def take(self, name: str) -> list[Message]:
        got, self.inbox[name] = self.inbox[name], []
        return got


def join(doc: str, user: str) -> JoinDocument:
    return JoinDocument(document_id=doc, user_id=user)


def leave(doc: str, user: str) -> LeaveDocument:
    return LeaveDocument(document_id=doc, user_id=user)


def cursor(doc: str, user: str, line: int, col: int = 0) -> CursorUpdate:
    return CursorUpdate(
        document_id=doc, user_id=user, position=Position(line=line, column=col), timestamp=TS
    )


def selection(doc: str, user: str, line: int) -> SelectionUpdate:
    span = Selection(start=Position(line=line, column=0), end=Position(line=line, column=5))
    return SelectionUpdate(document_id=doc, user_id=user, selection=span, timestamp=TS)


def typing(doc: str, user: str, on: bool = True) -> TypingIndicator:
    return TypingIndicator(document_id=doc, user_id=user, is_typing=on, timestamp=TS)


def presence(doc: str, user: str, line: int) -> PresenceUpdate:
    span = Selection(start=Position(line=line, column=0), end=Position(line=line, column=1))
    return PresenceUpdate(
        document_id=doc,
        user_id=user,
        cursor=Position(line=line, column=0),
        selection=span,
        is_typing=False,
        timestamp=TS,
    )


def status(doc: str, user: str, value: str) -> PresenceStatus:
    return PresenceStatus(document_id=doc, user_id=user, status=value, timestamp=TS)


def comment(doc: str, user: str, text: str) -> Comment:
    return Comment(
        document_id=doc,
        user_id=user,
        position=Position(line=0, column=0),
        content=text,
        timestamp=TS,
    )


def annotation(doc: str, user: str, text: str) -> Annotation:
    return Annotation(
        document_id=doc,
        user_id=user,
        position=Position(line=1, column=2),
        content=text,
        timestamp=TS,
    )


def test_first_join_snapshot_is_just_the_ack() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    assert w.take("a") == [join(DOC, ALICE)]


def test_snapshot_order_users_oldest_first_then_stored_then_ack() -> None:
    w = World()
    for name, user in (("a", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    w.send("a", cursor(DOC, ALICE, 1))
    w.send("b", status(DOC, BOB, "away"))
    w.send("a", comment(DOC, ALICE, "first"))
    w.send("b", annotation(DOC, BOB, "second"))
    w.send("a", selection(DOC, ALICE, 2))
    w.connect("c")
    w.send("c", join(DOC, CAROL))
    assert w.take("c") == [
        join(DOC, ALICE),
        cursor(DOC, ALICE, 1),
        selection(DOC, ALICE, 2),
        join(DOC, BOB),
        status(DOC, BOB, "away"),
        comment(DOC, ALICE, "first"),
        annotation(DOC, BOB, "second"),
        join(DOC, CAROL),
    ]


def test_presence_latest_per_kind_in_receive_order() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    w.send("a", cursor(DOC, ALICE, 1))
    w.send("a", typing(DOC, ALICE, True))
    w.send("a", cursor(DOC, ALICE, 7))
    w.connect("b")
    w.send("b", join(DOC, BOB))
    assert w.take("b") == [
        join(DOC, ALICE),
        typing(DOC, ALICE, True),
        cursor(DOC, ALICE, 7),
        join(DOC, BOB),
    ]


def test_presence_update_supersedes_cursor_selection_typing_not_status() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    w.send("a", status(DOC, ALICE, "busy"))
    w.send("a", cursor(DOC, ALICE, 1))
    w.send("a", selection(DOC, ALICE, 1))
    w.send("a", typing(DOC, ALICE))
    w.send("a", presence(DOC, ALICE, 9))
    w.send("a", cursor(DOC, ALICE, 10))
    w.connect("b")
    w.send("b", join(DOC, BOB))
    assert w.take("b") == [
        join(DOC, ALICE),
        status(DOC, ALICE, "busy"),
        presence(DOC, ALICE, 9),
        cursor(DOC, ALICE, 10),
        join(DOC, BOB),
    ]


def test_relay_reaches_every_other_member_connection_never_the_sender() -> None:
    w = World()
    for name, user in (("a1", ALICE), ("a2", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    for name in w.inbox:
        w.take(name)
    w.send("a1", cursor(DOC, ALICE, 3))
    assert w.take("a1") == []
    assert w.take("a2") == [cursor(DOC, ALICE, 3)]  # the same user's other tab gets it
    assert w.take("b") == [cursor(DOC, ALICE, 3)]


def test_per_sender_order_kept() -> None:
    w = World()
    for name, user in (("a", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    w.take("b")
    for line in range(50):
        w.send("a", cursor(DOC, ALICE, line))
    assert w.take("b") == [cursor(DOC, ALICE, line) for line in range(50)]


def test_multi_connection_user_announced_once_and_leaves_once() -> None:
    w = World()
    w.connect("b")
    w.send("b", join(DOC, BOB))
    w.take("b")
    w.connect("a1")
    w.send("a1", join(DOC, ALICE))
    w.connect("a2")
    w.send("a2", join(DOC, ALICE))
    a2_snapshot = w.take("a2")
    # The joiner's own user is excluded from its snapshot even with another tab present.
    assert a2_snapshot == [join(DOC, BOB), join(DOC, ALICE)]
    assert w.take("b") == [join(DOC, ALICE)]  # once, not twice
    assert w.take("a1") == [join(DOC, BOB), join(DOC, ALICE)]  # its snapshot, no second join
    w.send("a1", leave(DOC, ALICE))
    assert w.take("a1") == [leave(DOC, ALICE)]  # the acknowledgement
    assert w.take("b") == []  # Alice is still here through a2
    w.close("a2")
    assert w.take("b") == [leave(DOC, ALICE)]
    assert w.hub.present_users(DOC) == [BOB]


def test_leave_removes_presence_but_keeps_annotations_and_comments() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    w.send("a", cursor(DOC, ALICE, 4))
    w.send("a", comment(DOC, ALICE, "stays"))
    w.send("a", leave(DOC, ALICE))
    w.connect("b")
    w.send("b", join(DOC, BOB))
    assert w.take("b") == [comment(DOC, ALICE, "stays"), join(DOC, BOB)]


def test_disconnect_is_a_leave_of_every_document() -> None:
    w = World()
    w.connect("a")
    w.connect("b")
    for doc in (DOC, DOC2):
        w.send("a", join(doc, ALICE))
        w.send("b", join(doc, BOB))
    w.take("b")
    w.close("a")
    assert sorted(m.document_id for m in w.take("b") if isinstance(m, LeaveDocument)) == sorted(
        [DOC, DOC2]
    )
    assert w.hub.present_users(DOC) == [BOB] == w.hub.present_users(DOC2)


def test_repeated_join_resends_snapshot_and_tells_nobody() -> None:
    w = World()
    for name, user in (("a", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    w.send("a", cursor(DOC, ALICE, 2))
    w.take("a")
    w.take("b")
    w.send("b", join(DOC, BOB))
    assert w.take("b") == [join(DOC, ALICE), cursor(DOC, ALICE, 2), join(DOC, BOB)]
    assert w.take("a") == []


def test_message_for_unjoined_document_is_document_error_and_changes_nothing() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    with pytest.raises(ProtocolError) as info:
        w.send("a", cursor(DOC2, ALICE, 1))
    assert info.value.code == ErrorCode.DOCUMENT_ERROR
    with pytest.raises(ProtocolError) as info:
        w.send("a", leave(DOC2, ALICE))
    assert info.value.code == ErrorCode.DOCUMENT_ERROR
    assert DOC2 not in w.hub.documents


def test_unbound_connection_must_join_first() -> None:
    w = World()
    w.connect("a")
    with pytest.raises(ProtocolError) as info:
        w.send("a", cursor(DOC, ALICE, 1))
    assert info.value.code == ErrorCode.DOCUMENT_ERROR
    assert w.conns["a"].user_id is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: join(DOC2, BOB),
        lambda: leave(DOC, BOB),
        lambda: cursor(DOC, BOB, 1),
        lambda: selection(DOC, BOB, 1),
        lambda: typing(DOC, BOB),
        lambda: presence(DOC, BOB, 1),
        lambda: status(DOC, BOB, "away"),
        lambda: comment(DOC, BOB, "x"),
        lambda: annotation(DOC, BOB, "x"),
    ],
)
def test_nobody_speaks_for_someone_else(make: object) -> None:
    w = World()
    w.connect("a")
    w.connect("b")
    w.send("a", join(DOC, ALICE))
    w.send("b", join(DOC, BOB))
    w.take("b")
    before = msgspec.json.encode(sorted(w.hub.documents[DOC].conns.items()))
    with pytest.raises(ProtocolError) as info:
        w.send("a", make())  # type: ignore[operator]
    assert info.value.code == ErrorCode.AUTH_ERROR
    assert w.take("b") == []
    assert msgspec.json.encode(sorted(w.hub.documents[DOC].conns.items())) == before


def test_token_bound_user_and_documents_claim() -> None:
    hub: Hub[str] = Hub(instance_id="i")
    conn = hub.connect("a", user_id=ALICE, allowed_documents=frozenset({DOC}))
    hub.apply(*hub.receive(conn, join(DOC, ALICE)))
    with pytest.raises(ProtocolError) as info:
        hub.receive(conn, join(DOC2, ALICE))
    assert info.value.code == ErrorCode.AUTH_ERROR
    assert conn.joined == {DOC}


def test_documents_per_connection_limit() -> None:
    w = World(Limits(max_documents_per_connection=2))
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    w.send("a", join(DOC2, ALICE))
    third = "e0000000-0000-4000-8000-000000000000"
    with pytest.raises(ProtocolError) as info:
        w.send("a", join(third, ALICE))
    assert info.value.code == ErrorCode.DOCUMENT_ERROR
    assert third in info.value.message
    w.send("a", join(DOC, ALICE))  # re-joining a held document is fine


def test_full_document_refuses_with_document_error() -> None:
    w = World(Limits(max_members_per_document=2))
    for name, user in (("a", ALICE), ("b", BOB), ("c", CAROL)):
        w.connect(name)
        w.send(name, join(DOC, user))
    assert w.take("c") == [
        Error(code=ErrorCode.DOCUMENT_ERROR, message=f"document {DOC} is full (2 members)")
    ]
    assert w.hub.present_users(DOC) == [ALICE, BOB]
    assert DOC not in w.conns["c"].joined
    assert join(DOC, CAROL) not in w.take("a")
    with pytest.raises(ProtocolError):
        w.send("c", cursor(DOC, CAROL, 1))


def test_stored_messages_bounded_oldest_dropped() -> None:
    w = World(Limits(max_stored_per_document=3))
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    for i in range(5):
        w.send("a", comment(DOC, ALICE, f"c{i}"))
    w.connect("b")
    w.send("b", join(DOC, BOB))
    got = w.take("b")
    assert [m.content for m in got if isinstance(m, Comment)] == ["c2", "c3", "c4"]


def test_idle_documents_bounded_least_recently_active_dropped() -> None:
    w = World(Limits(max_documents=2))
    w.connect("a")
    docs = [f"d0000000-0000-4000-8000-00000000001{i}" for i in range(3)]
    for doc in docs:
        w.send("a", join(doc, ALICE))
        w.send("a", comment(doc, ALICE, doc))
        w.send("a", leave(doc, ALICE))
    assert set(w.hub.documents) == set(docs[1:])
    w.send("a", join(docs[0], ALICE))
    assert w.take("a")[-1] == join(docs[0], ALICE)


def test_documents_without_members_or_messages_are_forgotten() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    w.send("a", cursor(DOC, ALICE, 1))
    w.close("a")
    assert w.hub.documents == {}
    assert w.hub.local_members == {}
    assert w.hub.connections == {}


def test_server_published_comment_is_stored_and_relayed_to_all() -> None:
    w = World()
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    w.take("a")
    msg = comment(DOC, BOB, "from the API")
    w._deliver(w.hub.apply(*w.hub.publish(msg)))
    assert w.take("a") == [msg]
    w.connect("b")
    w.send("b", join(DOC, CAROL))
    assert msg in w.take("b")


def test_leave_sent_while_a_refused_join_was_in_flight_is_still_acknowledged() -> None:
    w = World(Limits(max_members_per_document=1))
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    c = w.connect("c")
    # A shared backend: both events are accepted before either is applied.
    joined = w.hub.receive(c, join(DOC, CAROL))
    left = w.hub.receive(c, leave(DOC, CAROL))
    w._deliver(w.hub.apply(*joined))
    w._deliver(w.hub.apply(*left))
    # No error for a join the client already abandoned, but its leave is acknowledged.
    assert w.take("c") == [leave(DOC, CAROL)]
    assert w.hub.present_users(DOC) == [ALICE]


def test_stored_bytes_budget_drops_idle_documents_then_refuses() -> None:
    frame_size = len(encode(comment(DOC, ALICE, "x" * 100)))
    w = World(Limits(max_stored_bytes=3 * frame_size))
    w.connect("a")
    idle = "e0000000-0000-4000-8000-000000000001"
    w.send("a", join(idle, ALICE))
    w.send("a", comment(idle, ALICE, "x" * 100))
    w.send("a", leave(idle, ALICE))
    w.send("a", join(DOC, ALICE))
    w.send("a", comment(DOC, ALICE, "x" * 100))
    w.send("a", comment(DOC, ALICE, "x" * 100))
    assert w.hub.stored_bytes == 3 * frame_size
    w.send("a", comment(DOC, ALICE, "x" * 100))  # room made: the idle document goes
    assert idle not in w.hub.documents
    assert w.hub.stored_bytes == 3 * frame_size
    with pytest.raises(ProtocolError) as info:  # nothing idle left to drop
        w.send("a", comment(DOC, ALICE, "x" * 100))
    assert info.value.code == ErrorCode.CONNECTION_ERROR
    w.send("a", cursor(DOC, ALICE, 1))  # presence is not stored: unaffected
    w.close("a")
    assert w.hub.stored_bytes == 3 * frame_size  # the document stays for its comments


def test_stored_bytes_follow_the_per_document_bound() -> None:
    w = World(Limits(max_stored_per_document=2))
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    for i in range(5):
        w.send("a", comment(DOC, ALICE, f"c{i}"))
    state = w.hub.documents[DOC]
    assert state.stored_bytes == sum(map(len, state.stored)) == w.hub.stored_bytes


def ledger_is_consistent(hub: Hub[str]) -> None:
    """Per-author totals add up to what the documents hold."""
    per_author: dict[str, int] = {}
    for state in hub.documents.values():
        assert state.stored_bytes == sum(map(len, state.stored)) == sum(state.held.values())
        for author, n in state.held.items():
            per_author[author] = per_author.get(author, 0) + n
    assert per_author == hub.held
    assert sum(per_author.values()) == hub.stored_bytes


def test_stored_bytes_per_document_budget_drops_the_oldest() -> None:
    size = len(encode(comment(DOC, ALICE, "c0" + "x" * 100)))
    w = World(Limits(max_stored_bytes_per_document=3 * size + 10))
    w.connect("a")
    w.send("a", join(DOC, ALICE))
    for i in range(6):
        w.send("a", comment(DOC, ALICE, f"c{i}" + "x" * 100))
    state = w.hub.documents[DOC]
    assert [stored_author(f) for f in state.stored] == [ALICE] * 3
    assert state.stored_bytes == 3 * size == w.hub.stored_bytes
    w.connect("b")
    w.send("b", join(DOC, BOB))
    assert [m.content[:2] for m in w.take("b") if isinstance(m, Comment)] == ["c3", "c4", "c5"]
    ledger_is_consistent(w.hub)


def test_a_message_larger_than_the_document_budget_is_relayed_not_stored() -> None:
    w = World(Limits(max_stored_bytes_per_document=100))
    for name, user in (("a", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    w.send("a", comment(DOC, ALICE, "small"))
    w.take("b")
    big = comment(DOC, ALICE, "x" * 200)
    w.send("a", big)
    assert w.take("b") == [big]
    state = w.hub.documents[DOC]
    assert list(state.stored) == [] and state.stored_bytes == 0 == w.hub.stored_bytes


def test_load_stored_applies_both_bounds_oldest_first() -> None:
    frames = [encode(comment(DOC, ALICE if i % 2 else BOB, f"c{i}")) for i in range(10)]
    state = DocumentState(DOC, max_stored=5, max_stored_bytes=3 * len(frames[0]))
    state.load_stored(frames)
    assert list(state.stored) == frames[7:]
    assert state.held == {ALICE: 2 * len(frames[0]), BOB: len(frames[0])}
    state = DocumentState(DOC, max_stored=4)
    state.load_stored(frames)
    assert list(state.stored) == frames[6:]


def test_drop_oldest_by_removes_only_that_authors_oldest() -> None:
    state = DocumentState(DOC)
    frames = [encode(comment(DOC, user, text)) for user, text in
              ((BOB, "b0"), (ALICE, "a0"), (BOB, "b1"), (ALICE, "a1"))]  # fmt: skip
    state.load_stored(frames)
    assert state.drop_oldest_by(ALICE) == len(frames[1])
    assert list(state.stored) == [frames[0], frames[2], frames[3]]
    assert state.drop_oldest_by(CAROL) == 0
    assert state.held == {BOB: len(frames[0]) + len(frames[2]), ALICE: len(frames[3])}


def test_full_store_refuses_whoever_is_over_a_fair_share_and_makes_room_for_the_others() -> None:
    size = len(encode(comment(DOC, ALICE, "x" * 100)))
    w = World(Limits(max_stored_bytes=10 * size))
    for name, user, doc in (("m", ALICE, DOC), ("b", BOB, DOC2), ("c", CAROL, DOC2)):
        w.connect(name)
        w.send(name, join(doc, user))
    for i in range(10):  # Alice (the flooder here) fills the store
        w.send("m", comment(DOC, ALICE, f"{i:02d}" + "x" * 98))
    with pytest.raises(ProtocolError) as info:  # alone, her share is the whole store
        w.send("m", comment(DOC, ALICE, "x" * 100))
    assert info.value.code == ErrorCode.CONNECTION_ERROR
    assert "fair share" in info.value.message
    # Bob holds nothing: within his share (half the store). Alice's oldest makes room.
    w.send("b", comment(DOC2, BOB, "b" * 100))
    assert w.hub.stored_bytes == 10 * size
    assert w.hub.held == {ALICE: 9 * size, BOB: size}
    assert _decoder.decode(w.hub.documents[DOC].stored[0]) == comment(DOC, ALICE, "01" + "x" * 98)
    # Alice stays refused while over her share (10 / 2 users = 5 messages' worth) ...
    with pytest.raises(ProtocolError):
        w.send("m", comment(DOC, ALICE, "x" * 100))
    # ... while Bob and Carol may post up to theirs, displacing Alice's oldest.
    for _ in range(2):
        w.send("b", comment(DOC2, BOB, "b" * 100))
    for _ in range(3):
        w.send("c", comment(DOC2, CAROL, "c" * 100))
    assert w.hub.held == {ALICE: 4 * size, BOB: 3 * size, CAROL: 3 * size}
    ledger_is_consistent(w.hub)
    # Carol's share is now 10 / 3 users = 3.33 messages: her fourth is refused.
    with pytest.raises(ProtocolError) as info:
        w.send("c", comment(DOC2, CAROL, "c" * 100))
    assert "fair share" in info.value.message
    w.take("b")
    w.connect("late")
    w.send("late", join(DOC, CAROL))
    kept = [m.content[:2] for m in w.take("late") if isinstance(m, Comment)]
    assert kept == ["06", "07", "08", "09"]  # Alice's newest four: the oldest went first
    ledger_is_consistent(w.hub)


def test_the_ledger_follows_dropped_idle_documents() -> None:
    size = len(encode(comment(DOC, ALICE, "x" * 100)))
    w = World(Limits(max_stored_bytes=4 * size))
    w.connect("a")
    w.connect("b")
    w.send("a", join(DOC, ALICE))
    for _ in range(3):
        w.send("a", comment(DOC, ALICE, "x" * 100))
    w.close("a")  # DOC is idle now
    w.send("b", join(DOC2, BOB))
    w.send("b", comment(DOC2, BOB, "x" * 100))
    w.send("b", comment(DOC2, BOB, "x" * 100))  # the idle document goes first
    assert DOC not in w.hub.documents
    assert w.hub.held == {BOB: 2 * size}
    ledger_is_consistent(w.hub)


# -- user info ---------------------------------------------------------------------------


ADA = {"name": "Ada", "color": "#e91e63"}
ADA_BYTES = b'{"color":"#e91e63","name":"Ada"}'  # canonical: compact, keys sorted


def join_with(doc: str, user: str, info: dict[str, Any] | None) -> JoinDocument:
    return JoinDocument(document_id=doc, user_id=user, info=info)


def test_info_rides_on_every_join_frame_about_the_user_and_the_ack() -> None:
    w = World()
    w.connect("b")
    w.send("b", join(DOC, BOB))
    w.take("b")
    w.connect("a")
    w.send("a", join_with(DOC, ALICE, ADA))
    assert w.take("a") == [join(DOC, BOB), join_with(DOC, ALICE, ADA)]  # the ack has it
    assert w.take("b") == [join_with(DOC, ALICE, ADA)]  # the announcement has it
    w.connect("c")
    w.send("c", join(DOC, CAROL))
    assert w.take("c") == [join(DOC, BOB), join_with(DOC, ALICE, ADA), join(DOC, CAROL)]
    state = w.hub.documents[DOC]
    assert state.users[ALICE].info == ADA_BYTES
    assert state.users[ALICE].join_frame == (
        b'{"JoinDocument":{"document_id":"%s","user_id":"%s","info":%s}}'
        % (DOC.encode(), ALICE.encode(), ADA_BYTES)
    )
    # A user without info: the seed's frame, byte for byte (no "info" key at all).
    assert state.users[BOB].join_frame == (
        b'{"JoinDocument":{"document_id":"%s","user_id":"%s"}}' % (DOC.encode(), BOB.encode())
    )


def test_info_is_fixed_by_the_join_that_made_the_user_present() -> None:
    w = World()
    w.connect("b")
    w.send("b", join(DOC, BOB))
    w.connect("a1")
    w.send("a1", join_with(DOC, ALICE, ADA))
    w.connect("a2")
    w.send("a2", join_with(DOC, ALICE, {"name": "Someone else"}))  # a second tab: ignored
    assert w.take("a2")[-1] == join_with(DOC, ALICE, ADA)  # its ack says what others see
    w.send("a1", join_with(DOC, ALICE, {"name": "Again"}))  # a repeated join: ignored too
    assert w.take("a1")[-1] == join_with(DOC, ALICE, ADA)
    w.close("a1")
    w.close("a2")
    w.take("b")
    w.connect("a3")  # Alice left entirely: her next first join sets it anew
    w.send("a3", join_with(DOC, ALICE, {"name": "Ada L."}))
    assert w.take("b") == [join_with(DOC, ALICE, {"name": "Ada L."})]


def test_a_token_info_wins_even_when_it_has_none() -> None:
    w = World()
    with_info = w.connect("a", ALICE, info=ADA_BYTES)
    w.connect("b", BOB, info=b"")
    doc, event = w.hub.receive(with_info, join_with(DOC, ALICE, {"name": "Mallory"}))
    assert event == Joined(with_info.id, ALICE, ADA_BYTES)
    w._deliver(w.hub.apply(doc, event))
    assert w.take("a") == [join_with(DOC, ALICE, ADA)]
    w.send("b", join_with(DOC, BOB, {"name": "Mallory"}))
    assert w.take("b") == [join_with(DOC, ALICE, ADA), join(DOC, BOB)]
    assert w.take("a") == [join(DOC, BOB)]


def test_bad_info_from_python_is_a_parse_error_and_binds_nothing() -> None:
    w = World()
    conn = w.connect("a")
    for bad in ({"x": "y" * 2000}, {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {
            "j": {"k": {"l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}}}}}}}}}}):  # fmt: skip
        with pytest.raises(ProtocolError) as info:
            w.send("a", join_with(DOC, ALICE, bad))
        assert info.value.code == ErrorCode.PARSE_ERROR
        assert "JoinDocument.info" in info.value.message
    assert conn.user_id is None and not conn.joined
    w.send("a", join(DOC, BOB))  # still free to join as anyone (open mode)
    assert conn.user_id == BOB


def test_restored_users_keep_their_info() -> None:
    state = DocumentState(DOC)
    state.restore_user(ALICE, ["i/1"], info=ADA_BYTES)
    state.restore_user(BOB, ["i/2"])
    frames = list(state.snapshot(CAROL))
    assert [_decoder.decode(f) for f in frames] == [join_with(DOC, ALICE, ADA), join(DOC, BOB)]
    assert frames[0].endswith(b',"info":' + ADA_BYTES + b"}}")


# -- presence per connection -------------------------------------------------------------


def two_tabs_and_bob() -> World:
    w = World()
    for name, user in (("a1", ALICE), ("a2", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    for name in ("a1", "a2", "b"):
        w.take(name)
    return w


def test_a_closed_tabs_presence_goes_and_the_others_get_what_is_in_force() -> None:
    w = two_tabs_and_bob()
    w.send("a1", cursor(DOC, ALICE, 1))
    w.send("a1", selection(DOC, ALICE, 1))
    w.send("a2", cursor(DOC, ALICE, 2))  # the tab that moved last
    w.take("b")
    w.take("a1")
    w.close("a2")
    assert w.take("b") == [cursor(DOC, ALICE, 1)]  # the selection did not change: not sent
    assert w.take("a1") == []  # nobody is told about their own user
    w.connect("c")
    w.send("c", join(DOC, CAROL))
    assert w.take("c") == [
        join(DOC, ALICE),
        cursor(DOC, ALICE, 1),
        selection(DOC, ALICE, 1),
        join(DOC, BOB),
        join(DOC, CAROL),
    ]


def test_an_explicit_leave_of_one_tab_is_the_same() -> None:
    w = two_tabs_and_bob()
    w.send("a1", status(DOC, ALICE, "online"))
    w.send("a2", status(DOC, ALICE, "away"))
    w.take("b")
    w.take("a2")
    w.send("a2", leave(DOC, ALICE))
    assert w.take("a2") == [leave(DOC, ALICE)]
    assert w.take("b") == [status(DOC, ALICE, "online")]


def test_a_presence_update_in_force_again_is_sent_with_what_follows_it() -> None:
    w = two_tabs_and_bob()
    w.send("a1", presence(DOC, ALICE, 5))
    w.send("a2", typing(DOC, ALICE, True))
    w.send("a1", cursor(DOC, ALICE, 6))
    w.take("b")
    w.close("a2")
    # The typing flag in force is the PresenceUpdate's again; re-sending it resets the
    # cursor too, so the later cursor (unchanged itself) follows.
    assert w.take("b") == [presence(DOC, ALICE, 5), cursor(DOC, ALICE, 6)]


def test_nothing_is_sent_when_the_leaving_tab_changed_nothing_in_force() -> None:
    w = two_tabs_and_bob()
    w.send("a2", cursor(DOC, ALICE, 1))
    w.send("a1", cursor(DOC, ALICE, 2))  # a1 overrides what a2 set
    w.take("b")
    w.close("a2")
    assert w.take("b") == []
    w.connect("a3")
    w.send("a3", join(DOC, ALICE))
    w.close("a3")  # a tab that never set presence
    assert w.take("b") == []


def test_a_kind_nobody_remaining_set_is_not_synthesized() -> None:
    w = two_tabs_and_bob()
    w.send("a1", cursor(DOC, ALICE, 1))
    w.send("a2", status(DOC, ALICE, "busy"))
    w.take("b")
    w.close("a2")
    assert w.take("b") == []  # Bob keeps "busy" as he last saw it (documented)
    w.connect("c")
    w.send("c", join(DOC, CAROL))
    assert status(DOC, ALICE, "busy") not in w.take("c")  # a late joiner never sees it


def test_the_last_connection_leaving_announces_the_leave_only() -> None:
    w = two_tabs_and_bob()
    w.send("a1", cursor(DOC, ALICE, 1))
    w.send("a2", cursor(DOC, ALICE, 2))
    w.take("b")
    w.close("a2")
    w.take("b")
    w.close("a1")
    assert w.take("b") == [leave(DOC, ALICE)]


def framed(kind: str, n: int) -> bytes:
    return f"{kind}:{n}".encode()


def test_presence_changes_per_field() -> None:
    pu, cur, sel, typ, st_ = (framed(k, 0) for k in ("PU", "C", "S", "T", "St"))
    cur2 = framed("C", 2)

    def in_force(*pairs: tuple[str, bytes]) -> dict[str, bytes]:
        return dict(pairs)

    # Same in force: nothing.
    same = in_force(("CursorUpdate", cur), ("PresenceStatus", st_))
    assert presence_changes(same, dict(same)) == []
    # A field's setter changed: that frame.
    assert presence_changes(in_force(("CursorUpdate", cur2)), in_force(("CursorUpdate", cur))) == [
        cur
    ]
    # Identical bytes from another connection: nothing to tell.
    assert presence_changes(in_force(("CursorUpdate", cur)), in_force(("CursorUpdate", cur))) == []
    # The PresenceUpdate sets the cursor again (the later cursor that had overridden it is
    # gone): it is sent, and the later frames it would reset follow it.
    before = in_force(("PresenceUpdate", pu), ("CursorUpdate", cur2), ("TypingIndicator", typ))
    after = in_force(("PresenceUpdate", pu), ("TypingIndicator", typ))
    assert presence_changes(before, after) == [pu, typ]
    # Status is independent of the rest.
    before = in_force(("SelectionUpdate", sel), ("PresenceStatus", framed("St", 1)))
    after = in_force(("SelectionUpdate", sel), ("PresenceStatus", st_))
    assert presence_changes(before, after) == [st_]
    # A field nobody sets any more: nothing synthesized.
    assert presence_changes(in_force(("PresenceStatus", st_)), {}) == []


def test_replay_is_latest_per_kind_in_seq_order_and_presence_update_supersedes() -> None:
    assert replay(
        [(3, "CursorUpdate", b"c3"), (1, "PresenceStatus", b"s1"), (2, "CursorUpdate", b"c2")]
    ) == {
        "PresenceStatus": b"s1",
        "CursorUpdate": b"c3",
    }
    assert list(
        replay(
            [(1, "CursorUpdate", b"c"), (2, "PresenceUpdate", b"p"), (3, "TypingIndicator", b"t")]
        ).items()
    ) == [
        ("PresenceUpdate", b"p"),
        ("TypingIndicator", b"t"),
    ]


def test_per_connection_presence_round_trips_through_restore_in_any_order() -> None:
    w = two_tabs_and_bob()
    w.send("a1", cursor(DOC, ALICE, 1))
    w.send("a2", presence(DOC, ALICE, 2))
    w.send("a1", typing(DOC, ALICE))
    w.send("a2", cursor(DOC, ALICE, 3))
    w.send("b", status(DOC, BOB, "away"))
    source = w.hub.documents[DOC]
    recorded = list(source.connection_presence())
    assert sorted((c.split("/")[1], seq, kind) for c, seq, kind, _ in recorded) == [
        ("1", 4, "CursorUpdate"),  # seqs 1 to 3: the joins
        ("1", 6, "TypingIndicator"),
        ("2", 5, "PresenceUpdate"),
        ("2", 7, "CursorUpdate"),
        ("3", 8, "PresenceStatus"),
    ]
    copy = DocumentState(DOC, seq=source.seq)
    for user in source.users.values():
        copy.restore_user(user.user_id, sorted(user.conns), info=user.info)
    for item in reversed(recorded):  # any order
        copy.restore_presence(*item)
    copy.restore_presence("i/99", 12, "CursorUpdate", b"not a member")  # ignored
    for user_id, user in source.users.items():
        assert copy.users[user_id].conns == user.conns
        assert list(copy.users[user_id].presence.items()) == list(user.presence.items())
    # Then both apply the same leave and agree on what the others are told.
    a2 = w.conns["a2"].id
    assert source.apply(Left(a2, ALICE), max_members=10) is Outcome.LEFT_OTHERS_REMAIN
    assert copy.apply(Left(a2, ALICE), max_members=10) is Outcome.LEFT_OTHERS_REMAIN
    # (Typing is a1's already in force; the selection only a2 set stays as last seen.)
    assert source.reinstated == copy.reinstated == [encode(cursor(DOC, ALICE, 1))]


def test_restore_presence_drops_what_a_later_message_superseded() -> None:
    state = DocumentState(DOC)
    state.restore_user(ALICE, ["i/1"])
    state.restore_presence("i/1", 5, "PresenceUpdate", b"p5")
    state.restore_presence("i/1", 3, "CursorUpdate", b"c3")  # older than the update: gone
    state.restore_presence("i/1", 4, "PresenceUpdate", b"p4")  # older than p5: gone
    state.restore_presence("i/1", 6, "SelectionUpdate", b"s6")
    assert list(state.users[ALICE].presence.items()) == [
        ("PresenceUpdate", b"p5"),
        ("SelectionUpdate", b"s6"),
    ]


def test_restore_user_with_per_user_presence_keeps_its_order() -> None:
    state = DocumentState(DOC)
    state.restore_user(ALICE, ["i/2", "i/1"], [("PresenceStatus", b"s"), ("CursorUpdate", b"c")])
    assert list(state.users[ALICE].presence.items()) == [
        ("PresenceStatus", b"s"),
        ("CursorUpdate", b"c"),
    ]
    assert state.users[ALICE].conns["i/2"]  # attributed to the first connection given


def test_a_document_that_keeps_no_stored_messages_still_relays_them() -> None:
    w = World(Limits(max_stored_per_document=0))
    for name, user in (("a", ALICE), ("b", BOB)):
        w.connect(name)
        w.send(name, join(DOC, user))
    w.take("b")
    w.send("a", comment(DOC, ALICE, "live only"))
    assert w.take("b") == [comment(DOC, ALICE, "live only")]
    assert w.hub.documents[DOC].stored_bytes == 0 == w.hub.stored_bytes
