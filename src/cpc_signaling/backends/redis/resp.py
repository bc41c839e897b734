"""One Redis connection, lean: an asyncio Protocol, hiredis for parsing and packing.

The connection speaks RESP3 (``HELLO 3``, Redis 6 or later), so one socket
carries both commands and pub/sub: the replies to this instance's scripts and
the messages other instances' scripts published to it arrive in one stream, in
the order Redis executed them. The engine relies on that order (the snapshot
boundary of a document is the position of its ``ATTACH`` reply in the stream;
see docs/scaling.md), so replies can be handled *synchronously*, in stream
order (:meth:`Connection.send_packed` with a callback), not only through futures.

Commands are written as they are sent (pipelined). There is no read timeout:
the connection may stay quiet for as long as it likes; its owner bounds how
long a command may wait for its reply (:meth:`Connection.oldest`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis

from ...errors import ConnectionLost, ReplyError
from .options import NodeAddress

MessageCallback = Callable[[bytes, bytes], None]
"""(channel, data) of one pub/sub message."""

ReplyCallback = Callable[[Any], None]
"""Called in stream order with a reply, or with the exception that replaces it."""


def _resolve(future: asyncio.Future[Any]) -> ReplyCallback:
    def resolve(reply: Any) -> None:
        if future.done():
            return
        if isinstance(reply, BaseException):
            future.set_exception(reply)
            future.exception()  # retrieved: whoever awaits it still gets it
        else:
            future.set_result(reply)

    return resolve


class Connection(asyncio.Protocol):
    """See the module docstring. Build with :meth:`open`."""

    def __init__(
        self, on_message: MessageCallback | None, on_error: Callable[[BaseException], None] | None
    ) -> None:
        self._reader = hiredis.Reader()
        self._pending: deque[tuple[ReplyCallback, float]] = deque()
        self._transport: asyncio.Transport | None = None
        self._on_message = on_message
        self._on_error = on_error
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribing: dict[bytes, asyncio.Future[None]] = {}

    @classmethod
    async def open(
        cls,
        address: NodeAddress,
        *,
        name: str,
        on_message: MessageCallback | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        timeout: float = 2.0,
    ) -> Connection:
        """Connect, switch to RESP3 (logging in, naming the connection for ``CLIENT
        LIST``) and select the database. ``on_message`` gets every pub/sub message;
        ``on_error`` any exception a callback raised (the connection is closed then)."""
        loop = asyncio.get_running_loop()
        conn = cls(on_message, on_error)
        try:
            async with asyncio.timeout(timeout):
                if address.path:
                    await loop.create_unix_connection(lambda: conn, address.path)
                else:
                    context = address.ssl_context()
                    await loop.create_connection(
                        lambda: conn,
                        address.host,
                        address.port,
                        ssl=context,
                        server_hostname=address.host if context is not None else None,
                    )
                hello: list[Any] = ["HELLO", 3]
                if address.password is not None:
                    hello += ["AUTH", address.username or "default", address.password]
                hello += ["SETNAME", name]
                try:
                    await conn.call(*hello)
                except ReplyError as exc:
                    if "unknown command" in str(exc).lower():
                        raise ConnectionLost(
                            f"Redis {address.name} does not speak RESP3: Redis 6 or later "
                            "is required"
                        ) from None
                    raise
                if address.db:
                    await conn.call("SELECT", address.db)
        except TimeoutError:
            conn.close()
            raise ConnectionLost(f"Redis {address.name}: no answer within {timeout:g} s") from None
        except OSError as exc:
            conn.close()
            raise ConnectionLost(f"Redis {address.name}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        push = hiredis.PushNotification
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if type(reply) is push:
                    self._pushed(reply)
                    continue
                if not pending:
                    raise ConnectionLost("Redis sent a reply nobody asked for")
                handler = pending.popleft()[0]
                if isinstance(reply, hiredis.ReplyError):
                    handler(ReplyError(str(reply)))
                else:
                    handler(reply)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionLost(f"Redis protocol error: {exc}"))
        except ConnectionLost as exc:
            self._fail(exc)
        except Exception as exc:  # a callback's bug: never silent, never half-parsed
            self._fail(ConnectionLost(f"handling a Redis reply failed: {exc!r}"))
            if self._on_error is not None:
                self._on_error(exc)

    def _pushed(self, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            if self._on_message is not None:
                self._on_message(reply[1], reply[2])
        elif kind == b"subscribe" and len(reply) >= 2:
            future = self._subscribing.pop(reply[1], None)
            if future is not None and not future.done():
                future.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection to Redis lost: {exc or 'closed by Redis'}"))

    # -- use -------------------------------------------------------------------------

    @property
    def lost(self) -> asyncio.Future[None]:
        """Done (with the reason as its exception) once the connection is gone."""
        return self._lost

    @property
    def is_open(self) -> bool:
        return not self._lost.done()

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Write one command now; its reply (or ReplyError, ConnectionLost) comes later."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send_packed(hiredis.pack_command(args), _resolve(future))
        return future

    def send_packed(self, packed: bytes, on_reply: ReplyCallback) -> None:
        """Write a packed command (``hiredis.pack_command``); ``on_reply`` is called in
        stream order with its reply, a ReplyError, or ConnectionLost."""
        transport = self._transport
        if transport is None or self._lost.done():
            on_reply(ConnectionLost("not connected to Redis"))
            return
        transport.write(packed)
        self._pending.append((on_reply, time.monotonic()))

    async def call(self, *args: Any) -> Any:
        """Send one command and wait for its reply (see :meth:`oldest` for a bound)."""
        return await self.send(*args)

    async def subscribe(self, *channels: bytes) -> None:
        """Subscribe; returns once Redis confirmed every channel."""
        loop = asyncio.get_running_loop()
        futures = []
        for channel in channels:
            future: asyncio.Future[None] = loop.create_future()
            self._subscribing[channel] = future
            futures.append(future)
        transport = self._transport
        if transport is None or self._lost.done():
            raise ConnectionLost("not connected to Redis")
        command: tuple[Any, ...] = ("SUBSCRIBE", *channels)
        transport.write(hiredis.pack_command(command))
        confirmed: asyncio.Future[Any] = asyncio.gather(*futures)
        lost: asyncio.Future[Any] = self._lost
        done, _ = await asyncio.wait([confirmed, lost], return_when=asyncio.FIRST_COMPLETED)
        if lost in done:
            lost.result()

    def oldest(self) -> float:
        """Seconds the oldest unanswered command has waited (0 when none waits)."""
        if not self._pending:
            return 0.0
        return time.monotonic() - self._pending[0][1]

    def close(self) -> None:
        self._fail(ConnectionLost("connection closed"))

    def _fail(self, exc: ConnectionLost) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
        if not self._lost.done():
            self._lost.set_exception(exc)
            self._lost.exception()  # retrieved: owners await it when they care
        for future in self._subscribing.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()
        self._subscribing.clear()
        pending = self._pending
        while pending:
            handler = pending.popleft()[0]
            with contextlib.suppress(Exception):
                handler(exc)
