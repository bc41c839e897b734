"""The order in which one instance applies one document's events. Pure: no I/O.

An instance follows a document from an ``ATTACH`` on: Redis adds it to the
document's followers and returns the state, atomically. On the instance's one
Redis connection (RESP3: replies and pub/sub messages in one stream, in the
order Redis ran them), every block of events that arrives before that reply was
sequenced before it, so it is in the state; every block after it, after. That
position is the document's *cut*:

* ``LOADING``: waiting for the cut. Blocks are in the state to come: dropped,
  except this instance's own joins and leaves, whose local side (snapshot,
  acknowledgement) still has to be done once the state is installed ("settle").
* ``CUT``: the reply came (``cut_at``), the state is being completed and
  installed; blocks are newer than it: kept, in order.
* ``LIVE``: blocks are applied as they come, each must start right after the
  last applied sequence number. A gap (a lost message) sends the document back
  to ``LOADING`` (reload); a number that went back means Redis lost its data.

The machine also turns what Redis decided for a stored message (the absolute
index of the oldest message kept) into what the replica must drop: it tracks
the absolute index and count of the stored messages the replica holds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from ...core import Event, Joined, Left, Relayed
from ...core.state import STORED_KINDS, Outcome

Apply = Callable[[str, Event, bool, int | None], None]
"""The backend's sink: (document, event, own, decided)."""

Settle = Callable[[str, Event, Outcome], None]
"""The local side of an own join or leave that the installed state already holds
(with what Redis decided for it)."""

_JOINED = {0: Outcome.JOINED_AGAIN, 1: Outcome.REJECTED_FULL, 2: Outcome.JOINED_FIRST}
_LEFT = {1: Outcome.LEFT_LAST, 0: Outcome.LEFT_OTHERS_REMAIN}


def outcome_of(event: Event, decided: int) -> Outcome:
    """What applying ``event`` did in Redis, from its ``decided`` value (``wire``)."""
    if type(event) is Joined:
        return _JOINED.get(decided, Outcome.REJOINED)
    if type(event) is Left:
        return _LEFT.get(decided, Outcome.IGNORED)
    assert type(event) is Relayed
    if event.kind in STORED_KINDS:
        return Outcome.RELAYED if decided >= 0 else Outcome.IGNORED
    return Outcome.RELAYED  # presence: Redis does not say; its members' replicas do


MAX_BUFFERED = 50_000
"""Events one document may have waiting for its state; past that it reloads."""


class Phase(enum.Enum):
    LOADING = "loading"
    CUT = "cut"
    LIVE = "live"


class Signal(enum.Enum):
    """What the backend must do after feeding the machine."""

    OK = "ok"
    RELOAD = "reload: a gap, or too much waiting; load the document again"
    WENT_BACK = "the sequence went back: Redis lost its data; restore everything"


class Ordering:
    """One followed document's position in its event stream; see the module docstring."""

    __slots__ = ("applied", "buffer", "buffered", "count", "cut", "gen", "head", "phase", "settle")

    def __init__(self) -> None:
        self.phase = Phase.LOADING
        self.applied = 0  # the seq of the last event handed to the sink
        self.cut = 0
        self.gen = 0  # which load the cut belongs to (a later load supersedes)
        # CUT: blocks newer than the cut, in arrival (= sequence) order.
        self.buffer: list[tuple[int, Sequence[Event], Sequence[int], bool, bool]] = []
        self.buffered = 0
        # Own joins and leaves that the state to be installed holds, with their outcome.
        self.settle: list[tuple[Event, Outcome]] = []
        # The replica's stored messages: absolute index of the oldest, and how many.
        self.head = 0
        self.count = 0

    def restart(self) -> int:
        """A (re)load of the document begins: back to LOADING. Returns the load's
        generation, which :meth:`cut_at` must be given."""
        for _, events, decided, own, internal in self.buffer:
            if own and not internal:
                self._keep(events, decided)
        self.buffer = []
        self.buffered = 0
        self.phase = Phase.LOADING
        self.gen += 1
        return self.gen

    def cut_at(self, gen: int, seq: int) -> bool:
        """The ATTACH reply of load ``gen`` arrived: the state's seq is ``seq``.
        False when that load was superseded (its state must not be installed)."""
        if gen != self.gen or self.phase is not Phase.LOADING:
            return False
        self.phase = Phase.CUT
        self.cut = seq
        return True

    def _keep(self, events: Sequence[Event], decided: Sequence[int]) -> None:
        for event, outcome in zip(events, decided, strict=True):
            if type(event) is not Relayed:
                self.settle.append((event, outcome_of(event, outcome)))

    def receive(
        self,
        doc: str,
        first: int,
        events: Sequence[Event],
        decided: Sequence[int],
        own: bool,
        internal: bool,
        apply: Apply,
    ) -> Signal:
        """A block: ``events`` numbered ``first``, ``first + 1``, ... (own: sent by
        this instance; internal: by its engine, not by a client)."""
        phase = self.phase
        if phase is Phase.LIVE:
            applied = self.applied
            if first == applied + 1:
                self._apply(doc, events, decided, own, apply)
                return Signal.OK
            if first <= applied:
                return Signal.WENT_BACK
            self.restart()  # a gap: this block is in the state the reload brings
            if own and not internal:
                self._keep(events, decided)
            return Signal.RELOAD
        if phase is Phase.LOADING:
            if own and not internal:
                self._keep(events, decided)
            return Signal.OK
        self.buffer.append((first, events, decided, own, internal))
        self.buffered += len(events)
        if self.buffered > MAX_BUFFERED:
            self.restart()
            return Signal.RELOAD
        return Signal.OK

    def _apply(
        self, doc: str, events: Sequence[Event], decided: Sequence[int], own: bool, apply: Apply
    ) -> None:
        stored = STORED_KINDS
        for event, outcome in zip(events, decided, strict=True):
            if type(event) is Relayed and event.kind in stored:
                apply(doc, event, own, self._evict(outcome))
            else:
                apply(doc, event, own, outcome)
        self.applied += len(events)

    def _evict(self, head: int) -> int:
        """Redis kept stored messages from absolute index ``head`` on, once this one
        was appended: how many of the replica's oldest go (-1: not stored)."""
        if head < 0:
            return 0
        gone = min(max(head - self.head, 0), self.count + 1)
        self.head += gone
        self.count += 1 - gone
        return gone

    def settle_leaves(self, doc: str, settle: Settle) -> None:
        """Before the state is installed: the local side of own leaves it holds."""
        keep = []
        for event, outcome in self.settle:
            if type(event) is Left:
                settle(doc, event, outcome)
            else:
                keep.append((event, outcome))
        self.settle = keep

    def go_live(self, doc: str, head: int, count: int, apply: Apply, settle: Settle) -> Signal:
        """The state cut at :attr:`cut` is installed (its stored messages: ``count``
        from absolute index ``head``): settle own joins it holds, then apply the
        blocks that came after the cut."""
        joins, self.settle = self.settle, []
        for event, outcome in joins:
            settle(doc, event, outcome)
        self.phase = Phase.LIVE
        self.applied = self.cut
        self.head, self.count = head, count
        backlog, self.buffer, self.buffered = self.buffer, [], 0
        for n, (first, events, decided, own, internal) in enumerate(backlog):
            signal = self.receive(doc, first, events, decided, own, internal, apply)
            if signal is not Signal.OK:
                for _, events, decided, own, internal in backlog[n + 1 :]:
                    if own and not internal:
                        self._keep(events, decided)
                return signal
        return Signal.OK

    def unapplied_own(self) -> list[Event]:
        """Own client events this instance has not applied (for a fallback to
        local sequencing): joins and leaves to settle, then newer own blocks."""
        events = [event for event, _ in self.settle]
        for _, block, _, own, internal in self.buffer:
            if own and not internal:
                events.extend(block)
        return events


def reaped(events: Sequence[Event], mine: str, live: Callable[[str], bool]) -> bool:
    """True if another instance's block leaves one of this instance's live
    connections (``live(conn)``; their ids start with ``mine``): only a reaper does
    that, so this instance was declared dead while it was alive."""
    for event in events:
        if type(event) is Left and event.conn.startswith(mine) and live(event.conn):
            return True
    return False
