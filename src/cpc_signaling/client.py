"""An async Python client for the CPC signaling protocol (aiohttp).

::

    async with Client("ws://127.0.0.1:8765/ws", token=jwt) as client:
        await client.join(doc)                   # the snapshot is applied when this returns
        print(client.users(doc))                 # who else is here: info and presence in force
        await client.cursor(doc, line=3, column=7)
        async for message in client:             # every live message, as typed structs
            print(message)

``join`` resolves when the server's acknowledgement (the echo of the join)
arrives, with the snapshot that came before it; a refusal raises
:class:`JoinError` with the server's code and message as soon as it arrives.
If the connection drops, the client reconnects with exponential backoff (capped
at ``backoff_max``, 1 s by default) and full jitter, re-joins its documents,
sends its own presence again, and yields a :class:`Reconnected` marker followed
by each document's new snapshot and acknowledgement. It does not reconnect
after a close for policy (1008: a refused token, the error budget, a kick) or a
frame too big (1009), which a retry cannot cure; with a token *provider*, a
session that was working and is closed with 1008 after ``AUTH_ERROR`` (its
token expired) is retried with a fresh token.

The token travels in the ``Authorization: Bearer`` header, never in the URL.
docs/python.md describes the client in full.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import inspect
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import msgspec

from .errors import ClientError, JoinError
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
    PresenceMessage,
    PresenceStatus,
    PresenceUpdate,
    ProtocolError,
    Selection,
    SelectionUpdate,
    TypingIndicator,
    encode,
)
from .protocol.ids import canonical_uuid
from .protocol.info import encode_info

log = logging.getLogger("cpc_signaling.client")

__all__ = [
    "Client",
    "ClientError",
    "JoinError",
    "Reconnected",
    "TokenProvider",
    "User",
    "now_timestamp",
]

TokenProvider = Callable[[], "str | Awaitable[str]"]
"""A callable (plain or async) returning a fresh token; called before every connect."""

# Closes a reconnect cannot cure: policy (bad or expired token, error budget, kicked by
# the server's API) and a frame too big. 1001 (restart) and 1013 (try later) are retried.
_FINAL_CLOSE_CODES: Final = frozenset({1008, 1009})
_PRESENCE_TYPES: Final = (
    PresenceUpdate,
    CursorUpdate,
    SelectionUpdate,
    TypingIndicator,
    PresenceStatus,
)
# A PresenceUpdate carries cursor, selection and typing: it supersedes earlier ones.
_SUPERSEDED_BY_PRESENCE: Final = frozenset(
    {PresenceUpdate, CursorUpdate, SelectionUpdate, TypingIndicator}
)
_OTHER_TYPE_NAMES: Final = tuple(
    t.__name__ for t in (*_PRESENCE_TYPES, LeaveDocument, Annotation, Comment)
)


class Reconnected(msgspec.Struct, frozen=True):
    """Yielded after a reconnect; each re-joined document's snapshot follows."""

    attempt: int


@dataclass(frozen=True, slots=True)
class User:
    """Another user present in a document, as this client last heard from the server.

    ``presence`` holds the user's presence messages in force, in the order the
    server received them (the latest of each kind; a ``PresenceUpdate``
    supersedes earlier cursor, selection and typing messages); ``cursor``,
    ``selection``, ``is_typing`` and ``status`` are what they add up to
    (``None``/``False`` until the user sent one). ``info`` is the user's info
    (from the user's token, or their join in open mode), ``None`` when they
    have none. Entries are replaced, never changed.
    """

    user_id: str
    info: Mapping[str, Any] | None = None
    cursor: Position | None = None
    selection: Selection | None = None
    is_typing: bool = False
    status: str | None = None
    presence: tuple[PresenceMessage, ...] = field(default=(), compare=True)

    def applied(self, message: PresenceMessage) -> User:
        """This user after ``message``."""
        kind = type(message)
        superseded = _SUPERSEDED_BY_PRESENCE if kind is PresenceUpdate else {kind}
        presence = (*(m for m in self.presence if type(m) not in superseded), message)
        values: dict[str, Any] = {"presence": presence}
        if isinstance(message, PresenceUpdate):
            values.update(
                cursor=message.cursor, selection=message.selection, is_typing=message.is_typing
            )
        elif isinstance(message, CursorUpdate):
            values["cursor"] = message.position
        elif isinstance(message, SelectionUpdate):
            values["selection"] = message.selection
        elif isinstance(message, TypingIndicator):
            values["is_typing"] = message.is_typing
        else:
            values["status"] = message.status
        return _replace(self, values)


def _replace(user: User, values: dict[str, Any]) -> User:
    fields = {name: getattr(user, name) for name in User.__slots__}
    fields.update(values)
    return User(**fields)


def now_timestamp() -> str:
    """The current time as an RFC 3339 timestamp in UTC, millisecond precision."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def token_subject(token: str) -> str | None:
    """The ``sub`` claim of a JWT, read without verifying it (the server verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        sub = claims.get("sub") if isinstance(claims, dict) else None
        return canonical_uuid(sub) if isinstance(sub, str) else None
    except (IndexError, ValueError, binascii.Error):
        return None


class _PendingJoin:
    __slots__ = ("future", "snapshot")

    def __init__(self, future: asyncio.Future[list[Message]] | None) -> None:
        self.future = future  # None: a re-join after a reconnect (its snapshot goes to the stream)
        self.snapshot: list[Message] = []


class _Document:
    """A joined document: who else is here, and this client's own presence in force."""

    __slots__ = ("id", "own", "users")

    def __init__(self, doc_id: str) -> None:
        self.id = doc_id
        self.users: dict[str, User] = {}
        # Own presence messages in force, in the order sent: re-sent after a reconnect.
        self.own: dict[type, PresenceMessage] = {}

    def remember(self, message: PresenceMessage) -> None:
        kind = type(message)
        for superseded in _SUPERSEDED_BY_PRESENCE if kind is PresenceUpdate else (kind,):
            self.own.pop(superseded, None)
        self.own[kind] = message


class Client:
    """One WebSocket to a cpc-signaling server, for one user.

    ``user_id`` may be left out: it is then the token's ``sub`` (read when the
    token is first known, so at ``connect()`` for a provider), or, with no token
    (a server in open mode), a random UUID. ``token`` is a JWT, or a callable
    (plain or async) returning one, called before every connect and reconnect.
    ``info`` (a JSON object of at most 1 KiB encoded: name, avatar, colour, ...)
    is sent with every join; a server in open mode shows it to the others, a
    server with JWT uses the token's ``info`` claim instead.

    ``stream=False`` keeps no live messages for ``receive()`` and iteration (an
    application that only reads :meth:`users` must not let them pile up);
    otherwise at most ``queue_size`` wait there, and a consumer that falls
    further behind stops the client reading from the server (which then treats
    it as a slow reader).
    """

    def __init__(
        self,
        url: str,
        user_id: str | None = None,
        *,
        token: str | TokenProvider | None = None,
        info: Mapping[str, Any] | None = None,
        reconnect: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 1.0,
        connect_timeout: float = 10.0,
        stream: bool = True,
        queue_size: int = 10_000,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self._user_id: str | None = canonical_uuid(user_id) if user_id is not None else None
        if self._user_id is None:
            if isinstance(token, str):
                self._user_id = token_subject(token)
                if self._user_id is None:
                    raise ValueError("the token has no `sub` claim that is a UUID: pass user_id")
            elif token is None:
                self._user_id = canonical_uuid(_random_uuid())
        self._info = _checked_info(info)
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._stream = stream
        self._own_session = session is None
        self._session = session
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._queue: asyncio.Queue[Message | Reconnected | None] = asyncio.Queue(queue_size)
        self._decoder = Decoder(accept_errors=True, max_content_chars=1 << 30)
        self._joins: dict[str, _PendingJoin] = {}
        self._leaves: dict[str, asyncio.Future[None]] = {}
        self._documents: dict[str, _Document] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._last_error: Error | None = None
        self._acknowledged = False  # a join succeeded on the current connection
        self.close_code: int | None = None

    # -- identity -----------------------------------------------------------

    @property
    def user_id(self) -> str:
        """The user this client speaks as (lowercase)."""
        if self._user_id is None:
            raise ClientError("the user_id comes from the token provider's token: connect() first")
        return self._user_id

    @property
    def documents(self) -> set[str]:
        """Documents joined (or being re-joined after a reconnect)."""
        return set(self._documents)

    def users(self, document_id: str) -> dict[str, User]:
        """The other users present in a joined document, oldest join first, by user_id.

        Kept up to date from the join snapshot and every live message. While the
        connection is down it is the last known state, rebuilt from the new
        snapshot on re-join. This client's own user is not in it.
        """
        doc = self._documents.get(document_id.lower())
        if doc is None:
            raise ClientError(f"not joined to {document_id}")
        return dict(doc.users)

    # -- connection ---------------------------------------------------------

    async def connect(self) -> Self:
        """Open the WebSocket; raises :class:`ClientError` (one, clear) if it cannot."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._open()
        except BaseException:
            if self._own_session:
                await self._session.close()
                self._session = None
            raise
        self._reader = asyncio.create_task(self._read_loop())
        return self

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        token = await self._fresh_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._session.ws_connect(
                    self.url, headers=headers, autoping=True, heartbeat=None, max_msg_size=0
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise ClientError(
                f"cannot connect to {self.url}: the server answered {exc.status} {exc.message}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ClientError(f"cannot connect to {self.url}: {_reason(exc)}") from None
        except TimeoutError:
            raise ClientError(
                f"cannot connect to {self.url}: no answer within {self.connect_timeout:g}s"
            ) from None
        self._last_error = None
        self._acknowledged = False
        return ws

    async def _fresh_token(self) -> str | None:
        provider = self._token
        if provider is None or isinstance(provider, str):
            return provider
        try:
            value = provider()
            token = await value if inspect.isawaitable(value) else value
        except Exception as exc:
            raise ClientError(f"token provider failed: {exc}") from None
        if not isinstance(token, str) or not token:
            raise ClientError(f"token provider failed: returned {type(token).__name__}, not a str")
        if self._user_id is None:
            self._user_id = token_subject(token)
            if self._user_id is None:
                raise ClientError("the token has no `sub` claim that is a UUID: pass user_id")
        return token

    async def close(self) -> None:
        """Close for good: no reconnect; pending joins and leaves fail with ClientError."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        self._fail_pending(ClientError("client closed"))
        self._end_stream()

    def _end_stream(self) -> None:
        # The end marker stays in the queue: every later read ends the same way.
        if self._stream:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

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
        self._check_stream()
        while True:
            item = await self._queue.get()
            if item is None:
                self._end_stream()
                return
            yield item

    def _check_stream(self) -> None:
        if not self._stream:
            raise ClientError("this client keeps no stream (stream=False): read users() instead")

    async def receive(self, timeout: float | None = None) -> Message | Reconnected:
        """The next incoming message (not part of a join snapshot)."""
        self._check_stream()
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            self._end_stream()
            raise ClientError(self._closed_reason())
        return item

    def _closed_reason(self) -> str:
        error = self._last_error
        why = f": {error.code}: {error.message}" if error is not None else ""
        return f"connection closed ({self.close_code}){why}"

    async def _put(self, item: Message | Reconnected) -> None:
        if self._stream:
            await self._queue.put(item)

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
            if self._closing or not self._should_reconnect():
                break
            attempt += 1
            if not await self._reconnect(attempt):
                break
            attempt = 0
        error = self._last_error
        pending = JoinError(error) if error is not None else ClientError(self._closed_reason())
        self._fail_pending(pending)
        if self._stream:
            await self._queue.put(None)

    def _should_reconnect(self) -> bool:
        if not self.reconnect:
            return False
        if self.close_code not in _FINAL_CLOSE_CODES:
            return True
        # A working session closed for its token (it expired): a provider may have a fresh one.
        error = self._last_error
        return (
            self.close_code == 1008
            and callable(self._token)
            and self._acknowledged
            and (error is None or error.code == "AUTH_ERROR")
        )

    async def _reconnect(self, attempt: int) -> bool:
        delay = self.backoff_initial
        while not self._closing:
            # Full jitter: spreads a crowd of clients whose server just restarted.
            await asyncio.sleep(random.uniform(0, delay))
            try:
                self._ws = await self._open()
            except ClientError as exc:
                log.info("reconnect failed (%s); retrying", exc)
                delay = min(delay * 2, self.backoff_max)
                continue
            await self._put(Reconnected(attempt))
            for doc in list(self._documents):
                self._joins[doc] = _PendingJoin(None)
                await self._send_join(doc)
            return True
        return False

    async def _route(self, message: Message) -> None:
        if isinstance(message, Error):
            self._last_error = message
            if not self._refuse_joins(message):
                await self._put(message)
            return
        doc_id = message.document_id
        join = self._joins.get(doc_id)
        if join is not None:
            join.snapshot.append(message)
            if type(message) is JoinDocument and message.user_id == self._user_id:
                del self._joins[doc_id]
                await self._joined(doc_id, join)
            return
        doc = self._documents.get(doc_id)
        kind = type(message)
        if kind is LeaveDocument and message.user_id == self._user_id:
            leave = self._leaves.pop(doc_id, None)
            if leave is not None:
                if not leave.done():
                    leave.set_result(None)
                return
        if doc is not None and message.user_id != self._user_id:
            if isinstance(message, JoinDocument):
                doc.users.setdefault(message.user_id, User(message.user_id, info=message.info))
            elif kind is LeaveDocument:
                doc.users.pop(message.user_id, None)
            elif isinstance(message, _PRESENCE_TYPES):
                user = doc.users.get(message.user_id) or User(message.user_id)
                doc.users[message.user_id] = user.applied(message)
        await self._put(message)

    async def _joined(self, doc_id: str, join: _PendingJoin) -> None:
        """The acknowledgement of a join arrived: rebuild the document's map from its snapshot."""
        self._acknowledged = True
        doc = self._documents.get(doc_id)
        if doc is None:  # left (or closed) while the join was on its way
            doc = _Document(doc_id)
            if join.future is not None:
                self._documents[doc_id] = doc
        users: dict[str, User] = {}
        for message in join.snapshot:
            user_id = getattr(message, "user_id", None)
            if user_id is None or user_id == self._user_id:
                continue
            if isinstance(message, JoinDocument):
                users.setdefault(user_id, User(user_id, info=message.info))
            elif isinstance(message, _PRESENCE_TYPES):
                users[user_id] = (users.get(user_id) or User(user_id)).applied(message)
        doc.users = users
        if join.future is not None:
            if not join.future.done():
                join.future.set_result(join.snapshot)
            return
        # A re-join: the snapshot goes to the stream, then our own presence goes out again
        # (the server dropped it with the old connection).
        for message in join.snapshot:
            await self._put(message)
        for own in list(doc.own.values()):
            with contextlib.suppress(ClientError):
                await self._send(own)

    def _refuse_joins(self, error: Error) -> bool:
        """Fail the pending join(s) ``error`` refuses; False when it refuses none."""
        if not self._joins:
            return False
        text = error.message
        named = [doc for doc in self._joins if doc in text]
        if named:
            if any(name in text for name in _OTHER_TYPE_NAMES):
                return False  # about another message of that document, not the join
            refused = named[:1]
        elif error.code == "AUTH_ERROR":
            # Not about one document: the token (missing, bad, expired) or our user_id.
            # Every join of this connection gets the same answer.
            refused = list(self._joins)
        elif error.code == "PARSE_ERROR" and "JoinDocument" in text:
            refused = list(self._joins)[:1]  # frames are answered in order: the oldest
        else:
            return False
        consumed = True
        for doc_id in refused:
            join = self._joins.pop(doc_id)
            self._documents.pop(doc_id, None)
            if join.future is not None:
                if not join.future.done():
                    join.future.set_exception(JoinError(error))
            else:
                # A re-join after a reconnect has no caller: the stream tells the consumer.
                log.warning("re-join of %s refused: %s: %s", doc_id, error.code, error.message)
                consumed = False
        return consumed

    def _fail_pending(self, exc: Exception) -> None:
        for join in self._joins.values():
            if join.future is not None and not join.future.done():
                join.future.set_exception(exc)
                join.future.exception()
        self._joins.clear()
        for leave in self._leaves.values():
            if not leave.done():
                leave.set_exception(exc)
                leave.exception()
        self._leaves.clear()

    # -- sending ------------------------------------------------------------

    async def _send_frame(self, frame: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ClientError("not connected")
        await ws.send_str(frame)

    async def _send(self, message: DocumentMessage) -> None:
        await self._send_frame(encode(message).decode())

    async def _send_join(self, doc_id: str) -> None:
        await self._send(JoinDocument(document_id=doc_id, user_id=self.user_id, info=self._info))

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

        Raises :class:`JoinError` (the server's code and message) as soon as the
        server refuses, :class:`ClientError` when not connected, ``TimeoutError``
        when the server does not answer within ``timeout`` seconds.
        """
        doc_id = canonical_uuid(document_id)
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._joins[doc_id] = _PendingJoin(future)
        self._documents.setdefault(doc_id, _Document(doc_id))
        try:
            await self._send_join(doc_id)
        except ClientError:
            self._joins.pop(doc_id, None)
            self._documents.pop(doc_id, None)
            raise
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if self._joins.get(doc_id) is not None and self._joins[doc_id].future is future:
                del self._joins[doc_id]
            raise TimeoutError(
                f"join {doc_id}: no answer from the server within {timeout:g}s"
            ) from None

    async def leave(self, document_id: str, *, timeout: float = 10.0) -> None:
        """Leave a document; returns when the server acknowledged it.

        The document's map and this client's own presence there are forgotten.
        """
        doc_id = canonical_uuid(document_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leaves[doc_id] = future
        self._documents.pop(doc_id, None)
        self._joins.pop(doc_id, None)
        await self._send(LeaveDocument(document_id=doc_id, user_id=self.user_id))
        await asyncio.wait_for(future, timeout)

    async def _presence(self, message: PresenceMessage) -> bool:
        """Send a presence message and remember it, to send again after a reconnect.

        While the client is reconnecting it is only remembered (returns False).
        """
        doc = self._documents.get(message.document_id)
        if doc is not None:
            doc.remember(message)
        if not self.connected and doc is not None and self.reconnect and not self._closing:
            return False
        await self._send(message)
        return True

    async def cursor(self, document_id: str, line: int, column: int) -> bool:
        """Move this user's cursor. Returns False when only remembered (reconnecting)."""
        return await self._presence(
            CursorUpdate(
                document_id=document_id.lower(),
                user_id=self.user_id,
                position=Position(line=line, column=column),
                timestamp=now_timestamp(),
            )
        )

    async def selection(
        self, document_id: str, start: tuple[int, int], end: tuple[int, int]
    ) -> bool:
        """Set this user's selection (``start == end``: nothing selected)."""
        return await self._presence(
            SelectionUpdate(
                document_id=document_id.lower(),
                user_id=self.user_id,
                selection=_selection(start, end),
                timestamp=now_timestamp(),
            )
        )

    async def typing(self, document_id: str, is_typing: bool = True) -> bool:
        """Say whether this user is typing (send False after a pause)."""
        return await self._presence(
            TypingIndicator(
                document_id=document_id.lower(),
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
    ) -> bool:
        """Cursor, selection and typing in one message."""
        return await self._presence(
            PresenceUpdate(
                document_id=document_id.lower(),
                user_id=self.user_id,
                cursor=Position(line=cursor[0], column=cursor[1]),
                selection=_selection(*selection),
                is_typing=is_typing,
                timestamp=now_timestamp(),
            )
        )

    async def status(self, document_id: str, status: str) -> bool:
        """Set this user's status ("online", "away", "busy", or any 1-64 characters)."""
        return await self._presence(
            PresenceStatus(
                document_id=document_id.lower(),
                user_id=self.user_id,
                status=status,
                timestamp=now_timestamp(),
            )
        )

    async def annotate(self, document_id: str, line: int, column: int, content: str) -> None:
        """Add an annotation; raises ClientError when not connected."""
        await self._send(
            Annotation(
                document_id=document_id.lower(),
                user_id=self.user_id,
                position=Position(line=line, column=column),
                content=content,
                timestamp=now_timestamp(),
            )
        )

    async def comment(self, document_id: str, line: int, column: int, content: str) -> None:
        """Add a comment; raises ClientError when not connected."""
        await self._send(
            Comment(
                document_id=document_id.lower(),
                user_id=self.user_id,
                position=Position(line=line, column=column),
                content=content,
                timestamp=now_timestamp(),
            )
        )

    async def send(self, message: DocumentMessage) -> None:
        """Send any message struct as it is (presence messages are remembered as well)."""
        if isinstance(message, _PRESENCE_TYPES):
            await self._presence(message)
        else:
            await self._send(message)


def _selection(start: tuple[int, int], end: tuple[int, int]) -> Selection:
    return Selection(
        start=Position(line=start[0], column=start[1]),
        end=Position(line=end[0], column=end[1]),
    )


def _random_uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def _checked_info(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``info`` as the join will carry it (None: no info); ValueError when out of bounds."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise TypeError(f"info must be a mapping (a JSON object), not {type(info).__name__}")
    value = dict(info)
    try:
        encode_info(value)
    except ValueError as exc:
        raise ValueError(f"info {exc}") from None
    return value or None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or str(exc.os_error)
    return str(exc) or type(exc).__name__
