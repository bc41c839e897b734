"""The per-document ordering state machine of the Redis engine, without Redis."""

from __future__ import annotations

from cpc_signaling.backends.redis.stream import (
    MAX_BUFFERED,
    Ordering,
    Phase,
    Signal,
    outcome_of,
    reaped,
)
from cpc_signaling.core import Event, Joined, Left, Relayed
from cpc_signaling.core.state import Outcome

DOC = "d"


class Sink:
    """What the machine hands on: applied (seq-less) and settled events."""

    def __init__(self) -> None:
        self.applied: list[tuple[Event, bool, int | None]] = []
        self.settled: list[Event] = []
        self.outcomes: list[Outcome] = []

    def apply(self, doc: str, event: Event, own: bool, decided: int | None) -> None:
        assert doc == DOC
        self.applied.append((event, own, decided))

    def settle(self, doc: str, event: Event, outcome: Outcome) -> None:
        self.settled.append(event)
        self.outcomes.append(outcome)


def cursor(n: int, conn: str = "x/1") -> Relayed:
    return Relayed(conn, "u", "CursorUpdate", b"%d" % n)


def comment(n: int, conn: str = "x/1") -> Relayed:
    return Relayed(conn, "u", "Comment", b"c%d" % n)


def live(cut: int = 0, head: int = 0, count: int = 0) -> tuple[Ordering, Sink]:
    order, sink = Ordering(), Sink()
    gen = order.restart()
    assert order.cut_at(gen, cut)
    assert order.go_live(DOC, head, count, sink.apply, sink.settle) is Signal.OK
    return order, sink


def test_events_in_sequence_are_applied_in_order() -> None:
    order, sink = live(cut=10)
    events: list[Event] = [cursor(1), cursor(2), cursor(3)]
    assert order.receive(DOC, 11, events[:2], [0, 0], False, False, sink.apply) is Signal.OK
    assert order.receive(DOC, 13, events[2:], [0], True, False, sink.apply) is Signal.OK
    assert [e for e, _, _ in sink.applied] == events
    assert [own for _, own, _ in sink.applied] == [False, False, True]
    assert order.applied == 13


def test_a_gap_reloads_and_a_sequence_that_went_back_restores_everything() -> None:
    order, sink = live(cut=10)
    assert order.receive(DOC, 12, [cursor(1)], [0], False, False, sink.apply) is Signal.RELOAD
    assert order.phase is Phase.LOADING
    assert sink.applied == []
    order, sink = live(cut=10)
    assert order.receive(DOC, 9, [cursor(1)], [0], False, False, sink.apply) is Signal.WENT_BACK


def test_the_cut_splits_the_stream_exactly_once() -> None:
    """Blocks before the ATTACH reply are in the state (dropped: only own joins and
    leaves are settled); blocks after it are applied once the state is installed."""
    order, sink = Ordering(), Sink()
    gen = order.restart()
    mine_join, mine_leave = Joined("me/1", "u"), Left("me/2", "v")
    # Before the cut: someone else's cursor, and this instance's own join and leave.
    order.receive(DOC, 4, [cursor(1), mine_join, mine_leave], [0, 2, 1], True, False, sink.apply)
    order.receive(DOC, 7, [cursor(2)], [0], False, False, sink.apply)
    assert order.cut_at(gen, 7)
    # After the cut: buffered until the state is installed.
    order.receive(DOC, 8, [cursor(3)], [0], False, False, sink.apply)
    assert sink.applied == []
    order.settle_leaves(DOC, sink.settle)
    assert sink.settled == [mine_leave]  # leaves before the state is installed ...
    assert order.go_live(DOC, 0, 0, sink.apply, sink.settle) is Signal.OK
    assert sink.settled == [mine_leave, mine_join]  # ... joins after
    assert sink.outcomes == [Outcome.LEFT_LAST, Outcome.JOINED_FIRST]  # as Redis decided
    assert [e for e, _, _ in sink.applied] == [cursor(3)]
    assert order.phase is Phase.LIVE and order.applied == 8


def test_a_superseded_load_cannot_cut() -> None:
    order = Ordering()
    first = order.restart()
    second = order.restart()  # a reload started while the first attach was on its way
    assert not order.cut_at(first, 5)
    assert order.cut_at(second, 6)
    assert not order.cut_at(second, 7)  # one cut per load


def test_engine_events_are_never_settled() -> None:
    """Joins and leaves the engine wrote itself (re-registration) are not a client's:
    nobody is sent a snapshot or an acknowledgement for them."""
    order, sink = Ordering(), Sink()
    gen = order.restart()
    order.receive(DOC, 1, [Joined("me/1", "u")], [0], True, True, sink.apply)
    order.cut_at(gen, 1)
    order.go_live(DOC, 0, 0, sink.apply, sink.settle)
    assert sink.settled == []


def test_a_gap_while_waiting_for_the_state_keeps_own_joins_to_settle() -> None:
    order, sink = live(cut=10)
    mine = Joined("me/1", "u")
    assert order.receive(DOC, 12, [mine], [0], True, False, sink.apply) is Signal.RELOAD
    gen = order.gen
    assert order.cut_at(gen, 12)
    order.go_live(DOC, 0, 0, sink.apply, sink.settle)
    assert sink.settled == [mine]


def test_too_much_waiting_reloads_instead_of_growing() -> None:
    order, sink = Ordering(), Sink()
    gen = order.restart()
    order.cut_at(gen, 0)
    block = [cursor(n) for n in range(1000)]
    signal = Signal.OK
    first = 1
    while signal is Signal.OK:
        signal = order.receive(DOC, first, block, [0] * len(block), False, False, sink.apply)
        first += len(block)
    assert signal is Signal.RELOAD
    assert first - 1 <= MAX_BUFFERED + len(block)
    assert order.phase is Phase.LOADING and order.buffer == []


def test_stored_messages_follow_what_redis_kept() -> None:
    """Redis says, per stored message, the absolute index of the oldest it kept; the
    machine turns that into how many of the replica's oldest go."""
    order, sink = live(cut=0, head=5, count=3)  # the replica holds indices 5, 6, 7
    decided = [6, 9, -1]  # keeps 6..8: one goes; then 9..9: 3 go; then not stored
    events: list[Event] = [comment(8), comment(9), comment(10)]
    order.receive(DOC, 1, events, decided, False, False, sink.apply)
    assert [d for _, _, d in sink.applied] == [1, 3, 0]
    assert (order.head, order.count) == (9, 1)


def test_joins_carry_the_decision_on_the_member_cap() -> None:
    order, sink = live(cut=0)
    order.receive(
        DOC, 1, [Joined("x/1", "u"), Joined("x/2", "v")], [0, 1], False, False, sink.apply
    )
    assert [d for _, _, d in sink.applied] == [0, 1]


def test_a_reaper_leaving_a_live_connection_means_this_instance_was_reaped() -> None:
    live_conns = {"me/1"}
    assert reaped([Left("me/1", "u")], "me/", live_conns.__contains__)
    assert not reaped([Left("me/2", "u")], "me/", live_conns.__contains__)  # closed already
    assert not reaped([Left("other/1", "u")], "me/", live_conns.__contains__)
    assert not reaped([Joined("me/1", "u"), cursor(1, "me/1")], "me/", live_conns.__contains__)


def test_unapplied_own_events_are_what_a_fallback_applies_locally() -> None:
    order, sink = Ordering(), Sink()
    gen = order.restart()
    join = Joined("me/1", "u")
    order.receive(DOC, 3, [join], [0], True, False, sink.apply)  # before the cut
    order.cut_at(gen, 3)
    order.receive(DOC, 4, [cursor(1, "me/1")], [0], True, False, sink.apply)  # after it
    order.receive(DOC, 5, [cursor(2, "x/1")], [0], False, False, sink.apply)  # not own
    assert order.unapplied_own() == [join, cursor(1, "me/1")]


def test_what_redis_decided_reads_as_the_outcome_replicas_compute() -> None:
    join, leave = Joined("x/1", "u"), Left("x/1", "u")
    assert [outcome_of(join, d) for d in (0, 1, 2, 3)] == [
        Outcome.JOINED_AGAIN,
        Outcome.REJECTED_FULL,
        Outcome.JOINED_FIRST,
        Outcome.REJOINED,
    ]
    assert [outcome_of(leave, d) for d in (1, 0, -1)] == [
        Outcome.LEFT_LAST,
        Outcome.LEFT_OTHERS_REMAIN,
        Outcome.IGNORED,
    ]
    assert [outcome_of(comment(1), d) for d in (5, -1)] == [Outcome.RELAYED, Outcome.IGNORED]
