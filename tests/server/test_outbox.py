"""The outbox alone: conflation order, never dropping firm frames, both bounds."""

from __future__ import annotations

from cpc_signaling.server.outbox import LATEST_STATE_FACTOR, Outbox


def test_newer_presence_replaces_older_and_moves_to_the_end() -> None:
    box = Outbox(max_bytes=1000)
    assert box.push(b"c1", ("d", "u", "CursorUpdate")) is False
    box.push(b"join", None)
    box.push(b"s1", ("d", "u", "SelectionUpdate"))
    assert box.push(b"c2", ("d", "u", "CursorUpdate")) is True
    assert box.take() == [b"join", b"s1", b"c2"]
    assert not box and box.firm_bytes == 0 and box.latest_bytes == 0


def test_firm_frames_are_never_dropped_and_bound_the_box() -> None:
    box = Outbox(max_bytes=10)
    for i in range(3):
        box.push(b"comment%d" % i, None)
    assert len(box) == 3
    assert box.overflowed  # 24 bytes of frames that may not be dropped > 10


def test_latest_presence_is_bounded_too() -> None:
    box = Outbox(max_bytes=10)
    frame = b"x" * 10
    for user in range(LATEST_STATE_FACTOR):
        box.push(frame, ("d", str(user), "CursorUpdate"))
    assert not box.overflowed
    box.push(frame, ("d", "0", "CursorUpdate"))  # a replacement costs nothing more
    assert not box.overflowed
    box.push(frame, ("d", "another", "CursorUpdate"))
    assert box.overflowed


def test_a_stream_is_written_lazily_uncounted_and_what_follows_waits_behind_it() -> None:
    box = Outbox(max_bytes=10, wrap=lambda f: b"<" + f + b">")
    box.push(b"ack0", None)
    snapshot = [b"s%d" % i for i in range(1000)]  # far over max_bytes: not counted
    box.push_stream(snapshot)
    box.push(b"c1", ("d", "u", "CursorUpdate"))
    box.push(b"join", None)
    assert box.firm_bytes == 8 and box.streams == 1 and not box.overflowed
    assert box.pop(5) == [b"ack0", b"<s0>"]  # a budget: whole frames, at least one
    assert box.pop(0) == [b"<s1>"]
    rest = box.pop(1 << 20)
    assert rest == [*(b"<s%d>" % i for i in range(2, 1000)), b"c1", b"join"]
    assert not box and box.streams == 0 and box.firm_bytes == 0 and box.latest_bytes == 0


def test_presence_conflates_across_a_stream_and_dropping_streams_keeps_the_rest() -> None:
    box = Outbox(max_bytes=100)
    box.push(b"c1", ("d", "u", "CursorUpdate"))
    box.push_stream([b"s1", b"s2"])
    box.push(b"c2", ("d", "u", "CursorUpdate"))  # newest state goes last, after the stream
    box.push(b"err", None)
    assert box.take() == [b"s1", b"s2", b"c2", b"err"]
    box.push_stream([b"s1"])
    box.push(b"err", None)
    box.drop_streams()
    assert box.take() == [b"err"] and box.streams == 0
