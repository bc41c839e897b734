"""One Redis node as one instance uses it: its connection, writer, documents, supervisor.

A node holds the documents that hash to it (``backend.py`` routes them). It has
one RESP3 connection (replies and pub/sub in one ordered stream) and three modes:

* ``DOWN``: no Redis. Events are sequenced here, locally: this instance's own
  clients keep exchanging messages; annotations and comments are kept to be
  committed to Redis once it is back.
* ``RESTORING``: connected; (re-)registering this instance, re-joining its
  memberships, committing what was stored locally, loading every followed
  document and reconciling its replica. Submitted events wait.
* ``UP``: events go to Redis in flushes: at most one flush every
  ``flush_interval`` under load, at once when idle; joins, leaves, annotations
  and comments never wait. A flush is one script for all its documents; its
  reply carries the outcomes of this instance's events, which are then applied
  (in stream order: the reply's place among the other instances' messages).

Fencing: each registration has a token (the value of ``P:alive:I``); a flush
or heartbeat with a stale token is refused. An instance that finds itself
reaped (a refused flush or heartbeat, or another instance's leave of one of its
live connections) stops applying, re-registers and restores, without going
DOWN: its clients never see their own leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Mapping
from functools import partial
from typing import Any, Final, Protocol

import msgspec

from ...core import DocumentState, Event, Joined, Left, Relayed
from ...core.state import STORED_KINDS
from ...errors import ConnectionLost, ReplyError
from ..base import BackendHooks, EventSink
from .options import NodeAddress, RedisOptions
from .resp import Connection
from .store import Limits, Loaded, RedisStore
from .stream import Ordering, Phase, Signal, outcome_of, reaped
from .wire import Batch, Channels, decode_acks, decode_batch


class Owner(Protocol):
    """What a node needs of the backend that owns it (``backend.RedisBackend``): its
    options, where events and hook notices go, and where it reports its state."""

    options: RedisOptions
    sink: EventSink
    hooks: BackendHooks

    def on_control(self, data: bytes) -> None: ...
    def node_changed(self, node: Node, why: str | None) -> None: ...
    def compare_limits(self, node: Node, limits: Mapping[str, str]) -> None: ...
    def count_failure(self, reason: str) -> None: ...
    def count_reaped(self, n: int) -> None: ...
    def count_malformed(self, where: str, channel: bytes, data: bytes) -> None: ...


log = logging.getLogger("cpc_signaling.redis")

# Limits (every queue has one): events waiting to be flushed; leaves have room of
# their own past it (a refused leave leaves a ghost member until this instance
# retires or is reaped, so they are refused last); events per flush; flushes
# sent and not answered; documents loaded at once by a restore.
MAX_PENDING: Final = 100_000
LEAVE_HEADROOM: Final = 100_000
MAX_FLUSH: Final = 2000
MAX_INFLIGHT: Final = 4
RESTORE_BATCH: Final = 32
# Documents kept followed after their last local member left: at most this many
# stored bytes over all of them (and RedisOptions.linger_documents documents).
LINGER_BYTES: Final = 64 << 20
COMMAND_TIMEOUT: Final = 5.0
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 2.0


class Mode(enum.Enum):
    DOWN = "down"
    RESTORING = "restoring"
    UP = "up"


class _Resync(Exception):
    """Connected, but every document must be restored (fenced, or Redis lost data)."""


class _Lost(Exception):
    """The connection is unusable: fall back to local sequencing, reconnect."""


class _Doc:
    """A document this instance follows on this node.

    ``lingering``: nobody here follows it any more, but it stays followed for a
    while (``RedisOptions.linger``), its replica kept up to date here, so that a
    join soon after costs no reload (its stored history may be megabytes).
    """

    __slots__ = ("lingering", "order", "refs", "since")

    def __init__(self) -> None:
        self.refs = 0
        self.order = Ordering()
        self.lingering: DocumentState | None = None
        self.since = 0.0


class _Flush:
    __slots__ = ("groups", "number", "refused")

    def __init__(self, number: int, groups: dict[str, list[Event]]) -> None:
        self.number = number
        self.groups = groups
        self.refused = False


class Node:
    """See the module docstring."""

    def __init__(self, backend: Owner, index: int, address: NodeAddress) -> None:
        options = backend.options
        self.backend = backend
        self.index = index
        self.address = address
        self.name = address.name
        self.instance_id = options.instance_id
        self.mine = options.instance_id + "/"
        self.channels = Channels(options.prefix, address.db)
        self.inbox = self.channels.inbox(options.instance_id)
        self.limits = Limits(
            max_members=options.max_members_per_document,
            max_stored=options.max_stored_per_document,
            max_bytes=options.max_stored_bytes_per_document,
            ttl_ms=max(1, int(options.document_ttl * 1000)),
        )
        self.mode = Mode.DOWN
        self.docs: dict[str, _Doc] = {}
        self.conn: Connection | None = None
        self.store: RedisStore | None = None
        self.token = ""  # the current registration's (fencing)
        # Writer: queued events, flushes sent and not answered, refused ones.
        self.queue: deque[tuple[str, Event]] = deque()
        self._urgent = False
        self._unanswered: deque[_Flush] = deque()
        self._refused: list[_Flush] = []
        self._flushes = 0
        self._last_flush = 0.0
        self._handle: asyncio.Handle | None = None
        self._handle_soon = False
        # Annotations and comments sequenced locally (DOWN), with the flush that
        # carried them if any (0: never flushed): to commit once Redis is back.
        self.local_stored: list[tuple[int, str, Relayed]] = []
        self._trouble: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._reloads: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self.closing = False
        self._changed = asyncio.Event()  # the writer progressed or the mode changed
        self._policy_checked = False
        self.refusing: str | None = None  # why this node will not serve (strict policy)
        # Lingering documents, the longest lingering first, and their stored bytes.
        self._lingering: OrderedDict[str, None] = OrderedDict()
        self._linger_bytes = 0
        self._sweep: asyncio.TimerHandle | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"redis-{self.name}")

    async def close(self, deadline: float) -> None:
        """Flush the queue (the drain's leaves), retire, disconnect."""
        self.closing = True
        while self.mode is not Mode.DOWN and (
            self.mode is Mode.RESTORING or self.queue or self._unanswered
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        store = self.store
        if self.mode is Mode.UP and store is not None:
            try:
                await asyncio.wait_for(store.retire(), 2.0)
            except (ConnectionError, ReplyError, TimeoutError) as exc:
                log.warning(
                    "could not retire instance %s from %s: %s", self.instance_id, self.name, exc
                )
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._disconnect()

    @property
    def ready(self) -> bool:
        return self.mode is Mode.UP

    # -- the supervisor ----------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF_INITIAL
        while not self.closing:
            try:
                if self.conn is None or not self.conn.is_open:
                    await self._connect()
                self._trouble = asyncio.get_running_loop().create_future()
                self._set_mode(Mode.RESTORING)
                await self._guard(self._restore())
                self._set_mode(Mode.UP)
                self.backend.node_changed(self, None)
                delay = BACKOFF_INITIAL
                self._kick(True)
                await self._guard(asyncio.get_running_loop().create_future())
            except asyncio.CancelledError:
                raise
            except _Resync as exc:
                # Connected: restore everything again, without local sequencing.
                log.warning("Redis %s: %s: restoring every document", self.name, exc)
                self.backend.count_failure(_reason(exc))
                self._set_mode(Mode.RESTORING)
                self.backend.node_changed(self, str(exc))
                self._trouble = asyncio.get_running_loop().create_future()
                with contextlib.suppress(_Lost, _Resync, ConnectionError, ReplyError):
                    await self._guard(self._answered())
                self._requeue_refused()
            except Exception as exc:
                was_up = self.mode is Mode.UP
                self._go_down(exc)
                if was_up or not isinstance(exc, _Lost | ConnectionError):
                    self.backend.count_failure(_reason(exc))
                self._disconnect()
                if self.closing:
                    return
                await asyncio.sleep(random.uniform(delay / 2, delay))  # jittered backoff
                delay = min(delay * 2, BACKOFF_MAX)

    async def _guard(self, awaitable: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> Any:
        """Await ``awaitable`` unless trouble comes first (then raise it)."""
        trouble, conn = self._trouble, self.conn
        assert trouble is not None and conn is not None
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait(
            [task, trouble, conn.lost], return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if trouble.done():
            trouble.result()
        conn.lost.result()
        raise _Lost("connection lost")

    def trouble(self, exc: Exception) -> None:
        """Wake the supervisor with ``exc`` (_Resync: stay connected; else reconnect)."""
        trouble = self._trouble
        if trouble is not None and not trouble.done():
            trouble.set_exception(exc)
            trouble.exception()

    async def _connect(self) -> None:
        conn = await Connection.open(
            self.address,
            name=f"cpc:{self.instance_id}",
            on_message=self._on_message,
            on_error=self._on_callback_error,
        )
        self.conn = conn
        self.store = RedisStore(
            conn,
            prefix=self.backend.options.prefix,
            channels=self.channels,
            instance_id=self.instance_id,
            limits=self.limits,
            token=self.token,
        )
        await self.store.load_scripts()
        await conn.subscribe(self.inbox, self.channels.control)
        if not self._policy_checked:
            await self.check_policy(conn)
        if self.refusing:
            raise _Lost(self.refusing)

    async def check_policy(self, conn: Connection) -> None:
        """A maxmemory-policy other than noeviction silently deletes document keys."""
        strict = self.backend.options.strict
        try:
            reply = await conn.call("CONFIG", "GET", "maxmemory-policy")
        except ReplyError as exc:
            self._policy_checked = True
            log.warning(
                "Redis %s: could not check maxmemory-policy (%s): make sure it is "
                "noeviction, or document keys may vanish under memory pressure",
                self.name,
                exc,
            )
            return
        self._policy_checked = True
        if isinstance(reply, dict):
            policy = next(iter(reply.values()), b"")
        else:
            policy = reply[1] if len(reply) > 1 else b""
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
        if policy != "noeviction":
            message = (
                f"Redis {self.name}: maxmemory-policy is {policy}, not noeviction: under "
                "memory pressure Redis deletes document keys (members, sequence numbers); "
                "see docs/scaling.md, sizing maxmemory"
            )
            if strict:
                self.refusing = message + " (refused: --redis-strict)"
                log.error(self.refusing)
            else:
                log.warning(message)

    def _disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.store = None

    def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self._changed.set()

    # -- restore -------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Register, re-join, commit what was stored locally, load every document."""
        store = self.store
        assert store is not None
        options = self.backend.options
        old = self.token
        token = secrets.token_hex(8)
        ok, flushed, limits = await store.register(token, old, options.instance_timeout)
        if not ok:
            raise _Lost(f"instance id {self.instance_id} is registered by another running instance")
        self.token = token
        self.backend.compare_limits(self, limits)
        if not any(t.get_name() == "beat" for t in self._tasks):
            self._tasks.append(asyncio.create_task(self._beat(), name="beat"))
            self._tasks.append(asyncio.create_task(self._watch(), name="watch"))
        # What the previous registration flushed and Redis ran is there already.
        ran = 0
        if old and flushed.startswith(old + " "):
            ran = int(flushed.split(" ", 1)[1])
        self.local_stored = [item for item in self.local_stored if not 0 < item[0] <= ran]
        self._drop_lingering()
        for doc in self.docs.values():
            if doc.order.phase is not Phase.LOADING:
                doc.order.restart()
        await self._sync_memberships(store)
        stored = [
            (doc_id, Relayed("", e.user, e.kind, e.frame)) for _, doc_id, e in self.local_stored
        ]
        if not await store.commit_internal(stored):
            raise _Resync("refused: this instance's registration expired while restoring")
        self.local_stored = []
        stale = await store.members("follows") - set(self.docs)
        if stale:
            await store.unfollow(*sorted(stale))
        loaded: set[str] = set()
        while True:
            pending = [
                d
                for d, doc in self.docs.items()
                if d not in loaded and doc.order.phase is not Phase.LIVE
            ]
            if not pending:
                return
            for start in range(0, len(pending), RESTORE_BATCH):
                chunk = pending[start : start + RESTORE_BATCH]
                loaded.update(chunk)
                results = await asyncio.gather(*(self._load(d) for d in chunk))
                for document_id, result in zip(chunk, results, strict=True):
                    if result is None:
                        continue
                    doc, loaded_state = result
                    state = loaded_state.state
                    lost = self._lost_presence(document_id, state)
                    if lost:
                        # Remote instances get these as events; this one has them already,
                        # so they are part of the state it installs (no second delivery).
                        if not await store.commit_internal(lost):
                            raise _Resync("refused while restoring")
                        again = await self._load(document_id)
                        if again is None:
                            continue
                        doc, loaded_state = again
                        state = loaded_state.state
                    if self._keep_vanished(document_id, state):
                        grace = options.instance_timeout + options.heartbeat_interval
                        asyncio.get_running_loop().call_later(
                            grace, self._recheck, document_id, doc
                        )
                    self._install(document_id, doc, loaded_state, resync=True)

    async def _sync_memberships(self, store: RedisStore) -> None:
        """Make Redis hold exactly this instance's memberships on this node: joins for
        what it lacks (a restart, a reap), leaves for what it has and nobody here
        holds. Read and written a page at a time."""
        redis_has = await store.members("inst")
        held: dict[str, tuple[str, str, str]] = {}
        for document_id, conn, user in self.backend.hooks.held():
            if document_id in self.docs:
                held[f"{document_id} {conn}"] = (document_id, conn, user)
        events: list[tuple[str, Event]] = []
        for member in sorted(redis_has - held.keys()):
            document_id, _, conn = member.partition(" ")
            events.append((document_id, Left(conn, "")))
        for key, (document_id, conn, user) in held.items():
            if key not in redis_has:
                # The user's info as this instance knows it (the join that set it is gone).
                replica = self.backend.hooks.replica(document_id)
                present = replica.users.get(user) if replica is not None else None
                info = present.info if present is not None else b""
                events.append((document_id, Joined(conn, user, info)))
        if events and not await store.commit_internal(events):
            raise _Resync("refused: this instance's registration expired while restoring")

    async def _load(self, document_id: str) -> tuple[_Doc, Loaded] | None:
        """Follow and load a document (ATTACH), for a restore or a reload."""
        doc = self.docs.get(document_id)
        store = self.store
        if doc is None or store is None:
            return None
        order = doc.order
        gen = order.restart()  # supersedes any load of it still on its way
        loaded = await store.attach(document_id, lambda seq: order.cut_at(gen, seq))
        if loaded is None or self.docs.get(document_id) is not doc or order.gen != gen:
            return None
        return doc, loaded

    def _install(self, document_id: str, doc: _Doc, loaded: Loaded, *, resync: bool) -> None:
        """Install a loaded state (resync: over the replica, telling local members what
        changed) and go live."""
        order = doc.order
        hooks = self.backend.hooks
        order.settle_leaves(document_id, hooks.settle)
        if resync:
            hooks.resync(loaded.state)
        signal = order.go_live(
            document_id, loaded.head, len(loaded.state.stored), self.backend.sink, hooks.settle
        )
        self._signal(document_id, signal)

    def _keep_vanished(self, document_id: str, state: DocumentState) -> bool:
        """Keep, for a grace period, users of other instances that the reloaded state
        lacks: after a Redis restart every instance re-registers its own members, and
        until the others have, their users would seem to leave and join again."""
        replica = self.backend.hooks.replica(document_id)
        if replica is None:
            return False
        kept = False
        for user_id, user in replica.users.items():
            if user_id in state.users or any(c.startswith(self.mine) for c in user.conns):
                continue
            state.restore_user(user_id, sorted(user.conns), info=user.info)
            for conn, messages in user.conns.items():
                for kind, (seq, frame) in messages.items():
                    state.restore_presence(conn, seq, kind, frame)
            kept = True
        return kept

    def _recheck(self, document_id: str, doc: _Doc) -> None:
        live = self.mode is Mode.UP and doc.order.phase is Phase.LIVE
        if self.docs.get(document_id) is doc and live:
            doc.order.restart()
            self._spawn_reload(document_id)

    def _lost_presence(self, document_id: str, state: DocumentState) -> list[tuple[str, Event]]:
        """Presence of this instance's connections that the shared state lacks (lost,
        or set while Redis was away): to publish again, per connection, in the order
        it was set."""
        replica = self.backend.hooks.replica(document_id)
        if replica is None:
            return []
        shared = {(conn, kind): frame for conn, _, kind, frame in state.connection_presence()}
        mine = [
            (seq, conn, kind, frame)
            for conn, seq, kind, frame in replica.connection_presence()
            if conn.startswith(self.mine)
            and state.conns.get(conn) is not None
            and state.conns.get(conn) == replica.conns.get(conn)
            and shared.get((conn, kind)) != frame
        ]
        return [
            (document_id, Relayed(conn, replica.conns[conn], kind, frame))
            for _, conn, kind, frame in sorted(mine)
        ]

    def _spawn_reload(self, document_id: str) -> None:
        task = asyncio.create_task(self._reload(document_id))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self, document_id: str) -> None:
        try:
            result = await self._load(document_id)
        except (ConnectionError, ReplyError) as exc:
            self.trouble(_Lost(str(exc)))
            return
        if result is None or self.mode is not Mode.UP:
            return
        doc, loaded = result
        self._install(document_id, doc, loaded, resync=True)

    def _signal(self, document_id: str, signal: Signal) -> None:
        if signal is Signal.OK:
            return
        doc = self.docs.get(document_id)
        if signal is Signal.RELOAD and doc is not None and doc.lingering is not None:
            self._spawn_let_go(document_id)  # nobody here needs it: no reload
            return
        if signal is Signal.RELOAD:
            log.warning(
                "document %s: events missing: reloading",
                document_id,
                extra={"document_id": document_id},
            )
            if self.mode is Mode.UP:
                self._spawn_reload(document_id)
            return
        self.trouble(_Resync(f"document {document_id}: the sequence went back (Redis lost data)"))

    # -- following documents ----------------------------------------------------------

    async def attach(self, document_id: str) -> DocumentState | None:
        doc = self.docs.get(document_id)
        if doc is None:
            doc = self.docs[document_id] = _Doc()
        elif doc.lingering is not None:
            # Followed all along: its replica is current, no reload. From now on its
            # events go to the sink again (the caller installs this state at once).
            state = self._unlinger(document_id, doc)
            doc.refs = 1
            return state
        doc.refs += 1
        if doc.refs > 1:
            return None  # followed already
        if self.mode is not Mode.UP:
            return None  # local for now; the restore loads it
        try:
            result = await self._load(document_id)
        except (ConnectionError, ReplyError) as exc:
            self.trouble(_Lost(str(exc)))
            return None
        if result is None or self.mode is not Mode.UP:
            return None
        _, loaded = result
        # The caller installs the state right after this returns; then the backlog.
        asyncio.get_running_loop().call_soon(self._go_live, document_id, doc, loaded)
        return loaded.state

    def _go_live(self, document_id: str, doc: _Doc, loaded: Loaded) -> None:
        if self.docs.get(document_id) is not doc or doc.order.phase is not Phase.CUT:
            return
        self._install(document_id, doc, loaded, resync=False)

    async def detach(self, document_id: str) -> None:
        doc = self.docs.get(document_id)
        if doc is None or doc.lingering is not None:
            return
        doc.refs -= 1
        if doc.refs > 0:
            return
        linger = self.backend.options.linger
        if linger > 0 and self.mode is Mode.UP and doc.order.phase is Phase.LIVE:
            replica = self.backend.hooks.replica(document_id)
            if replica is not None:
                doc.lingering, doc.since = replica, time.monotonic()
                self._lingering[document_id] = None
                self._linger_bytes += replica.stored_bytes
                self._trim_lingering()
                if self._sweep is None:
                    loop = asyncio.get_running_loop()
                    self._sweep = loop.call_later(linger, self._sweep_lingering)
                return
        await self._let_go(document_id)

    async def _let_go(self, document_id: str) -> None:
        """Stop following a document."""
        doc = self.docs.pop(document_id, None)
        if doc is not None and doc.lingering is not None:
            self._unlinger(document_id, doc)
        store = self.store
        if self.mode is not Mode.DOWN and store is not None:
            # In order after any ATTACH of it (one connection); when DOWN, the next
            # restore unfollows what nobody here follows.
            try:
                await store.unfollow(document_id)
            except (ConnectionError, ReplyError) as exc:
                self.trouble(_Lost(str(exc)))

    def _unlinger(self, document_id: str, doc: _Doc) -> DocumentState:
        state = doc.lingering
        assert state is not None
        doc.lingering = None
        self._lingering.pop(document_id, None)
        self._linger_bytes -= state.stored_bytes
        return state

    def _trim_lingering(self) -> None:
        """Overflow policy: past the count or byte bound, the longest lingering go."""
        limit = self.backend.options.linger_documents
        while self._lingering and (
            len(self._lingering) > limit or self._linger_bytes > LINGER_BYTES
        ):
            self._spawn_let_go(next(iter(self._lingering)))

    def _sweep_lingering(self) -> None:
        self._sweep = None
        linger = self.backend.options.linger
        now = time.monotonic()
        for document_id in list(self._lingering):
            doc = self.docs.get(document_id)
            if doc is None or now - doc.since < linger:
                break
            self._spawn_let_go(document_id)
        if self._lingering:
            oldest = self.docs[next(iter(self._lingering))]
            delay = max(0.05, oldest.since + linger - now)
            self._sweep = asyncio.get_running_loop().call_later(delay, self._sweep_lingering)

    def _spawn_let_go(self, document_id: str) -> None:
        doc = self.docs.get(document_id)
        if doc is not None and doc.lingering is not None:
            self._unlinger(document_id, doc)
            del self.docs[document_id]
        task = asyncio.create_task(self._let_go(document_id))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def _drop_lingering(self) -> None:
        """Forget lingering documents without a word to Redis (a restore, or Redis
        gone): the next restore unfollows what nobody here follows."""
        for document_id in list(self._lingering):
            doc = self.docs.pop(document_id, None)
            if doc is not None and doc.lingering is not None:
                self._unlinger(document_id, doc)
        self._lingering.clear()
        self._linger_bytes = 0

    def _linger_apply(self, document_id: str, event: Event, own: bool, decided: int | None) -> None:
        """A lingering document's event: applied to its replica here, sent to nobody."""
        doc = self.docs.get(document_id)
        state = doc.lingering if doc is not None else None
        if state is None:
            return
        before = state.stored_bytes
        outcome = state.apply(event, max_members=self.limits.max_members, decided=decided)
        self._linger_bytes += state.stored_bytes - before
        if own:
            self.backend.hooks.unfollowed(document_id, event, outcome)

    async def load(self, document_id: str) -> DocumentState | None:
        store = self.store
        if self.mode is not Mode.UP or store is None:
            return None
        return await store.load(document_id)

    # -- the writer -------------------------------------------------------------------

    def submit(self, document_id: str, event: Event) -> bool:
        mode = self.mode
        if mode is Mode.DOWN:
            stored = type(event) is Relayed and event.kind in STORED_KINDS
            if stored:
                if len(self.local_stored) >= MAX_PENDING:
                    return False  # too many to commit later: refused, not lost
                assert type(event) is Relayed
                self.local_stored.append((0, document_id, event))
            self.backend.sink(document_id, event, True, None)  # local sequencing
            return True
        queue = self.queue
        pending = len(queue)
        if pending >= MAX_PENDING and (
            type(event) is not Left or pending >= MAX_PENDING + LEAVE_HEADROOM
        ):
            # Overflow policy: Redis is not keeping up. Refused, never silently
            # dropped: the service tells the sender (CONNECTION_ERROR).
            if type(event) is Left:
                log.warning("Redis queue full: leave of %s refused", event.conn)
            return False
        queue.append((document_id, event))
        urgent = type(event) is not Relayed or event.kind in STORED_KINDS
        if urgent:
            self._urgent = True
        if mode is Mode.UP:
            self._kick(urgent)
        return True

    def _kick(self, urgent: bool) -> None:
        """Schedule a flush: at once if urgent or idle, else when the window ends."""
        if not self.queue or self.mode is not Mode.UP:
            return
        handle = self._handle
        if handle is not None and (self._handle_soon or not urgent):
            return
        inflight = len(self._unanswered)
        if inflight >= MAX_INFLIGHT:
            return  # the next answer kicks again
        loop = asyncio.get_running_loop()
        due = self._last_flush + self.backend.options.flush_interval
        if urgent or self._urgent or (not inflight and loop.time() >= due):
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_soon(self._flush)
            self._handle_soon = True
        elif not inflight and handle is None:
            self._handle = loop.call_at(due, self._flush)
            self._handle_soon = False

    def _flush(self) -> None:
        self._handle = None
        store, conn = self.store, self.conn
        if self.mode is not Mode.UP or not self.queue or store is None or conn is None:
            return
        queue = self.queue
        groups: dict[str, list[Event]] = {}
        for _ in range(min(len(queue), MAX_FLUSH)):
            document_id, event = queue.popleft()
            group = groups.get(document_id)
            if group is None:
                groups[document_id] = [event]
            else:
                group.append(event)
        if not queue:
            self._urgent = False
        self._flushes += 1
        flush = _Flush(self._flushes, groups)
        self._unanswered.append(flush)
        self._last_flush = asyncio.get_running_loop().time()
        conn.send_packed(
            store.pack_flush(flush.number, groups), partial(self._answered_flush, flush)
        )
        if queue:
            self._kick(False)

    def _answered_flush(self, flush: _Flush, reply: Any) -> None:
        """A flush's reply, in stream order: apply this instance's events there."""
        if isinstance(reply, ConnectionLost):
            return  # _go_down applies what was not answered
        unanswered = self._unanswered
        if unanswered and unanswered[0] is flush:
            unanswered.popleft()
        self._changed.set()
        if isinstance(reply, BaseException):
            # A script error (or NOSCRIPT): whether it ran is unknown. Reconnect.
            log.error("Redis %s: a flush failed: %s", self.name, reply)
            flush.refused = False
            self._unanswered.appendleft(flush)
            self.trouble(_Lost(f"flush failed: {reply}"))
            return
        if int(reply[0]) == 0:
            flush.refused = True
            self._refused.append(flush)
            self.trouble(_Resync("fenced: a flush was refused (this instance was declared dead)"))
            return
        sink, linger = self.backend.sink, self._linger_apply
        docs = self.docs
        hooks = self.backend.hooks
        for (document_id, events), ack in zip(
            flush.groups.items(), decode_acks(reply[1]), strict=True
        ):
            doc = docs.get(document_id)
            if doc is None:  # an API publish, say: to no replica here
                for event, decided in zip(events, ack.decided, strict=True):
                    hooks.unfollowed(document_id, event, outcome_of(event, decided))
                continue
            signal = doc.order.receive(
                document_id,
                ack.first,
                events,
                ack.decided,
                True,
                False,
                sink if doc.lingering is None else linger,
            )
            if signal is not Signal.OK:
                self._signal(document_id, signal)
        if self.queue:
            self._kick(self._urgent)

    async def _answered(self) -> None:
        """Wait until every flush sent has its answer (before a restore)."""
        while self._unanswered:
            self._changed.clear()
            await self._changed.wait()

    def _requeue_refused(self) -> None:
        """Refused flushes never ran: their events go first once restored."""
        refused, self._refused = self._refused, []
        events = [(d, e) for flush in refused for d, group in flush.groups.items() for e in group]
        self.queue.extendleft(reversed(events))

    def _go_down(self, exc: BaseException) -> None:
        """Fall back to local sequencing; what Redis may not have run is applied here."""
        self.mode = Mode.DOWN
        self._changed.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for task in list(self._reloads):
            task.cancel()
        self._drop_lingering()
        self.backend.node_changed(self, f"{type(exc).__name__}: {exc}")
        pending: list[tuple[int, str, Event]] = []
        for document_id, doc in self.docs.items():
            # Own events Redis ran whose local side is not done yet.
            pending.extend((-1, document_id, e) for e in doc.order.unapplied_own())
            doc.order = Ordering()
        for flush in [*self._refused, *self._unanswered]:
            pending.extend((flush.number, d, e) for d, group in flush.groups.items() for e in group)
        self._refused = []
        self._unanswered.clear()
        pending.extend((0, d, e) for d, e in self.queue)
        self.queue.clear()
        self._urgent = False
        sink = self.backend.sink
        for number, document_id, event in pending:
            if number >= 0 and type(event) is Relayed and event.kind in STORED_KINDS:
                self.local_stored.append((number, document_id, event))
            sink(document_id, event, True, None)

    # -- what Redis sends -----------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self.inbox:
            try:
                batch = decode_batch(data)
            except msgspec.DecodeError:
                self.backend.count_malformed(self.name, channel, data)
                return
            if not all(len(b.events) == len(b.decided) for b in batch.blocks):
                self.backend.count_malformed(self.name, channel, data)
                return
            self._on_batch(batch)
        elif channel == self.channels.control:
            self.backend.on_control(data)
        else:
            self.backend.count_malformed(self.name, channel, data)

    def _on_batch(self, batch: Batch) -> None:
        own = batch.origin == self.instance_id
        internal = batch.internal
        docs = self.docs
        sink = self.backend.sink
        for block in batch.blocks:
            doc = docs.get(block.doc)
            if doc is None:  # not followed (any more); this instance's own reaps still count
                if own and not internal:
                    for event, decided in zip(block.events, block.decided, strict=True):
                        self.backend.hooks.unfollowed(block.doc, event, outcome_of(event, decided))
                continue
            if (
                not own
                and self.mode is Mode.UP
                and reaped(block.events, self.mine, self.backend.hooks.live)
            ):
                doc.order.restart()
                self.trouble(_Resync("fenced: another instance reaped this one's connections"))
                return
            signal = doc.order.receive(
                block.doc,
                block.first,
                block.events,
                block.decided,
                own,
                internal,
                sink if doc.lingering is None else self._linger_apply,
            )
            if signal is not Signal.OK:
                self._signal(block.doc, signal)

    def _on_callback_error(self, exc: BaseException) -> None:
        """A bug while applying what Redis sent: never silent; logged, counted, healed."""
        log.error("Redis %s: applying a message failed; restoring", self.name, exc_info=exc)
        self.backend.count_failure("listener")
        self.trouble(_Lost(f"applying a message failed: {exc!r}"))

    # -- heartbeat, reaping, watchdog -------------------------------------------------

    async def _beat(self) -> None:
        options = self.backend.options
        touched = time.monotonic()
        while True:
            await asyncio.sleep(options.heartbeat_interval)
            store = self.store
            if store is None:
                return
            token = self.token
            try:
                dead = await store.heartbeat(options.instance_timeout)
            except (ConnectionError, ReplyError) as exc:
                self.trouble(_Lost(str(exc)))
                return
            if dead is None:
                if token == self.token:
                    self.trouble(_Resync("fenced: this instance's registration had expired"))
                continue
            for other in dead:
                try:
                    count = await store.reap(other)
                except (ConnectionError, ReplyError) as exc:
                    self.trouble(_Lost(str(exc)))
                    return
                if count:
                    log.warning(
                        "instance %s is gone: announced %d memberships as left (%s)",
                        other,
                        count,
                        self.name,
                    )
                    self.backend.count_reaped(count)
            now = time.monotonic()
            if now - touched > min(options.document_ttl / 3, 600.0):
                touched = now
                with contextlib.suppress(ConnectionError, ReplyError):
                    await store.touch(list(self.docs))

    async def _watch(self) -> None:
        """A command unanswered too long: Redis (or the way to it) is stuck."""
        while True:
            await asyncio.sleep(0.5)
            conn = self.conn
            if conn is not None and conn.oldest() > COMMAND_TIMEOUT:
                self.trouble(_Lost(f"no answer from Redis {self.name} in {COMMAND_TIMEOUT:g} s"))
                return

    def stats(self) -> tuple[int, int]:
        return len(self.queue) + sum(
            len(e) for f in self._unanswered for e in f.groups.values()
        ), len(self.docs)


def _reason(exc: BaseException) -> str:
    """The label a failure is counted under."""
    text = str(exc)
    if isinstance(exc, _Resync):
        return "fenced" if text.startswith("fenced") else "resync"
    return "connection"
