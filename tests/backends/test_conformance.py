"""One suite, every backend: the memory store is the reference, Redis must match.

The memory store applies events with ``DocumentState`` itself, the code every
replica runs; the Redis one runs Lua. The property test drives both with the
same random event streams and compares what ``load`` returns with a
``DocumentState`` that applied the same events, and what a follower is told
Redis decided with what the reference decided.
"""

from __future__ import annotations

import random

import pytest

from cpc_signaling.backends.memory import DECIDED
from cpc_signaling.core import DocumentState, Event, Joined, Left, Relayed
from cpc_signaling.core.state import STORED_KINDS, Outcome
from cpc_signaling.protocol import (
    Comment,
    CursorUpdate,
    Position,
    PresenceStatus,
    PresenceUpdate,
    Selection,
    TypingIndicator,
    encode,
)

from ..helpers import new_id
from .conftest import Harness, Inbox

TS = "2026-01-01T00:00:00Z"


def frame(kind: str, doc: str, user: str, n: int) -> bytes:
    pos = Position(line=n, column=n % 7)
    if kind == "CursorUpdate":
        return encode(CursorUpdate(document_id=doc, user_id=user, position=pos, timestamp=TS))
    if kind == "PresenceUpdate":
        sel = Selection(start=pos, end=pos)
        return encode(
            PresenceUpdate(
                document_id=doc,
                user_id=user,
                cursor=pos,
                selection=sel,
                is_typing=n % 2 == 0,
                timestamp=TS,
            )
        )
    if kind == "TypingIndicator":
        return encode(
            TypingIndicator(document_id=doc, user_id=user, is_typing=n % 2 == 0, timestamp=TS)
        )
    if kind == "PresenceStatus":
        return encode(PresenceStatus(document_id=doc, user_id=user, status=f"s{n}", timestamp=TS))
    assert kind == "Comment"
    return encode(
        Comment(document_id=doc, user_id=user, position=pos, content=f"c{n}", timestamp=TS)
    )


def random_events(doc: str, rng: random.Random, count: int) -> list[Event]:
    users = [new_id() for _ in range(4)]
    conns = [(f"i{rng.randint(1, 2)}/{n}", users[n % len(users)]) for n in range(8)]
    kinds = ["CursorUpdate", "PresenceUpdate", "TypingIndicator", "PresenceStatus", "Comment"]
    events: list[Event] = []
    for n in range(count):
        conn, user = rng.choice(conns)
        roll = rng.random()
        if roll < 0.3:
            # With user info half of the time (what counts: the join making the user present).
            info = b'{"name":"n%d"}' % n if rng.random() < 0.5 else b""
            events.append(Joined(conn, user, info))
        elif roll < 0.5:
            events.append(Left(conn, user))
        elif roll < 0.55:
            events.append(Relayed("", user, "Comment", frame("Comment", doc, user, n)))
        elif roll < 0.6:
            # Speaking for another user, or with a wrong connection: ignored.
            events.append(
                Relayed(conn, new_id(), "CursorUpdate", frame("CursorUpdate", doc, user, n))
            )
        else:
            kind = rng.choice(kinds)
            events.append(Relayed(conn, user, kind, frame(kind, doc, user, n)))
    return events


def shape(state: DocumentState) -> tuple[object, ...]:
    return (
        state.seq,
        [
            (u.user_id, sorted(u.conns), list(u.presence.items()), u.join_frame)
            for u in state.users.values()
        ],
        dict(sorted(state.conns.items())),
        sorted(state.connection_presence()),
        list(state.stored),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_load_matches_the_reference_state(harness: Harness, seed: int) -> None:
    store = await harness.store(max_members=5, max_stored=4)
    doc = new_id()
    events = random_events(doc, random.Random(seed), 300)
    reference = DocumentState(doc, max_stored=4)
    for event in events:
        reference.apply(event, max_members=5)
    # In a few batches, as the writer flushes them.
    for start in range(0, len(events), 64):
        await store.commit([(doc, e) for e in events[start : start + 64]])
    assert shape(await store.load(doc)) == shape(reference)
    assert shape(await store.follow(doc)) == shape(reference)


@pytest.mark.parametrize("seed", [4, 5])
async def test_followers_apply_what_the_store_decided_whatever_their_limits(
    harness: Harness, seed: int
) -> None:
    """Outcomes (member cap, stored budget) are decided once, by the store, with the
    committing instance's limits: a follower configured otherwise applies them and
    ends with the store's state."""
    inbox = Inbox()
    follower = await harness.store("i2", max_members=1000, max_stored=1000, inbox=inbox)
    writer = await harness.store("i1", max_members=5, max_stored=4)
    doc = new_id()
    replica = await follower.follow(doc)
    events = random_events(doc, random.Random(seed), 200)
    for start in range(0, len(events), 50):
        await writer.commit([(doc, e) for e in events[start : start + 50]])
    got = await inbox.wait_for(len(events))
    head, count = 0, 0  # the replica's stored messages, as the engine tracks them
    for _, seq, _, event, decided in got:
        if type(event) is Relayed and event.kind in STORED_KINDS:
            if decided < 0:
                replica.apply(event, max_members=1000, decided=0)
                continue
            gone = decided - head
            head, count = decided, count + 1 - gone
            replica.apply(event, max_members=1000, decided=gone)
        else:
            replica.apply(event, max_members=1000, decided=decided)
        assert replica.seq == seq
    assert shape(replica) == shape(await writer.load(doc))
    # What was decided is what the reference decides, event by event.
    reference = DocumentState(doc, max_stored=4)
    expected, appended = [], 0
    for event in events:
        outcome = reference.apply(event, max_members=5)
        if type(event) is Relayed and event.kind in STORED_KINDS:
            stored = outcome is Outcome.RELAYED
            appended += stored
            expected.append(appended - len(reference.stored) if stored else -1)
        elif type(event) is Relayed:
            expected.append(0)
        else:
            expected.append(DECIDED[outcome])
    assert [decided for *_, decided in got] == expected


async def test_followers_get_every_event_once_in_order(harness: Harness) -> None:
    inboxes = [Inbox(), Inbox()]
    followers = [await harness.store(f"i{n}", inbox=inboxes[n]) for n in range(2)]
    writer_inbox = Inbox()
    writer = await harness.store("w", inbox=writer_inbox)
    doc, other = new_id(), new_id()
    for follower in followers:
        await follower.follow(doc)
    await writer.follow(doc)  # its own events come back in replies, never in its inbox
    user = new_id()
    events: list[Event] = [Joined("w/1", user)]
    events += [
        Relayed("w/1", user, "CursorUpdate", frame("CursorUpdate", doc, user, n)) for n in range(40)
    ]
    events.append(Left("w/1", user))
    assert await writer.commit([(doc, e) for e in events[:20]]) == list(range(1, 21))
    await writer.commit([(other, Joined("w/2", user))])  # nobody follows it: not delivered
    assert await writer.commit([(doc, e) for e in events[20:]]) == list(range(21, 43))
    for inbox in inboxes:
        got = await inbox.wait_for(len(events))
        assert [(d, s, o, e) for d, s, o, e, _ in got] == [
            (doc, n + 1, "w", e) for n, e in enumerate(events)
        ]
    assert writer_inbox.items == []


async def test_unfollow_stops_delivery(harness: Harness) -> None:
    inbox = Inbox()
    store = await harness.store("i1", inbox=inbox)
    writer = await harness.store("w")
    doc, marker = new_id(), new_id()
    await store.follow(doc)
    await store.follow(doc)  # following is a set: once is once
    await store.follow(marker)
    await writer.commit([(doc, Joined("w/1", new_id()))])
    await inbox.wait_for(1)
    await store.unfollow(doc)
    await writer.commit([(doc, Joined("w/2", new_id())), (marker, Joined("w/3", new_id()))])
    await writer.commit([(marker, Joined("w/4", new_id()))])
    # Events arrive in commit order: had ``doc``'s come, it would precede the markers.
    got = await inbox.wait_for(3)
    assert [d for d, *_ in got] == [doc, marker, marker]


async def test_events_arrive_as_committed_whatever_their_size(harness: Harness) -> None:
    inbox = Inbox()
    store = await harness.store("i1", inbox=inbox)
    writer = await harness.store("w")
    doc, user = new_id(), new_id()
    await store.follow(doc)
    long_conn = "w/" + "c" * 300  # str8 and str16 lengths too
    events: list[Event] = [Joined("w/1", user), Joined(long_conn, user)]
    events += [Relayed("w/1", user, "Comment", b"x" * n) for n in (0, 3, 255, 256, 65535, 65536)]
    events += [Left("w/1", user), Left(long_conn, user)]
    await writer.commit([(doc, e) for e in events])
    got = await inbox.wait_for(len(events))
    assert [e for *_, e, _ in got] == events


async def test_reap_leaves_every_membership_of_a_dead_instance(harness: Harness) -> None:
    inbox = Inbox()
    survivor = await harness.store("survivor", inbox=inbox)
    writer = await harness.store("w")
    doc1, doc2 = new_id(), new_id()
    alice, bob = new_id(), new_id()
    await survivor.follow(doc1)
    await writer.commit(
        [
            (doc1, Joined("dead/1", alice)),
            (doc1, Joined("live/1", alice)),
            (doc1, Joined("dead/2", bob)),
            (doc2, Joined("dead/3", bob)),
        ]
    )
    assert await survivor.reap("dead") == 3
    assert await survivor.reap("dead") == 0  # idempotent
    state = await survivor.load(doc1)
    assert state.conns == {"live/1": alice}
    assert list(state.users) == [alice]
    assert (await survivor.load(doc2)).conns == {}
    # The follower of doc1 gets its joins; the reaper (the survivor) gets every leave of
    # its reap, doc2's too though it does not follow it (the reap is its own doing).
    got = await inbox.wait_for(6)
    leaves = [(d, o, e, decided) for d, _, o, e, decided in got[3:]]
    assert sorted((d, o, e.conn, e.user, decided) for d, o, e, decided in leaves) == sorted(
        [
            (doc1, "survivor", "dead/1", alice, 0),  # alice stays through live/1
            (doc1, "survivor", "dead/2", bob, 1),  # bob's last connection in doc1
            (doc2, "survivor", "dead/3", bob, 1),
        ]
    )
    assert [s for d, s, *_ in got if d == doc1] == [1, 2, 3, 4, 5]


async def test_stored_messages_are_bounded_and_survive_leaves(harness: Harness) -> None:
    store = await harness.store(max_stored=3)
    doc, user = new_id(), new_id()
    comments = [frame("Comment", doc, user, n) for n in range(5)]
    await store.commit([(doc, Joined("i1/1", user))])
    await store.commit([(doc, Relayed("i1/1", user, "Comment", f)) for f in comments])
    await store.commit([(doc, Left("i1/1", user))])
    state = await store.load(doc)
    assert list(state.stored) == comments[2:]
    assert state.users == {}
    assert state.seq == 7


async def test_stored_bytes_budget_drops_the_oldest_like_the_reference(harness: Harness) -> None:
    store = await harness.store(max_stored=100, max_stored_bytes=2_000)
    doc, user = new_id(), new_id()
    frames = [b"x" * size for size in (300, 900, 500, 700, 2_500, 100, 1_200, 600)]
    reference = DocumentState(doc, max_stored=100, max_stored_bytes=2_000)
    events: list[Event] = [Relayed("", user, "Comment", f) for f in frames]
    for event in events:
        reference.apply(event, max_members=1000)
    await store.commit([(doc, e) for e in events])
    state = await store.load(doc)
    assert list(state.stored) == list(reference.stored) == frames[-3:]  # a frame over the
    # whole budget (2,500 bytes) is relayed, never kept


async def test_member_cap_refuses_like_the_reference(harness: Harness) -> None:
    store = await harness.store(max_members=2)
    doc = new_id()
    users = [new_id() for _ in range(3)]
    await store.commit([(doc, Joined(f"i1/{n}", u)) for n, u in enumerate(users)])
    state = await store.load(doc)
    assert list(state.users) == users[:2]
    await store.commit([(doc, Left("i1/0", users[0])), (doc, Joined("i1/2", users[2]))])
    assert list((await store.load(doc)).users) == users[1:]
