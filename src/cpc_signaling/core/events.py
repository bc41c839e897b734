"""Document events: the sequenced log every replica of a document applies.

A client's message becomes at most one event. Events of one document are put
in one total order by the backend (in memory: the call order; with Redis: one
Lua script per event), and every instance applies them in that order to its
replica of the document. Because a join snapshot is cut at the joiner's own
``Joined`` event, every event reaches a joiner exactly once: before the cut it
is in the snapshot, after it it is delivered live.

Events are msgspec structs so a backend can ship them as they are
(``msgspec.msgpack`` keeps ``frame`` as raw bytes).
"""

from __future__ import annotations

import msgspec


class Joined(msgspec.Struct, frozen=True, tag="J", array_like=True, gc=False):
    """Connection ``conn`` of ``user`` joined (or re-joined) the document.

    ``info`` is the user info this join carries: the canonical JSON of the object
    (``protocol.encode_info``), or empty for none. It becomes the user's info only
    if this join makes the user present (their first connection in the document);
    otherwise the info of the join that did stays until the user leaves entirely.
    """

    conn: str
    user: str
    info: bytes = b""


class Left(msgspec.Struct, frozen=True, tag="L", array_like=True, gc=False):
    """Connection ``conn`` of ``user`` left the document (sent, closed or died)."""

    conn: str
    user: str


class Relayed(msgspec.Struct, frozen=True, tag="R", array_like=True, gc=False):
    """A presence, annotation or comment message from ``conn``.

    ``frame`` is the message encoded once, in canonical form; every recipient
    on every instance is sent these very bytes. ``conn`` is empty for a message
    the server itself publishes (an Annotation or Comment from its API).
    """

    conn: str
    user: str
    kind: str
    frame: bytes


Event = Joined | Left | Relayed
