"""An async Python client for the CPC signaling protocol (aiohttp).

::

    async with Client("ws://127.0.0.1:8765/ws", user_id) as client:
        snapshot = await client.join(doc)        # who is there, their presence, comments
        await client.cursor(doc, line=3, column=7)
        async for message in client:             # typed structs
            print(message)

``join`` resolves when the server's acknowledgement (the echo of the join)
arrives, with the snapshot that came before it. If the connection drops, the
client reconnects with exponential backoff and jitter, re-joins its documents,
(except after a close for policy, 1008, or a frame too big, 1009, which a retry
cannot cure) and yields a :class:`Reconnected` marker followed by each document's new
snapshot and acknowledgement, so a consumer can rebuild its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import aiohttp
import msgspec

from .protocol import (
    Annotation,
    Comment,
    CursorUpdate,
    Decoder,
    DocumentMessage,
    Error,
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

log = logging.getLogger("cpc_signaling.client")

__all__ = ["Client", "ClientError", "JoinError", "Reconnected", "now_timestamp"]


# Closes a reconnect cannot cure: policy (bad or expired token, error budget, kicked by
# the server's API) and a frame too big. 1001 (restart) and 1013 (try later) are retried.
_FINAL_CLOSE_CODES = frozenset({1008, 1009})


class ClientError(Exception):
    """The client cannot do what was asked (not connected, closed)."""


class JoinError(ClientError):
    """The server refused a join; ``error`` is its Error message."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class Reconnected(msgspec.Struct, frozen=True):
    """Yielded after a reconnect; each re-joined document's snapshot follows."""

    attempt: int


def now_timestamp() -> str:
    """The current time as an RFC 3339 timestamp in UTC, millisecond precision."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class _PendingJoin:
    __slots__ = ("future", "snapshot")

    def __init__(self, future: asyncio.Future[list[Message]]) -> None:
        self.future = future
        self.snapshot: list[Message] = []


class Client:
    """One WebSocket to a cpc-signaling server, for one user."""

    def __init__(
        self,
        url: str,
        user_id: str,
        *,
        token: str | None = None,
        reconnect: bool = True,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
        queue_size: int = 10_000,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.user_id = user_id.lower()
        self.token = token
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._own_session = session is None
        self._session = session
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # Bounded: a consumer that stops iterating stops the reader, and so the
        # server's writes to us, instead of growing memory here.
        self._queue: asyncio.Queue[Message | Reconnected | None] = asyncio.Queue(queue_size)
        self._decoder = Decoder(accept_errors=True, max_content_chars=1 << 30)
        self._joins: dict[str, _PendingJoin] = {}
        self._leaves: dict[str, asyncio.Future[None]] = {}
        self.documents: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self.close_code: int | None = None

    # -- connection ---------------------------------------------------------

    async def connect(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._ws = await self._open()
        self._reader = asyncio.create_task(self._read_loop())
        return self

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        params = {"token": self.token} if self.token else None
        return await self._session.ws_connect(
            self.url, params=params, autoping=True, heartbeat=None, max_msg_size=0
        )

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._own_session and self._session is not None:
            await self._session.close()
        self._fail_pending(ClientError("client closed"))

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    # -- reading ------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Message | Reconnected]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message | Reconnected]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def receive(self, timeout: float | None = None) -> Message | Reconnected:
        """The next incoming message (not part of a join snapshot)."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            raise ClientError(f"connection closed ({self.close_code})")
        return item

    async def _read_loop(self) -> None:
        attempt = 0
        while True:
            ws = self._ws
            assert ws is not None
            async for raw in ws:
                if raw.type is aiohttp.WSMsgType.TEXT:
                    try:
                        message = self._decoder.decode(raw.data)
                    except ProtocolError as exc:
                        log.warning("undecodable frame from server: %s", exc.message)
                        continue
                    await self._route(message)
            self.close_code = ws.close_code
            if self._closing or not self.reconnect or self.close_code in _FINAL_CLOSE_CODES:
                break
            attempt += 1
            if not await self._reconnect(attempt):
                break
            attempt = 0
        self._fail_pending(ClientError(f"connection closed ({self.close_code})"))
        await self._queue.put(None)

    async def _reconnect(self, attempt: int) -> bool:
        delay = self.backoff_initial
        while not self._closing:
            # Full jitter: spreads a crowd of clients whose server just restarted.
            await asyncio.sleep(random.uniform(0, delay))
            try:
                self._ws = await self._open()
            except (aiohttp.ClientError, OSError) as exc:
                log.info("reconnect failed (%s); retrying", exc)
                delay = min(delay * 2, self.backoff_max)
                continue
            await self._queue.put(Reconnected(attempt))
            for doc in sorted(self.documents):
                await self._send(JoinDocument(document_id=doc, user_id=self.user_id))
                self._joins.setdefault(doc, _PendingJoin(self._rejoin_future()))
            return True
        return False

    def _rejoin_future(self) -> asyncio.Future[list[Message]]:
        # A re-join's snapshot goes to the stream instead of a caller.
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(self._forward_snapshot)
        return future

    def _forward_snapshot(self, future: asyncio.Future[list[Message]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        for message in future.result():
            self._queue.put_nowait(message)

    async def _route(self, message: Message) -> None:
        if isinstance(message, Error):
            refused = self._join_for_error(message)
            if refused is not None:
                doc, refused_join = refused
                del self._joins[doc]
                self.documents.discard(doc)
                if not refused_join.future.done():
                    refused_join.future.set_exception(JoinError(message))
                return
            await self._queue.put(message)
            return
        doc = message.document_id
        join = self._joins.get(doc)
        if join is not None:
            if type(message) is JoinDocument and message.user_id == self.user_id:
                del self._joins[doc]
                if not join.future.done():
                    join.snapshot.append(message)
                    join.future.set_result(join.snapshot)
                return
            join.snapshot.append(message)
            return
        if type(message) is LeaveDocument and message.user_id == self.user_id:
            leave = self._leaves.pop(doc, None)
            if leave is not None and not leave.done():
                leave.set_result(None)
                return
        await self._queue.put(message)

    def _join_for_error(self, error: Error) -> tuple[str, _PendingJoin] | None:
        for doc, join in self._joins.items():
            if doc in error.message:
                return doc, join
        return None

    def _fail_pending(self, exc: Exception) -> None:
        for join in self._joins.values():
            if not join.future.done():
                join.future.set_exception(exc)
                join.future.exception()
        self._joins.clear()
        for leave in self._leaves.values():
            if not leave.done():
                leave.set_exception(exc)
                leave.exception()
        self._leaves.clear()

    # -- sending ------------------------------------------------------------

    async def _send(self, message: DocumentMessage) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ClientError("not connected")
        await ws.send_str(encode(message).decode())

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as it is (text for str, binary for bytes): for tests and tools."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ClientError("not connected")
        if isinstance(data, str):
            await ws.send_str(data)
        else:
            await ws.send_bytes(data)

    async def join(self, document_id: str, *, timeout: float = 10.0) -> list[Message]:
        """Join a document; returns its snapshot, ending with the acknowledgement.

        Raises :class:`JoinError` when the server refuses.
        """
        doc = document_id.lower()
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._joins[doc] = _PendingJoin(future)
        self.documents.add(doc)
        await self._send(JoinDocument(document_id=doc, user_id=self.user_id))
        return await asyncio.wait_for(future, timeout)

    async def leave(self, document_id: str, *, timeout: float = 10.0) -> None:
        """Leave a document; returns when the server acknowledged it."""
        doc = document_id.lower()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leaves[doc] = future
        self.documents.discard(doc)
        await self._send(LeaveDocument(document_id=doc, user_id=self.user_id))
        await asyncio.wait_for(future, timeout)

    async def cursor(self, document_id: str, line: int, column: int) -> None:
        await self._send(
            CursorUpdate(
                document_id=document_id,
                user_id=self.user_id,
                position=Position(line=line, column=column),
                timestamp=now_timestamp(),
            )
        )

    async def selection(
        self, document_id: str, start: tuple[int, int], end: tuple[int, int]
    ) -> None:
        await self._send(
            SelectionUpdate(
                document_id=document_id,
                user_id=self.user_id,
                selection=_selection(start, end),
                timestamp=now_timestamp(),
            )
        )

    async def typing(self, document_id: str, is_typing: bool = True) -> None:
        await self._send(
            TypingIndicator(
                document_id=document_id,
                user_id=self.user_id,
                is_typing=is_typing,
                timestamp=now_timestamp(),
            )
        )

    async def presence(
        self,
        document_id: str,
        *,
        cursor: tuple[int, int],
        selection: tuple[tuple[int, int], tuple[int, int]],
        is_typing: bool,
    ) -> None:
        await self._send(
            PresenceUpdate(
                document_id=document_id,
                user_id=self.user_id,
                cursor=Position(line=cursor[0], column=cursor[1]),
                selection=_selection(*selection),
                is_typing=is_typing,
                timestamp=now_timestamp(),
            )
        )

    async def status(self, document_id: str, status: str) -> None:
        await self._send(
            PresenceStatus(
                document_id=document_id,
                user_id=self.user_id,
                status=status,
                timestamp=now_timestamp(),
            )
        )

    async def annotate(self, document_id: str, line: int, column: int, content: str) -> None:
        await self._send(
            Annotation(
                document_id=document_id,
                user_id=self.user_id,
                position=Position(line=line, column=column),
                content=content,
                timestamp=now_timestamp(),
            )
        )

    async def comment(self, document_id: str, line: int, column: int, content: str) -> None:
        await self._send(
            Comment(
                document_id=document_id,
                user_id=self.user_id,
                position=Position(line=line, column=column),
                content=content,
                timestamp=now_timestamp(),
            )
        )

    async def send(self, message: DocumentMessage) -> None:
        """Send any message struct as it is."""
        await self._send(message)


def _selection(start: tuple[int, int], end: tuple[int, int]) -> Selection:
    return Selection(
        start=Position(line=start[0], column=start[1]),
        end=Position(line=end[0], column=end[1]),
    )
