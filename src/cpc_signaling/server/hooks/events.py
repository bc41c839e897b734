"""Events out: joins, leaves, annotations and comments, delivered to the application.

Each event is queued (bounded) and a single worker delivers the queue in
batches, in order, to an async callable or a webhook. A batch leaves the queue
only once delivered: a failed delivery (an exception, a non-2xx answer, no
answer within the timeout) is tried again, with exponential backoff and
jitter, until it succeeds. That is at-least-once delivery within the process's
life: a batch whose answer was lost is sent again, so receivers dedupe by the
event ``id``. The queue lives in memory: what is queued when the process dies
is lost (on a clean stop the worker gets a grace period to deliver it).

Overflow policy: when ``max_events`` are waiting, a new event is dropped (the
ones already queued keep their order and are delivered), counted in
``cpc_hook_events_dropped{reason="overflow"}`` and logged (at most one line
per five seconds, with the count).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from ...core.ratelimit import Notices
from ...errors import DeliveryFailed, WebhookError
from ...protocol import Decoder, Message
from .metrics import HookMetrics
from .webhook import WebhookClient

log = logging.getLogger("cpc_signaling.hooks")

EVENT_TYPES = ("join", "leave", "annotation", "comment")


class HookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as the application receives it (also its JSON shape in a batch).

    ``type``: ``join`` (the user's first connection in the document joined),
    ``leave`` (the user's last connection left), ``annotation`` or ``comment``.
    ``message``: the protocol message as members received it (the
    ``JoinDocument``, ``LeaveDocument``, ``Annotation`` or ``Comment`` frame,
    raw JSON). ``time``: when the server applied it (RFC 3339, UTC).
    ``source``: ``client`` (a connection sent it) or ``api`` (the server-side
    API published it; joins and leaves are always ``client``).
    """

    id: str
    type: str
    document_id: str
    user_id: str
    time: str
    source: str
    message: msgspec.Raw

    def decoded(self) -> Message:
        """``message`` as a typed protocol message."""
        return _DECODER.decode(bytes(self.message))


_DECODER = Decoder()

DeliverEvents = Callable[[Sequence[HookEvent]], Awaitable[None]]
"""An application's event hook: receives a batch; raising means "not delivered, retry"."""


def now_rfc3339() -> str:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def make_event(type: str, document_id: str, user_id: str, frame: bytes, source: str) -> HookEvent:
    """A new event with a unique id (a random UUID) and the current time."""
    return HookEvent(
        id=str(uuid.uuid4()),
        type=type,
        document_id=document_id,
        user_id=user_id,
        time=now_rfc3339(),
        source=source,
        message=msgspec.Raw(frame),
    )


def encode_batch(events: Sequence[HookEvent], instance_id: str) -> bytes:
    """The JSON body of one webhook delivery: ``{"instance_id": ..., "events": [...]}``."""
    return msgspec.json.encode({"instance_id": instance_id, "events": events})


class WebhookEventSink:
    """``--event-webhook``: POST each batch as JSON; any 2xx accepts it."""

    def __init__(self, client: WebhookClient, instance_id: str) -> None:
        self.client = client
        self.instance_id = instance_id

    async def __call__(self, events: Sequence[HookEvent]) -> None:
        try:
            response = await self.client.post(encode_batch(events, self.instance_id))
        except WebhookError as exc:
            raise DeliveryFailed(exc.reason, exc.message) from None
        if not 200 <= response.status < 300:
            raise DeliveryFailed("status", f"event webhook answered HTTP {response.status}")


class EventQueue:
    """The bounded queue and its delivery worker (see the module's docstring)."""

    def __init__(
        self,
        deliver: DeliverEvents,
        *,
        metrics: HookMetrics,
        max_events: int = 10_000,
        batch_size: int = 100,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._deliver = deliver
        self.metrics = metrics
        self.max_events = max(1, max_events)
        self.batch_size = max(1, batch_size)
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = max(backoff_base, backoff_max)
        self._rng = rng
        self._queue: deque[HookEvent] = deque()
        self._wake = asyncio.Event()  # set by put (and close): there is work
        self._stop = asyncio.Event()  # set by close: cut a backoff pause short
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._overflow_notices = Notices(5.0)
        self._overflowed = 0
        self._failure_notices = Notices(10.0)
        self._failures_unlogged = 0
        metrics.queue_depth.set_function(lambda: len(self._queue))

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, event: HookEvent) -> bool:
        """Queue ``event`` (never blocks); False when the queue is full and it was dropped."""
        if len(self._queue) >= self.max_events or self._closing:
            self.metrics.dropped.labels("overflow" if not self._closing else "shutdown").inc()
            self._overflowed += 1
            if self._overflow_notices.due(time.monotonic()):
                log.warning(
                    "event hook queue full (%d events waiting): dropped %d event(s) since "
                    "the last notice; the receiver is down or too slow",
                    len(self._queue),
                    self._overflowed,
                    extra={"document_id": event.document_id},
                )
                self._overflowed = 0
            return False
        self._queue.append(event)
        self.metrics.events_queued.labels(event.type).inc()
        self._wake.set()
        return True

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure in a row: exponential from
        ``backoff_base``, capped at ``backoff_max``, jittered to 50-100 %."""
        delay = min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt - 1, 32))
        return delay * (0.5 + 0.5 * self._rng())

    async def _run(self) -> None:
        queue = self._queue
        failures = 0
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(itertools.islice(queue, self.batch_size))
            if failures:
                self.metrics.retries.inc()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._deliver(batch)
            except Exception as exc:
                self.metrics.delivery_seconds.observe(time.perf_counter() - started)
                failures += 1
                self._failed(exc, len(batch), failures)
                if self._closing:
                    return  # stopping: no more retries; what remains is counted as dropped
                await self._pause(self.backoff(failures))
                continue
            self.metrics.delivery_seconds.observe(time.perf_counter() - started)
            for _ in batch:
                queue.popleft()
            failures = 0
            self.metrics.deliveries.inc()
            self.metrics.events_delivered.inc(len(batch))

    def _failed(self, exc: Exception, size: int, failures: int) -> None:
        if isinstance(exc, DeliveryFailed | WebhookError):
            reason, message = exc.reason, exc.message
        elif isinstance(exc, TimeoutError):
            reason, message = "timeout", f"no answer within {self.timeout:g}s"
        else:
            reason, message = "error", f"{type(exc).__name__}: {str(exc)[:200]}"
        self.metrics.delivery_failures.labels(reason).inc()
        if self._failure_notices.due(time.monotonic()):
            more = f"; {self._failures_unlogged} more failures since the last notice"
            log.warning(
                "event hook delivery of %d event(s) failed (%s), attempt %d; retrying with "
                "backoff, %d event(s) queued%s",
                size,
                message,
                failures,
                len(self._queue),
                more if self._failures_unlogged else "",
            )
            self._failures_unlogged = 0
        else:
            self._failures_unlogged += 1

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or until close wakes the worker for a last attempt
        (new events do not cut it short: the receiver is failing)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def close(self, grace: float) -> None:
        """Stop: deliver what is queued for up to ``grace`` seconds (one more attempt
        at once if the worker was waiting to retry), then count the rest as dropped."""
        self._closing = True
        worker = self._worker
        if worker is not None and not worker.done():
            self._wake.set()
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(worker), grace)
            except TimeoutError:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        left = len(self._queue)
        if left:
            self.metrics.dropped.labels("shutdown").inc(left)
            log.warning("stopping: %d event(s) for the event hook were not delivered", left)
            self._queue.clear()
