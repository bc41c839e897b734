"""The Redis backend: many ``cpc-signaling`` instances behave as one service.

Two parts, each usable (and tested) on its own:

* :class:`RedisPresenceStore`: the canonical state of every document (members,
  presence in force, stored annotations and comments) and its sequence counter.
  Each event is one Lua script (``redis_scripts.COMMIT``) that applies it,
  numbers it and publishes it, atomically.
* :class:`RedisBroker`: one pub/sub connection per instance, one channel per
  document, reference-counted subscriptions; delivers each envelope
  (seq, origin, event) to a callback.

:class:`RedisBackend` ties them to the server: events go to Redis in submit
order over one connection (pipelined); every instance, this one included,
applies a document's events strictly in sequence order as they come back over
pub/sub, so nothing is delivered twice. A supervisor task owns the connection:
it heartbeats, reaps dead instances, notices a dead listener, and on any
failure falls back to local sequencing, retries with capped exponential
backoff and jitter, and on reconnect re-registers this instance's members,
resubscribes and reconciles every replica (``Hub.resync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ..core import DocumentState, Event, Left, Relayed
from ..core.state import STORED_KINDS
from ..server.config import Config
from . import redis_scripts as scripts
from .base import BackendHooks, BackendStartError, EventSink

log = logging.getLogger("cpc_signaling.redis")

Envelope = Callable[[str, int, str, Event], None]
"""Called by the broker with (document_id, seq, origin instance, event)."""

# Limits (every queue has one): events waiting for Redis, events per pipeline,
# memberships reaped per script call, envelopes buffered while a document loads.
MAX_PENDING: Final = 100_000
# Leaves have room of their own past MAX_PENDING: a refused leave leaves a ghost
# member (until this instance retires or is reaped), so they are refused last.
LEAVE_HEADROOM: Final = 100_000
BATCH: Final = 256
REAP_BATCH: Final = 1000
MAX_BUFFERED: Final = 50_000
TOUCH_BATCH: Final = 1000  # documents per TOUCH script call
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 2.0


def _client(url: str) -> Redis:
    # No hidden retries: a failure must reach the supervisor, which owns recovery.
    return Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=0,
    )


class _Scripts:
    """SHA-addressed scripts, loaded again after NOSCRIPT (a restarted Redis)."""

    def __init__(self) -> None:
        self.source = {
            "commit": scripts.COMMIT,
            "load": scripts.LOAD,
            "reap": scripts.REAP,
            "heartbeat": scripts.HEARTBEAT,
            "sync": scripts.SYNC,
            "retire": scripts.RETIRE,
            "touch": scripts.TOUCH,
        }
        self.sha: dict[str, str] = {}

    async def load_all(self, client: Redis) -> None:
        for name, source in self.source.items():
            self.sha[name] = await client.script_load(source)

    async def call(self, client: Redis, name: str, *args: Any) -> Any:
        if name not in self.sha:
            await self.load_all(client)
        try:
            return await client.evalsha(self.sha[name], 0, *args)
        except NoScriptError:
            await self.load_all(client)
            return await client.evalsha(self.sha[name], 0, *args)


def build_state(document_id: str, raw: Sequence[Any], max_stored: int) -> DocumentState:
    """A replica from the LOAD script's answer."""
    seq, conns_flat, users, pres_flat, stored = raw
    state = DocumentState(document_id, max_stored=max_stored, seq=int(seq))
    conns_of: dict[str, list[str]] = {}
    for i in range(0, len(conns_flat), 2):
        conns_of.setdefault(conns_flat[i + 1].decode(), []).append(conns_flat[i].decode())
    presence_of: dict[str, list[tuple[int, str, bytes]]] = {}
    for i in range(0, len(pres_flat), 2):
        user, kind = pres_flat[i].decode().split(" ", 1)
        set_at, frame = pres_flat[i + 1].split(b" ", 1)
        presence_of.setdefault(user, []).append((int(set_at), kind, frame))
    for raw_user in users:
        user = raw_user.decode()
        presence = sorted(presence_of.get(user, ()))
        state.restore_user(user, sorted(conns_of.get(user, ())), [(k, f) for _, k, f in presence])
    state.load_stored(stored)
    return state


class RedisPresenceStore:
    """Canonical document state in Redis; every write is one atomic Lua script."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        instance_id: str,
        max_members: int = 1000,
        max_stored: int = 1000,
        document_ttl: float = 7 * 24 * 3600.0,
        scripts_: _Scripts | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.instance_id = instance_id
        self.max_members = max_members
        self.max_stored = max_stored
        self.ttl_ms = max(1, int(document_ttl * 1000))
        self.scripts = scripts_ or _Scripts()
        self._encode = msgspec.msgpack.Encoder().encode

    def _head(self) -> list[Any]:
        return [self.prefix, self.instance_id, self.max_members, self.max_stored, self.ttl_ms]

    @staticmethod
    def _args(doc: str, event: Event) -> list[Any]:
        # The script builds each envelope's msgpack payload (an empty payload
        # argument): a Relayed frame crosses to Redis once.
        if type(event) is Relayed:
            return [doc, "R", event.conn, event.user, event.kind, event.frame, ""]
        return [doc, "J" if type(event) is not Left else "L", event.conn, event.user, "", "", ""]

    async def commit(self, items: Sequence[tuple[str, Event]]) -> list[int]:
        """Sequence, apply and publish ``items`` in order (one script per batch)."""
        args = [*self._head(), ""]
        for doc, event in items:
            args.extend(self._args(doc, event))
        seqs = await self.scripts.call(self.client, "commit", *args)
        return [int(s) for s in seqs]

    async def commit_pipelined(
        self, batches: Sequence[Sequence[tuple[str, Event]]], first: int | None = None
    ) -> None:
        """Several commit scripts in one round trip, in order. ``first``: number the
        events first, first + 1, ... in their envelopes' origin ("ORIGIN#N")."""
        if "commit" not in self.scripts.sha:
            await self.scripts.load_all(self.client)
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            n = first
            for items in batches:
                args = [*self._head(), "" if n is None else n]
                if n is not None:
                    n += len(items)
                for doc, event in items:
                    args.extend(self._args(doc, event))
                pipe.evalsha(self.scripts.sha["commit"], 0, *args)
            results = await pipe.execute(raise_on_error=False)
            failed = [r for r in results if isinstance(r, Exception)]
            if not failed:
                return
            if (
                attempt == 0
                and all(isinstance(r, NoScriptError) for r in failed)
                and len(failed) == len(results)
            ):
                await self.scripts.load_all(self.client)  # Redis restarted: nothing ran
                continue
            raise failed[0]

    async def load(self, document_id: str) -> DocumentState:
        raw = await self.scripts.call(self.client, "load", self.prefix, document_id)
        return build_state(document_id, raw, self.max_stored)

    async def reap(self, instance_id: str) -> int:
        """Left for every membership of a dead instance; 0 if it is alive (or had none)."""
        total = 0
        while True:
            done, remaining = await self.scripts.call(
                self.client,
                "reap",
                self.prefix,
                instance_id,
                self.instance_id,
                self.max_members,
                self.max_stored,
                self.ttl_ms,
                REAP_BATCH,
            )
            if done < 0:
                return total
            total += int(done)
            if not remaining:
                return total

    async def heartbeat(self, timeout: float) -> tuple[bool, list[str]]:
        """Refresh this instance's liveness; (was it alive, ids of dead instances)."""
        out = await self.scripts.call(
            self.client,
            "heartbeat",
            self.prefix,
            self.instance_id,
            max(1, int(timeout * 1000)),
            self.ttl_ms,
        )
        return bool(out[0]), [x.decode() for x in out[1:]]

    async def sync(self, held: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
        """Make Redis hold exactly ``held`` (doc, conn, user) for this instance.

        Returns the (doc, conn) memberships Redis lacked and now has.
        """
        args = [*self._head()[:2], self.instance_id, self.max_members, self.max_stored]
        args.append(self.ttl_ms)
        for triple in held:
            args.extend(triple)
        joined = await self.scripts.call(self.client, "sync", *args)
        return [tuple(x.decode().split(" ", 1)) for x in joined]

    async def retire(self) -> int:
        """Remove this instance's liveness and memberships (after a drain)."""
        return int(
            await self.scripts.call(
                self.client, "retire", self.prefix, self.instance_id, self.max_stored, self.ttl_ms
            )
        )

    async def touch(self, documents: Sequence[str]) -> None:
        for i in range(0, len(documents), TOUCH_BATCH):  # a short script at a time
            chunk = documents[i : i + TOUCH_BATCH]
            await self.scripts.call(self.client, "touch", self.prefix, self.ttl_ms, *chunk)


class RedisBroker:
    """One pub/sub connection; a channel per document, reference-counted."""

    def __init__(self, client: Redis, *, prefix: str, instance_id: str, deliver: Envelope) -> None:
        self.client = client
        self.prefix = prefix
        self.instance_id = instance_id
        self.deliver = deliver
        self.pubsub: PubSub = client.pubsub()
        self.refs: dict[str, int] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._doc_prefix = f"{prefix}:doc:".encode()
        self._control = f"{prefix}:ctl:{instance_id}".encode()
        self._decode = msgspec.msgpack.Decoder(Event).decode
        self.last_beat = time.monotonic()

    def channel(self, document_id: str) -> bytes:
        return self._doc_prefix + document_id.encode()

    async def open(self) -> None:
        """Subscribe the control channel (so the connection is always subscribed)."""
        await self.pubsub.subscribe(self._control)
        while True:
            message = await self.pubsub.get_message(timeout=5.0)
            if message is None:
                raise ConnectionError("no subscribe confirmation from Redis")
            if message["type"] == "subscribe":
                return

    async def subscribe(self, document_id: str) -> None:
        """Receive ``document_id``'s envelopes; returns once Redis confirmed."""
        refs = self.refs.get(document_id, 0)
        self.refs[document_id] = refs + 1
        channel = self.channel(document_id)
        future = self._confirm.get(channel)
        if refs == 0:
            future = asyncio.get_running_loop().create_future()
            self._confirm[channel] = future
            await self.pubsub.execute_command("SUBSCRIBE", channel)
        if future is not None:
            await asyncio.wait_for(asyncio.shield(future), 5.0)

    async def unsubscribe(self, document_id: str) -> None:
        refs = self.refs.get(document_id, 0) - 1
        if refs > 0:
            self.refs[document_id] = refs
            return
        self.refs.pop(document_id, None)
        channel = self.channel(document_id)
        self._confirm.pop(channel, None)
        await self.pubsub.execute_command("UNSUBSCRIBE", channel)

    async def listen(self) -> None:
        """Read envelopes until the connection fails (then raise)."""
        pubsub = self.pubsub
        doc_prefix = self._doc_prefix
        cut = len(doc_prefix)
        while True:
            response = await pubsub.parse_response(block=True)
            if response is None:
                continue
            kind = response[0]
            if kind == b"message":
                channel, data = response[1], response[2]
                if channel.startswith(doc_prefix):
                    seq, origin, payload = data.split(b" ", 2)
                    self.deliver(
                        channel[cut:].decode(), int(seq), origin.decode(), self._decode(payload)
                    )
                elif channel == self._control:
                    self.last_beat = time.monotonic()
            elif kind == b"subscribe":
                future = self._confirm.pop(response[1], None)
                if future is not None and not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(ConnectionError("broker closed"))
                future.exception()
        self._confirm.clear()


class _Doc:
    """A document this instance follows: where its event stream stands."""

    __slots__ = ("applied", "buffer", "live", "refs")

    def __init__(self) -> None:
        self.refs = 0
        self.applied = 0  # seq of the last event handed to the sink
        self.live = False  # False: envelopes are buffered until the state is loaded
        self.buffer: list[tuple[int, Event]] = []


class _Failed(Exception):
    """A part of the backend asked the supervisor to reconnect."""


class RedisBackend:
    """Shared state and fan-out in Redis; see the module docstring."""

    name = "redis"

    def __init__(self, url: str, *, config: Config, instance_id: str) -> None:
        if any(c.isspace() or c == "#" for c in instance_id) or not instance_id:
            raise ValueError("an instance id must be non-empty and contain no whitespace or '#'")
        self.url = url
        self.config = config
        self.instance_id = instance_id
        self._mine = instance_id + "/"  # this instance's connection ids start so
        self.prefix = config.redis_prefix
        self._sink: EventSink | None = None
        self._hooks = BackendHooks()
        self._mode = "down"  # down: sequence locally; restoring: queue; up: send to Redis
        self._queue: deque[tuple[str, Event]] = deque()
        self._inflight: list[tuple[str, Event]] = []
        # This instance's events are numbered as written (_written: the last number
        # given); _echoed is the highest number seen back in an envelope. After a
        # failure only in-flight events past _echoed are applied locally: the
        # others reached Redis and were already applied here.
        self._written = 0
        # Annotations and comments sequenced locally while Redis was away: committed
        # to Redis by the restore (so other instances and later joiners get them).
        self._local_stored: list[tuple[str, Event]] = []
        self._inflight_first = 1
        self._echoed = 0
        self._tag = instance_id + "#"
        self._wake = asyncio.Event()
        self._docs: dict[str, _Doc] = {}
        self._scripts = _Scripts()
        self._client: Redis | None = None
        self._store: RedisPresenceStore | None = None
        self._broker: RedisBroker | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._failure: asyncio.Future[None] | None = None
        self._up = asyncio.Event()
        # Set whenever the writer finished a batch or the mode changed (close() waits on it).
        self._progress = asyncio.Event()
        self._closing = False
        self._ready: bool | None = None  # None: not known yet (the first state is logged)
        self._reloads: set[asyncio.Task[None]] = set()

    # -- Backend -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready is True

    async def start(self, sink: EventSink, hooks: BackendHooks | None = None) -> None:
        self._sink = sink
        if hooks is not None:
            self._hooks = hooks
        await self._claim_instance_id()
        self._report(False, "starting")
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-supervisor")
        # Usually Redis is there: wait briefly so /readyz is green right away.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), 1.5)

    async def _claim_instance_id(self) -> None:
        """Take this instance id's liveness key (SET NX) before serving: two running
        instances with one id would share connection ids. A key left by a crashed
        predecessor expires within --instance-timeout: wait for that; a key still
        refreshed after it is another running instance: refuse to start. Redis away:
        nothing to check now (the supervisor connects when it is back)."""
        key = f"{self.prefix}:alive:{self.instance_id}"
        ttl_ms = max(1, int(self.config.instance_timeout * 1000))
        grace = self.config.instance_timeout + self.config.heartbeat_interval + 1.0
        deadline = time.monotonic() + grace
        client = _client(self.url)
        try:
            while not await client.set(key, "1", nx=True, px=ttl_ms):
                if time.monotonic() > deadline:
                    raise BackendStartError(
                        f"instance id {self.instance_id!r} is in use: another running "
                        f"instance keeps Redis key {key} alive; give each instance its "
                        "own --instance-id (or none: a random one)"
                    )
                if deadline - time.monotonic() >= grace - 0.2:
                    log.warning(
                        "instance id %s is held in Redis (a restart after a crash?): "
                        "waiting up to %.1f s for it to expire",
                        self.instance_id,
                        grace,
                    )
                await asyncio.sleep(0.1)
        except (RedisError, OSError) as exc:
            log.warning("could not check instance id %s in Redis: %s", self.instance_id, exc)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def close(self) -> None:
        """Flush queued events (the drain's leaves) to Redis, retire, disconnect."""
        self._closing = True
        # Up or restoring (the queue is written once the restore is done): wait for
        # the queue to reach Redis. Down: the leaves were applied locally; the other
        # instances reap this one's memberships when its liveness key expires.
        deadline = time.monotonic() + max(0.5, self.config.drain_timeout)
        while self._mode != "down" and (self._mode != "up" or self._queue or self._inflight):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        if self._mode == "up" and self._store is not None:
            try:
                await asyncio.wait_for(self._store.retire(), 2.0)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("could not retire instance %s from Redis: %s", self.instance_id, exc)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for task in list(self._reloads):
            task.cancel()
        await self._disconnect()
        self._ready = False
        self._report(False, "closed")
        log.info("Redis backend closed (instance %s)", self.instance_id)

    async def attach(self, document_id: str) -> DocumentState | None:
        doc = self._docs.get(document_id)
        if doc is None:
            doc = self._docs[document_id] = _Doc()
        doc.refs += 1
        if doc.refs > 1:
            return None  # followed already: one subscription per document, whatever the refs
        if self._mode != "up":
            # Local for now; the restore loads it (and reconciles) when Redis is back.
            doc.live = False
            return None
        broker, store, failure = self._broker, self._store, self._failure
        assert broker is not None and store is not None
        doc.live = False
        doc.buffer.clear()
        try:
            await broker.subscribe(document_id)  # first, so nothing after the load is missed
            state = await store.load(document_id)
        except (RedisError, OSError, TimeoutError) as exc:
            if failure is self._failure:
                self._fail(exc)
            return None
        if failure is not self._failure or self._mode != "up":
            return None  # the connection was lost meanwhile: the restore handles this document
        doc.applied = state.seq
        # The caller installs the state right after this returns; then the backlog.
        asyncio.get_running_loop().call_soon(self._go_live, document_id, doc)
        return state

    async def detach(self, document_id: str) -> None:
        doc = self._docs.get(document_id)
        if doc is None:
            return
        doc.refs -= 1
        if doc.refs > 0:
            return
        del self._docs[document_id]
        broker = self._broker
        if self._mode == "up" and broker is not None and document_id in broker.refs:
            try:
                await broker.unsubscribe(document_id)
            except (RedisError, OSError) as exc:
                self._fail(exc)

    def stats(self) -> dict[str, tuple[str, float]]:
        """Gauges for /metrics (read at scrape time by the service)."""
        return {
            "redis_pending_events": (
                "events waiting to be written to Redis (queued and in flight)",
                len(self._queue) + len(self._inflight),
            ),
            "redis_documents": ("documents this instance follows in Redis", len(self._docs)),
        }

    async def load(self, document_id: str) -> DocumentState | None:
        """A document's shared state, read from Redis: for the server-side API
        (``Service.presence``). None while Redis is not up."""
        store = self._store
        if self._mode != "up" or store is None:
            return None
        return await store.load(document_id)

    def submit(self, document_id: str, event: Event) -> bool:
        if self._mode == "down":
            sink = self._sink
            if sink is None:
                raise RuntimeError("backend not started")
            if type(event) is Relayed and event.kind in STORED_KINDS:
                if len(self._local_stored) >= MAX_PENDING:
                    return False  # too many to re-commit later: refused, not lost
                self._local_stored.append((document_id, event))
            sink(document_id, event)  # local sequencing while Redis is away
            return True
        pending = len(self._queue)
        if pending >= MAX_PENDING and (
            type(event) is not Left or pending >= MAX_PENDING + LEAVE_HEADROOM
        ):
            # Overflow policy: Redis is not keeping up. Refused, never silently
            # dropped: the service tells the sender (CONNECTION_ERROR).
            if type(event) is Left:
                log.warning("Redis queue full: leave of %s refused", event.conn)
            return False
        self._queue.append((document_id, event))
        self._wake.set()
        return True

    # -- envelopes -------------------------------------------------------------

    def _on_envelope(self, document_id: str, seq: int, origin: str, event: Event) -> None:
        if origin.startswith(self._tag):
            self._echoed = max(self._echoed, int(origin[len(self._tag) :]))
        doc = self._docs.get(document_id)
        if doc is None or self._mode == "down":
            return
        if not doc.live:
            if len(doc.buffer) < MAX_BUFFERED:
                doc.buffer.append((seq, event))
            return
        if seq == doc.applied + 1:
            doc.applied = seq
            assert self._sink is not None
            self._sink(document_id, event)
            return
        if seq <= doc.applied:
            # The counter went back: Redis lost its data (FLUSHALL, a failover to a
            # stale replica). Re-register everything, as after a restart.
            self._fail(RuntimeError(f"document {document_id}: sequence went back to {seq}"))
            return
        # A gap: a message was lost on the way. Reload the document.
        log.warning(
            "document %s: expected seq %d, got %d: reloading",
            document_id,
            doc.applied + 1,
            seq,
            extra={"document_id": document_id},
        )
        doc.live = False
        doc.buffer.append((seq, event))
        self._spawn_reload(document_id)

    def _go_live(self, document_id: str, doc: _Doc) -> None:
        """Hand the envelopes buffered while loading to the sink, then follow live."""
        if self._docs.get(document_id) is not doc or self._mode == "down":
            return
        backlog = sorted(doc.buffer, key=lambda item: item[0])
        doc.buffer = []
        doc.live = True
        sink = self._sink
        assert sink is not None
        mine = self._mine
        for i, (seq, event) in enumerate(backlog):
            if seq <= doc.applied:
                # Already in the installed state. This instance's own joins and
                # leaves still need their local side (member, snapshot, ack).
                if type(event) is not Relayed and event.conn.startswith(mine):
                    self._hooks.settle(document_id, event)
                continue
            if seq != doc.applied + 1:
                doc.live = False
                doc.buffer = backlog[i:]
                self._spawn_reload(document_id)
                return
            doc.applied = seq
            sink(document_id, event)

    def _settle_leaves(self, document_id: str, doc: _Doc, seq: int) -> None:
        """Before a reloaded state is installed: the local side of this instance's own
        leaves it already contains (so the leavers hear nothing of the resync)."""
        mine = self._mine
        keep: list[tuple[int, Event]] = []
        for item in doc.buffer:
            event = item[1]
            if item[0] <= seq and type(event) is Left and event.conn.startswith(mine):
                self._hooks.settle(document_id, event)
            else:
                keep.append(item)
        doc.buffer = keep

    def _spawn_reload(self, document_id: str) -> None:
        task = asyncio.create_task(self._reload(document_id))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self, document_id: str) -> None:
        store = self._store
        doc = self._docs.get(document_id)
        if store is None or doc is None:
            return
        try:
            state = await store.load(document_id)
        except (RedisError, OSError, TimeoutError) as exc:
            self._fail(exc)
            return
        if self._docs.get(document_id) is not doc or self._mode == "down":
            return
        self._settle_leaves(document_id, doc, state.seq)
        self._hooks.resync(state)
        doc.applied = state.seq
        self._go_live(document_id, doc)

    # -- supervisor --------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        failure = self._failure
        if failure is not None and not failure.done():
            failure.set_exception(_Failed(str(exc) or type(exc).__name__))

    async def _supervise(self) -> None:
        delay = BACKOFF_INITIAL
        while not self._closing:
            tasks: list[asyncio.Task[None]] = []
            try:
                self._failure = asyncio.get_running_loop().create_future()
                await self._connect()
                listener = asyncio.create_task(self._listen(), name="redis-listener")
                tasks.append(listener)
                await self._restore(listener)
                tasks.append(asyncio.create_task(self._write(), name="redis-writer"))
                tasks.append(asyncio.create_task(self._beat(), name="redis-heartbeat"))
                self._mode = "up"
                self._wake.set()
                self._progress.set()
                self._set_ready(True, "connected")
                self._up.set()
                delay = BACKOFF_INITIAL
                done, _ = await asyncio.wait(
                    [*tasks, self._failure], return_when=asyncio.FIRST_COMPLETED
                )
                for finished in done:
                    finished.result()  # raises what stopped it
                raise _Failed("a backend task ended")
            except asyncio.CancelledError:
                for task in tasks:
                    task.cancel()
                raise
            except Exception as exc:
                self._up.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._go_down(exc)
                await self._disconnect()
                if self._closing:
                    return
                # Capped exponential backoff with jitter.
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self) -> None:
        self._client = client = _client(self.url)
        await client.ping()
        self._store = RedisPresenceStore(
            client,
            prefix=self.prefix,
            instance_id=self.instance_id,
            max_members=self.config.max_members_per_document,
            max_stored=self.config.max_stored_per_document,
            document_ttl=self.config.document_ttl,
            scripts_=self._scripts,
        )
        await self._scripts.load_all(client)
        self._broker = RedisBroker(
            client, prefix=self.prefix, instance_id=self.instance_id, deliver=self._on_envelope
        )
        await self._broker.open()

    async def _restore(self, listener: asyncio.Task[None]) -> None:
        """Re-register local members, resubscribe, reload and reconcile every document."""
        store, broker = self._store, self._broker
        assert store is not None and broker is not None
        self._mode = "restoring"  # submits queue up until the replicas are reconciled
        timeout, interval = self.config.instance_timeout, self.config.heartbeat_interval
        await self._race(store.heartbeat(timeout), listener)
        beat = time.monotonic()
        await self._race(store.sync(self._held()), listener)
        while self._local_stored:
            # Stored while Redis was away: to Redis now, before the documents are
            # loaded (this instance is not subscribed yet: no second local delivery).
            batch = self._local_stored[:BATCH]
            await self._race(store.commit(batch), listener)
            del self._local_stored[:BATCH]
        loaded: set[str] = set()
        while True:
            pending = [d for d in self._docs if d not in loaded]
            if not pending:
                return
            for document_id in pending:
                if time.monotonic() - beat > interval:
                    # Many documents to restore: stay alive meanwhile.
                    await self._race(store.heartbeat(timeout), listener)
                    beat = time.monotonic()
                loaded.add(document_id)
                doc = self._docs.get(document_id)
                if doc is None:
                    continue
                doc.live = False
                doc.buffer.clear()
                await self._race(broker.subscribe(document_id), listener)
                state = await self._race(store.load(document_id), listener)
                if self._docs.get(document_id) is not doc:
                    continue
                lost = self._lost_presence(document_id, state)
                if lost:
                    # Remote instances get these live; this one has them already, so
                    # they are part of the state it installs (no second delivery here).
                    await self._race(store.commit(lost), listener)
                    state = await self._race(store.load(document_id), listener)
                if self._keep_vanished(document_id, state):
                    # Give their instances time to re-register before announcing leaves.
                    grace = self.config.instance_timeout + self.config.heartbeat_interval
                    asyncio.get_running_loop().call_later(grace, self._recheck, document_id, doc)
                self._settle_leaves(document_id, doc, state.seq)
                self._hooks.resync(state)
                doc.applied = state.seq
                self._go_live(document_id, doc)

    def _keep_vanished(self, document_id: str, state: DocumentState) -> bool:
        """Keep, for a grace period, users of other instances that the reloaded state
        lacks: after a Redis restart every instance re-registers its own members, and
        until the others have, their users would seem to leave and join again."""
        replica = self._hooks.replica(document_id)
        if replica is None:
            return False
        mine = self.instance_id + "/"
        kept = False
        for user_id, user in replica.users.items():
            if user_id in state.users or any(c.startswith(mine) for c in user.conns):
                continue
            state.restore_user(user_id, sorted(user.conns), user.presence.items())
            kept = True
        return kept

    def _recheck(self, document_id: str, doc: _Doc) -> None:
        if self._docs.get(document_id) is doc and self._mode == "up" and doc.live:
            doc.live = False
            self._spawn_reload(document_id)

    @staticmethod
    async def _race(coro: Any, listener: asyncio.Task[None]) -> Any:
        """Await ``coro`` unless the listener fails first (then raise)."""
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait([task, listener], return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            listener.result()
            raise _Failed("the listener stopped")
        return task.result()

    def _held(self) -> list[tuple[str, str, str]]:
        """(document, connection, user) for every membership of this instance in the
        documents it follows. From the hub's connections, not the replica: a survivor
        that took this instance for dead has reaped them from the replica too."""
        docs = self._docs
        return [held for held in self._hooks.held() if held[0] in docs]

    def _lost_presence(self, document_id: str, state: DocumentState) -> list[tuple[str, Event]]:
        """Presence of this instance's users that the shared state lacks (lost, or set
        while Redis was away): to publish again."""
        replica = self._hooks.replica(document_id)
        if replica is None:
            return []
        mine = self.instance_id + "/"
        events: list[tuple[str, Event]] = []
        seen: set[str] = set()
        for conn, user_id in replica.conns.items():
            if not conn.startswith(mine) or user_id in seen or state.conns.get(conn) != user_id:
                continue
            seen.add(user_id)
            local = replica.users.get(user_id)
            shared = state.users.get(user_id)
            if local is None:
                continue
            for kind, frame in local.presence.items():
                if shared is None or shared.presence.get(kind) != frame:
                    events.append((document_id, Relayed(conn, user_id, kind, frame)))
        return events

    async def _listen(self) -> None:
        broker = self._broker
        assert broker is not None
        try:
            await broker.listen()
        except (RedisError, OSError) as exc:
            raise _Failed(f"pub/sub connection lost: {exc}") from exc
        except Exception:
            # A bug, not an outage: never silent. Logged, counted, then restarted.
            log.exception("the Redis listener died; restarting it")
            self._count_failure("listener")
            raise

    async def _write(self) -> None:
        store = self._store
        assert store is not None
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                batches: list[list[tuple[str, Event]]] = []
                while queue and len(batches) < 8:
                    n = min(len(queue), BATCH)
                    batches.append([queue.popleft() for _ in range(n)])
                self._inflight = [item for batch in batches for item in batch]
                first = self._inflight_first = self._written + 1
                self._written += len(self._inflight)
                await store.commit_pipelined(batches, first)
                self._inflight = []
                self._progress.set()

    async def _beat(self) -> None:
        store, broker = self._store, self._broker
        assert store is not None and broker is not None
        interval = self.config.heartbeat_interval
        touched = time.monotonic()
        broker.last_beat = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            was_alive, dead = await store.heartbeat(self.config.instance_timeout)
            if not was_alive:
                # Declared dead meanwhile (a long stall): our members may have been reaped.
                raise _Failed("this instance's liveness key had expired")
            for other in dead:
                reaped = await store.reap(other)
                if reaped:
                    log.warning(
                        "instance %s is gone: announced %d memberships as left", other, reaped
                    )
                    self._count_reaped(reaped)
            if time.monotonic() - broker.last_beat > 3 * interval + 1.0:
                self._count_failure("listener_stalled")
                raise _Failed("the pub/sub listener stopped receiving")
            now = time.monotonic()
            if now - touched > min(self.config.document_ttl / 3, 600.0):
                touched = now
                await store.touch(list(self._docs))

    def _go_down(self, exc: BaseException) -> None:
        """Fall back to local sequencing; what Redis may not have seen is applied here."""
        was_up = self._mode == "up"
        self._mode = "down"
        self._progress.set()
        self._set_ready(False, f"{type(exc).__name__}: {exc}")
        if was_up:
            self._count_failure("connection")
        for task in list(self._reloads):
            task.cancel()
        # In-flight events seen back already were applied (or are in Redis's state,
        # which the restore loads): apply only the others, never twice.
        seen = max(0, self._echoed - self._inflight_first + 1)
        pending = [*self._inflight[seen:], *self._queue]
        self._inflight = []
        self._queue.clear()
        for doc in self._docs.values():
            doc.live = False
            doc.buffer.clear()
        sink = self._sink
        if sink is not None:
            for document_id, event in pending:
                sink(document_id, event)

    async def _disconnect(self) -> None:
        broker, client = self._broker, self._client
        self._broker = None
        self._store = None
        self._client = None
        if broker is not None:
            await broker.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- reporting -------------------------------------------------------------

    def _report(self, ready: bool, why: str) -> None:
        metrics = self._hooks.metrics
        if metrics is not None:
            metrics.backend_ready.set(1 if ready else 0)

    def _set_ready(self, ready: bool, why: str) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            log.info("Redis backend ready (instance %s)", self.instance_id)
        else:
            log.warning("Redis backend not ready: %s; serving local clients only", why)
        metrics = self._hooks.metrics
        if metrics is not None:
            metrics.backend_state_changes.labels("ready" if ready else "not_ready").inc()
            metrics.backend_ready.set(1 if ready else 0)

    def _count_failure(self, reason: str) -> None:
        metrics = self._hooks.metrics
        if metrics is not None:
            metrics.backend_failures.labels(reason).inc()

    def _count_reaped(self, n: int) -> None:
        metrics = self._hooks.metrics
        if metrics is not None:
            metrics.backend_reaped.inc(n)
