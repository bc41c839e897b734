"""The Redis backend: many ``cpc-signaling`` instances behave as one service.

Documents are partitioned over one or more Redis nodes by a stable hash of their
id (:func:`shard`); each node holds its documents' keys, runs their scripts and
carries their events (``node.py``). Losing a node degrades only its documents:
they fall back to local sequencing until it is back. Instance liveness is kept
on every node (each reaps on its own), and orders to every instance
(:meth:`RedisBackend.broadcast`) go through every node that is up.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

from ...core import DocumentState, Event
from ...errors import BackendStartError, ConnectionLost, ReplyError
from ..base import BackendHooks, BackendMetrics, EventSink
from .node import Node
from .options import RedisOptions
from .resp import Connection
from .store import RedisStore

log = logging.getLogger("cpc_signaling.redis")

SEEN_ORDERS: Final = 1000  # order ids remembered (an order comes once per node)


@functools.lru_cache(maxsize=65536)
def shard(document_id: str, nodes: int) -> int:
    """The node a document lives on: a jump consistent hash of its id (adding a node
    at the end of the list moves only the documents that go to the new node)."""
    if nodes == 1:
        return 0
    key = int.from_bytes(hashlib.blake2b(document_id.encode(), digest_size=8).digest(), "big")
    bucket, j = -1, 0
    while j < nodes:
        bucket = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def _no_sink(document_id: str, event: Event, own: bool, decided: int | None) -> None:
    raise RuntimeError("backend not started")


class RedisBackend:
    """Shared state and fan-out in Redis; see the module docstring."""

    name = "redis"
    shared = True

    def __init__(self, options: RedisOptions, metrics: BackendMetrics | None = None) -> None:
        self.options = options
        self.instance_id = options.instance_id
        self.sink: EventSink = _no_sink
        self.hooks = BackendHooks()
        self._metrics = metrics
        self.nodes = [Node(self, i, address) for i, address in enumerate(options.nodes)]
        self._ready: bool | None = None  # None: not known yet (the first state is logged)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._limits_seen: dict[str, str] = {}
        self._malformed_logged = 0.0

    def node_of(self, document_id: str) -> Node:
        return self.nodes[shard(document_id, len(self.nodes))]

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready is True

    async def start(self, sink: EventSink, hooks: BackendHooks | None = None) -> None:
        self.sink = sink
        if hooks is not None:
            self.hooks = hooks
            if self._metrics is None:
                self._metrics = hooks.metrics
        self._report_ready(False)
        await asyncio.gather(*(self._claim(node) for node in self.nodes))
        for node in self.nodes:
            node.start()
        # Usually Redis is there: wait briefly so /readyz is green right away.
        deadline = time.monotonic() + 1.5
        while not all(n.ready for n in self.nodes) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _claim(self, node: Node) -> None:
        """Register this instance id on ``node`` before serving: two running instances
        with one id would share connection ids. A registration left by a crashed
        predecessor expires within --instance-timeout: wait for that; one still
        refreshed after it is another running instance: refuse to start. Redis away:
        nothing to check now (the node registers when it is back)."""
        options = self.options
        grace = options.instance_timeout + options.heartbeat_interval + 1.0
        deadline = time.monotonic() + grace
        token = secrets.token_hex(8)
        try:
            conn = await Connection.open(node.address, name=f"cpc:{self.instance_id}:claim")
        except ConnectionLost as exc:
            log.warning("could not check instance id %s in Redis: %s", self.instance_id, exc)
            return
        try:
            await node.check_policy(conn)
            if node.refusing:
                raise BackendStartError(node.refusing)
            store = RedisStore(
                conn,
                prefix=options.prefix,
                channels=node.channels,
                instance_id=self.instance_id,
                limits=node.limits,
            )
            await store.load_scripts()
            warned = False
            while True:
                ok, _, _ = await store.register(token, "", options.instance_timeout)
                if ok:
                    node.token = token
                    return
                if time.monotonic() > deadline:
                    raise BackendStartError(
                        f"instance id {self.instance_id!r} is in use: another running "
                        f"instance keeps its registration in Redis {node.name} alive; give "
                        "each instance its own --instance-id (or none: a random one)"
                    )
                if not warned:
                    warned = True
                    log.warning(
                        "instance id %s is held in Redis %s (a restart after a crash?): "
                        "waiting up to %.1f s for it to expire",
                        self.instance_id,
                        node.name,
                        grace,
                    )
                await asyncio.sleep(0.1)
        except (ConnectionError, ReplyError) as exc:
            log.warning("could not check instance id %s in Redis: %s", self.instance_id, exc)
        finally:
            conn.close()

    async def close(self) -> None:
        """Flush queued events (the drain's leaves) to Redis, retire, disconnect."""
        deadline = time.monotonic() + max(0.5, self.options.drain_timeout)
        await asyncio.gather(*(node.close(deadline) for node in self.nodes))
        self._ready = False
        self._report_ready(False)
        log.info("Redis backend closed (instance %s)", self.instance_id)

    # -- documents ------------------------------------------------------------------------

    async def attach(self, document_id: str) -> DocumentState | None:
        return await self.node_of(document_id).attach(document_id)

    async def detach(self, document_id: str) -> None:
        await self.node_of(document_id).detach(document_id)

    def submit(self, document_id: str, event: Event) -> bool:
        return self.node_of(document_id).submit(document_id, event)

    async def load(self, document_id: str) -> DocumentState | None:
        """A document's shared state, read from Redis: for the server-side API
        (``Service.presence``). None while its node is not up."""
        return await self.node_of(document_id).load(document_id)

    # -- orders to every instance -------------------------------------------------------

    async def broadcast(self, order: Mapping[str, str]) -> int:
        """Publish ``order`` on the control channel of every node that is up (each
        instance acts once, whichever node it hears it from). Returns how many other
        instances received it; raises ConnectionError when no node could carry it."""
        payload = json.dumps({**order, "origin": self.instance_id, "id": uuid.uuid4().hex})
        receivers, carried = 0, False
        errors: list[str] = []
        for node in self.nodes:
            conn = node.conn
            if conn is None or not conn.is_open:
                errors.append(f"{node.name}: not connected")
                continue
            try:
                got = await asyncio.wait_for(
                    conn.call("PUBLISH", node.channels.control, payload), 2.0
                )
            except (ConnectionError, ReplyError, TimeoutError) as exc:
                errors.append(f"{node.name}: {exc}")
                continue
            carried = True
            receivers = max(receivers, int(got) - 1)  # not counting this instance
        if not carried:
            raise ConnectionError("no Redis node could carry the order: " + "; ".join(errors))
        return receivers

    def on_control(self, data: bytes) -> None:
        try:
            order = json.loads(data)
            if not isinstance(order, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in order.items()
            ):
                raise ValueError("not an object of strings")
        except ValueError:
            self.count_malformed("control", b"control", data)
            return
        if order.get("origin") == self.instance_id:
            return
        key = order.get("id") or data.decode("utf-8", "replace")
        if key in self._seen:
            return  # heard already through another node
        self._seen[key] = None
        while len(self._seen) > SEEN_ORDERS:
            self._seen.popitem(last=False)
        try:
            self.hooks.order(order)
        except Exception:  # a bad order must not hurt the connection it came on
            log.exception("control order %r could not be handled", order.get("op"))

    # -- reporting ------------------------------------------------------------------------

    def node_changed(self, node: Node, why: str | None) -> None:
        """A node went up (why None) or not. The instance is ready while at least one
        of its nodes is: a node that is down degrades only its own documents (served
        locally meanwhile), and every instance would be as affected, so taking them all
        out of rotation would turn a partial outage into a full one."""
        several = len(self.nodes) > 1
        if several:
            if why is None:
                log.info("Redis node %s ready", node.name)
            else:
                log.warning(
                    "Redis node %s not ready: %s; its documents are served locally only",
                    node.name,
                    why,
                )
        ready = any(n.ready for n in self.nodes)
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            log.info("Redis backend ready (instance %s)", self.instance_id)
        else:
            log.warning("Redis backend not ready: %s; serving local clients only", why)
        metrics = self._metrics
        if metrics is not None:
            metrics.backend_state_changes.labels("ready" if ready else "not_ready").inc()
            metrics.backend_ready.set(1 if ready else 0)

    def _report_ready(self, ready: bool) -> None:
        if self._metrics is not None:
            self._metrics.backend_ready.set(1 if ready else 0)

    def count_failure(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.backend_failures.labels(reason).inc()

    def count_reaped(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.backend_reaped.inc(n)

    def count_malformed(self, where: str, channel: bytes, data: bytes) -> None:
        """A message nobody here can read: dropped and counted, never fatal."""
        if self._metrics is not None:
            self._metrics.backend_malformed.inc()
        now = time.monotonic()
        if now - self._malformed_logged > 10.0:  # at most one line per 10 s
            self._malformed_logged = now
            log.warning(
                "Redis %s: dropped a malformed message on %s (%d bytes: %r)",
                where,
                channel.decode("utf-8", "replace"),
                len(data),
                data[:40],
            )

    def compare_limits(self, node: Node, limits: Mapping[str, str]) -> None:
        """Warn once when other instances record limits unlike this one's: outcomes
        are decided with the limits of the instance whose event it is."""
        mine = node.limits.text()
        for other, theirs in limits.items():
            if other == self.instance_id or theirs == mine:
                continue
            if self._limits_seen.get(other) != theirs:
                self._limits_seen[other] = theirs
                log.warning(
                    "instance %s has other limits (%s) than this one (%s): each event's "
                    "outcome follows the limits of the instance it came from; configure "
                    "every instance alike",
                    other,
                    theirs,
                    mine,
                )

    def stats(self) -> dict[str, tuple[str, float]]:
        """Gauges for /metrics (read at scrape time by the service)."""
        pending = followed = 0
        for node in self.nodes:
            queued, docs = node.stats()
            pending += queued
            followed += docs
        return {
            "redis_pending_events": (
                "events waiting to be written to Redis (queued and in flight)",
                pending,
            ),
            "redis_documents": ("documents this instance follows in Redis", followed),
            "redis_nodes": ("Redis nodes documents are spread over", len(self.nodes)),
            "redis_nodes_up": (
                "Redis nodes this instance is connected to and restored on",
                sum(1 for node in self.nodes if node.ready),
            ),
        }
