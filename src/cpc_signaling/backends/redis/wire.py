"""What crosses Redis pub/sub: channel names and the messages on an instance's inbox.

Every instance has one inbox channel per Redis node. A flush script publishes
ONE message to each other instance following a document it touched, holding
all that instance's events of the flush; the instance that sent the flush gets
no message at all, only the script's reply (the sequence numbers and outcomes
of its own events: it holds the events). Messages and replies are msgpack,
built by the Lua scripts by hand (``scripts.py``) and decoded here in one call
into typed structs:

* a :class:`Batch` ``["F", origin, internal, [block...]]`` on an inbox, block =
  ``[doc, first_seq, [event...], [decided...]]`` (events as ``core.events``
  encodes them);
* a flush's reply: ``[ack...]``, ack = ``[first_seq, [decided...]]``, one per
  document of the flush, in the order they were sent.

``decided`` is what Redis decided per event (``stream.outcome_of`` reads it): for
a join 2 (the user's first connection), 0 (another connection of a present
user), 3 (a member already) or 1 (refused: the document is full); for a leave 1
(the user's last connection), 0 (others remain) or -1 (not a member); for a
stored Annotation/Comment the absolute index of the oldest stored message once it
was appended (-1: not stored); 0 for presence.
"""

from __future__ import annotations

import msgspec

from ...core import Event


class Block(msgspec.Struct, array_like=True, gc=False):
    """Consecutive events of one document from one flush, from ``first`` on."""

    doc: str
    first: int
    events: list[Event]
    decided: list[int]


class Batch(msgspec.Struct, tag="F", array_like=True, gc=False):
    origin: str
    internal: bool  # written by the engine itself (re-registration), not by clients
    blocks: list[Block]


class AckBlock(msgspec.Struct, array_like=True, gc=False):
    first: int
    decided: list[int]


decode_batch = msgspec.msgpack.Decoder(Batch).decode
decode_acks = msgspec.msgpack.Decoder(list[AckBlock]).decode


class Channels:
    """Channel names of one deployment on one node.

    Pub/sub ignores the database number, so the names carry it (and the prefix):
    two deployments on databases 3 and 7 of one Redis never hear each other.
    """

    __slots__ = ("base", "control")

    def __init__(self, prefix: str, db: int) -> None:
        self.base = f"{prefix}:db{db}"
        self.control = f"{self.base}:control".encode()

    def inbox(self, instance_id: str) -> bytes:
        return f"{self.base}:inbox:{instance_id}".encode()
