"""One instance's view of one Redis node's shared state: the scripts, called.

:class:`RedisStore` turns the Lua scripts (``scripts.py``) into methods over one
:class:`~.resp.Connection`. The backend's writer packs its flushes with
:meth:`RedisStore.pack_flush` (its hot path); everything else awaits replies.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import hiredis
import msgspec

from ...core import DocumentState, Event, Joined, Relayed
from ...errors import ConnectionLost, ReplyError
from .resp import Connection
from .scripts import SCRIPTS
from .wire import AckBlock, Channels, decode_acks

PAGE_BYTES: Final = 256 << 10
"""Stored messages per LOAD/STORED call: about this many bytes (a bounded reply)."""
SCAN_COUNT: Final = 1000
REAP_BATCH: Final = 1000
TOUCH_BATCH: Final = 1000
SHA: Final = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in SCRIPTS.items()}


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits Redis decides outcomes with (this instance's, for its own events)."""

    max_members: int = 1000
    max_stored: int = 1000
    max_bytes: int = 4 << 20
    ttl_ms: int = 7 * 24 * 3600 * 1000

    def args(self) -> tuple[int, int, int, int]:
        return (self.max_members, self.max_stored, self.max_bytes, self.ttl_ms)

    def text(self) -> str:
        """As recorded in Redis for other instances to compare."""
        return f"members={self.max_members} stored={self.max_stored} bytes={self.max_bytes}"


@dataclass(slots=True)
class Loaded:
    """A document's state read from Redis, and its stored messages' absolute indices."""

    state: DocumentState
    head: int  # absolute index of state.stored[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_decode_relayed = msgspec.msgpack.Decoder(Relayed).decode
_encode = msgspec.msgpack.Encoder().encode


def build_state(document_id: str, raw: Sequence[Any], stored: list[bytes]) -> DocumentState:
    """A replica from a LOAD/ATTACH reply (``stored``: all its stored messages, as
    Redis keeps them: the bounds were applied there)."""
    seq, flat, users = int(raw[0]), raw[1], raw[2]
    conns_of: dict[str, list[str]] = {}
    info_of: dict[str, bytes] = {}
    presence: list[tuple[str, int, str, bytes]] = []
    for i in range(0, len(flat), 2):
        name, value = flat[i], flat[i + 1]
        if name.startswith(b"p:"):
            conn, kind = name[2:].decode().split(" ", 1)
            set_at, packed = value.split(b" ", 1)
            presence.append((conn, int(set_at), kind, _decode_relayed(packed).frame))
        elif name.startswith(b"c:"):
            conns_of.setdefault(_text(value), []).append(name[2:].decode())
        elif name.startswith(b"i:"):
            info_of[name[2:].decode()] = value
    state = DocumentState(document_id, seq=seq)
    for raw_user in users:
        user = _text(raw_user)
        state.restore_user(user, sorted(conns_of.get(user, ())), info=info_of.get(user, b""))
    for conn, set_at, kind, frame in presence:
        state.restore_presence(conn, set_at, kind, frame)
    state.load_stored(stored, as_recorded=True)
    return state


class RedisStore:
    """Scripts of one node for one instance (``instance_id``); see ``base.Store``."""

    def __init__(
        self,
        conn: Connection,
        *,
        prefix: str,
        channels: Channels,
        instance_id: str,
        limits: Limits,
        token: str = "",
    ) -> None:
        self.conn = conn
        self.prefix = prefix
        self.channels = channels
        self.instance_id = instance_id
        self.limits = limits
        self.token = token
        self._head = (prefix, channels.base)

    # -- calling scripts -------------------------------------------------------------

    async def load_scripts(self) -> None:
        for source in SCRIPTS.values():
            await self.conn.call("SCRIPT", "LOAD", source)

    def pack(self, name: str, *args: Any) -> bytes:
        packed: bytes = hiredis.pack_command(("EVALSHA", SHA[name], 0, *self._head, *args))
        return packed

    async def call(self, name: str, *args: Any) -> Any:
        try:
            return await self.conn.call("EVALSHA", SHA[name], 0, *self._head, *args)
        except ReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            await self.load_scripts()  # Redis lost its script cache (SCRIPT FLUSH)
            return await self.conn.call("EVALSHA", SHA[name], 0, *self._head, *args)

    # -- writes ----------------------------------------------------------------------

    def pack_flush(
        self, flush: int, groups: dict[str, list[Event]], *, internal: bool = False
    ) -> bytes:
        """A FLUSH of ``groups`` (document -> its events, in order)."""
        args: list[Any] = [
            "EVALSHA", SHA["flush"], 0, *self._head, self.instance_id, self.token, flush,
            "S" if internal else "A", *self.limits.args(),
        ]  # fmt: skip
        extend = args.extend
        encode = _encode
        for doc, events in groups.items():
            extend((doc, len(events)))
            for event in events:
                if type(event) is Relayed:
                    extend((event.conn, event.user, event.kind, encode(event)))
                elif type(event) is Joined:
                    extend((event.conn, event.user, event.info, encode(event)))
                else:
                    extend((event.conn, event.user, "", encode(event)))
        packed: bytes = hiredis.pack_command(tuple(args))
        return packed

    async def flush(
        self, groups: dict[str, list[Event]], *, internal: bool, number: int = 0
    ) -> list[AckBlock] | None:
        """One FLUSH, awaited. None: refused (this registration is not current)."""
        reply = await self._send_packed(self.pack_flush(number, groups, internal=internal))
        if int(reply[0]) == 0:
            return None
        return decode_acks(reply[1])

    async def _send_packed(self, packed: bytes) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def resolve(reply: Any) -> None:
            if future.done():
                return
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

        self.conn.send_packed(packed, resolve)
        return await future

    async def commit(self, items: Sequence[tuple[str, Event]]) -> list[int]:
        """Sequence ``items`` (a flush per run of one document's events); returns the
        seqs. The Store role of the conformance suite (the writer packs its own)."""
        seqs: list[int] = []
        for doc, events in _runs(items):
            acks = await self.flush({doc: events}, internal=False)
            if acks is None:
                raise ConnectionLost("this instance's registration is not current")
            seqs.extend(range(acks[0].first, acks[0].first + len(events)))
        return seqs

    async def commit_internal(self, items: Iterable[tuple[str, Event]], batch: int = 1000) -> bool:
        """Commit events of the engine itself (re-registration), every follower
        (this instance too) getting them; in calls of at most ``batch`` events.
        False when refused (fenced)."""
        groups: dict[str, list[Event]] = {}
        count = 0
        for doc, event in items:
            groups.setdefault(doc, []).append(event)
            count += 1
            if count >= batch:
                if await self.flush(groups, internal=True) is None:
                    return False
                groups, count = {}, 0
        if groups:
            return await self.flush(groups, internal=True) is not None
        return True

    # -- registration ------------------------------------------------------------------

    async def register(
        self, token: str, old: str, timeout: float
    ) -> tuple[bool, str, dict[str, str]]:
        """(registered, "TOKEN N" of the last flush that ran, every instance's limits)."""
        reply = await self.call(
            "register",
            self.instance_id,
            token,
            old,
            max(1, int(timeout * 1000)),
            self.limits.ttl_ms,
            self.limits.text(),
        )
        if int(reply[0]) == 0:
            return False, "", {}
        flat = reply[2]
        limits = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
        self.token = token
        return True, _text(reply[1]), limits

    async def heartbeat(self, timeout: float) -> list[str] | None:
        """Refresh this registration; the ids of dead instances, or None if it is
        not current any more (this instance was declared dead)."""
        reply = await self.call(
            "heartbeat",
            self.instance_id,
            self.token,
            max(1, int(timeout * 1000)),
            self.limits.ttl_ms,
        )
        if int(reply[0]) == 0:
            return None
        return [_text(x) for x in reply[1:]]

    async def reap(self, instance_id: str) -> int:
        """Left for every membership of a dead instance; 0 if it is alive (or had none)."""
        total = 0
        while True:
            done, remaining = await self.call(
                "reap", self.instance_id, instance_id, *self.limits.args(), REAP_BATCH
            )
            if int(done) < 0:
                return total
            total += int(done)
            if not int(remaining):
                return total

    async def retire(self) -> int:
        """Remove this instance's registration, memberships and follows (after a drain)."""
        done, remaining = await self.call(
            "retire", self.instance_id, self.token, *self.limits.args(), REAP_BATCH
        )
        total = max(0, int(done))
        if int(done) >= 0 and int(remaining):
            total += await self.reap(self.instance_id)
        return total

    async def members(self, kind: str) -> set[str]:
        """A set of this instance's (``inst``: "DOC CONN" memberships; ``follows``:
        documents), read a page at a time."""
        found: set[str] = set()
        cursor = "0"
        while True:
            reply = await self.call("scan", f"{kind}:{self.instance_id}", cursor, SCAN_COUNT)
            cursor = _text(reply[0])
            found.update(_text(m) for m in reply[1:])
            if cursor == "0":
                return found

    async def touch(self, documents: Sequence[str]) -> None:
        for i in range(0, len(documents), TOUCH_BATCH):  # a short script at a time
            await self.call("touch", self.limits.ttl_ms, *documents[i : i + TOUCH_BATCH])

    # -- following and loading -----------------------------------------------------------

    def follow_packed(self, document_id: str) -> bytes:
        return self.pack("attach", self.instance_id, document_id, self.limits.ttl_ms, PAGE_BYTES)

    async def follow(self, document_id: str) -> DocumentState:
        """Follow the document from now on; its state holding every earlier event."""
        loaded = await self.attach(document_id)
        assert loaded is not None
        return loaded.state

    async def attach(
        self, document_id: str, on_cut: Callable[[int], bool] | None = None
    ) -> Loaded | None:
        """ATTACH: follow the document and load its state. ``on_cut(seq)`` runs when
        the reply arrives, in stream order; if it returns False the load was
        superseded and None is returned."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def cut(reply: Any) -> None:
            if future.done():
                return
            if isinstance(reply, BaseException):
                future.set_exception(reply)
                return
            if on_cut is not None and not on_cut(int(reply[0])):
                future.set_result(None)
                return
            future.set_result(reply)

        self.conn.send_packed(self.follow_packed(document_id), cut)
        try:
            raw = await future
        except ReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            await self.load_scripts()
            return await self.attach(document_id, on_cut)
        if raw is None:
            return None
        return await self._complete(document_id, raw)

    async def unfollow(self, *documents: str) -> None:
        for i in range(0, len(documents), TOUCH_BATCH):
            await self.call("detach", self.instance_id, *documents[i : i + TOUCH_BATCH])

    async def load(self, document_id: str) -> DocumentState:
        """A document's state, followed or not (the API's presence read)."""
        raw = await self.call("load", document_id, PAGE_BYTES)
        return (await self._complete(document_id, raw)).state

    async def _complete(self, document_id: str, raw: Sequence[Any]) -> Loaded:
        """Read the stored messages past the first page, a page per call. Messages the
        budgets dropped meanwhile are dropped here too, with everything older: the
        events that dropped them come after the cut and evict nothing more then."""
        head, tail = int(raw[3]), int(raw[4])
        stored: list[bytes] = list(raw[5])
        following = head + len(stored)
        while following < tail:
            page = await self.call("stored", document_id, following, tail, PAGE_BYTES)
            now_head, items = int(page[0]), page[1:]
            if now_head > following:
                stored, head, following = [], now_head, now_head
            if not items:
                break
            stored.extend(items)
            following += len(items)
        return Loaded(build_state(document_id, raw, stored), head)


def _runs(items: Sequence[tuple[str, Event]]) -> list[tuple[str, list[Event]]]:
    """Consecutive events of one document, grouped (order kept)."""
    runs: list[tuple[str, list[Event]]] = []
    for doc, event in items:
        if runs and runs[-1][0] == doc:
            runs[-1][1].append(event)
        else:
            runs.append((doc, [event]))
    return runs
