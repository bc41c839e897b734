"""The control channel: orders every instance of a Redis-backed service obeys.

One Redis pub/sub channel, ``{prefix}:control``, that every instance subscribes
to for its whole life (unlike the per-document channels, which follow local
members). Today it carries one order, "disconnect user X", so that
``Service.disconnect`` (and ``POST /api/users/{id}/disconnect``) reaches that
user's connections on every instance. Messages are JSON objects::

    {"op": "disconnect", "user_id": "...", "reason": "...", "origin": "<instance id>"}

An instance ignores its own orders (it has already acted on them locally).
Delivery is at most once, like any Redis pub/sub: an instance that is cut off
from Redis while the order is published does not see it. The listener logs
each change of state, exposes it as ``cpc_control_connected``, and reconnects
with capped, jittered backoff; it never dies silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from .config import Config
from .errors import Unavailable
from .metrics import Metrics

log = logging.getLogger("cpc_signaling.control")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0


Disconnect = Callable[[str, str], int]
"""Close a user's local connections: (user_id, reason) -> how many were closed."""


class ControlChannel:
    def __init__(
        self, config: Config, instance_id: str, metrics: Metrics, disconnect: Disconnect
    ) -> None:
        assert config.redis_url
        self._metrics = metrics
        self._disconnect = disconnect
        self.channel = f"{config.redis_prefix}:control"
        self._origin = instance_id
        # Two connections: the subscriber blocks on reads; orders are published on
        # the other, with timeouts, so that an API call fails fast when Redis is down.
        self._publisher: Any = aioredis.from_url(
            config.redis_url, socket_connect_timeout=2.0, socket_timeout=2.0
        )
        self._subscriber: Any = aioredis.from_url(
            config.redis_url, socket_connect_timeout=2.0, health_check_interval=5
        )
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.connected = False

    async def start(self) -> None:
        """Start listening; returns at once (the listener retries while Redis is down)."""
        self._task = asyncio.create_task(self._listen(), name="cpc-control-listener")

    async def wait_subscribed(self, timeout: float) -> None:
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in (self._publisher, self._subscriber):
            with contextlib.suppress(Exception):
                await client.aclose()
        self._set_connected(False)

    async def broadcast_disconnect(self, user_id: str, reason: str) -> int:
        """Tell every other instance to close ``user_id``'s connections.

        Returns how many instances (including this one) were subscribed. Raises
        :class:`~.errors.Unavailable` when Redis cannot be reached.
        """
        order = {"op": "disconnect", "user_id": user_id, "reason": reason, "origin": self._origin}
        try:
            receivers: int = await self._publisher.publish(self.channel, json.dumps(order))
        except (aioredis.RedisError, OSError) as exc:
            raise Unavailable(f"redis control channel: {exc}") from None
        return receivers

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        self._metrics.control_connected.set(1 if connected else 0)
        if connected:
            self._subscribed.set()
            log.info("control channel %s subscribed", self.channel)
        else:
            self._subscribed.clear()
            log.warning("control channel %s lost; retrying", self.channel)

    async def _listen(self) -> None:
        delay = BACKOFF_INITIAL
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._set_connected(True)
                delay = BACKOFF_INITIAL
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._handle(message["data"])
                raise ConnectionError("subscription ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("control channel error: %s", exc)
                self._set_connected(False)
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _handle(self, data: bytes | str) -> None:
        try:
            order = json.loads(data)
            if order.get("origin") == self._origin:
                return
            if order.get("op") == "disconnect":
                user_id = str(order["user_id"])
                self._disconnect(user_id, str(order.get("reason") or ""))
            else:
                log.warning("control channel: unknown order %r", order.get("op"))
        except Exception:  # a bad order must not kill the listener
            log.exception("control channel: cannot handle %r", data[:200])
