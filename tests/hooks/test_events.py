"""The event queue and the event webhook against real HTTP receivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cpc_signaling.protocol import Comment, Position, encode
from cpc_signaling.server.hooks import EventQueue, HookEvent, verify_signature
from cpc_signaling.server.hooks.events import (
    DeliverEvents,
    WebhookEventSink,
    encode_batch,
    make_event,
)
from cpc_signaling.server.hooks.metrics import HookMetrics
from cpc_signaling.server.hooks.webhook import WebhookClient

from ..helpers import UNIT, new_id
from .receiver import Answer, closed_port_url, receiving

SECRET = "events-secret"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def comment_event(doc: str, n: int) -> HookEvent:
    user = new_id()
    frame = encode(
        Comment(
            document_id=doc,
            user_id=user,
            position=Position(line=n, column=0),
            content=f"comment {n}",
            timestamp="2026-12-01T10:00:00Z",
        )
    )
    return make_event("comment", doc, user, frame, "client")


def webhook_queue(
    url: str, registry: CollectorRegistry, **options: Any
) -> tuple[EventQueue, WebhookClient]:
    client = WebhookClient(url, secret=SECRET, timeout=options.get("timeout", 2 * UNIT))
    queue = EventQueue(
        WebhookEventSink(client, "instance-a"),
        metrics=HookMetrics(registry),
        backoff_base=options.pop("backoff_base", 0.05 * UNIT),
        **options,
    )
    return queue, client


class Watched:
    """Wraps a delivery callable: counts attempts and failures, and lets a test await them."""

    def __init__(self, inner: DeliverEvents) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.failures = 0
        self.changed = asyncio.Condition()

    async def __call__(self, events: Sequence[HookEvent]) -> None:
        try:
            self.calls.append([e.id for e in events])
            await self.inner(events)
        except Exception:
            self.failures += 1
            raise
        finally:
            async with self.changed:
                self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool], timeout: float = 5 * UNIT) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)


def events_of(body: bytes) -> list[dict[str, Any]]:
    batch = json.loads(body)
    assert batch["instance_id"] == "instance-a"
    events: list[dict[str, Any]] = batch["events"]
    return events


async def test_events_are_delivered_as_signed_json_batches_in_order() -> None:
    registry = CollectorRegistry()
    doc = new_id()
    async with receiving() as receiver:
        queue, client = webhook_queue(receiver.url, registry, batch_size=3)
        sent = [comment_event(doc, n) for n in range(7)]
        for event in sent:
            assert queue.put(event)
        queue.start()
        try:
            await receiver.wait_for(3, 5 * UNIT)  # 3 + 3 + 1
        finally:
            await queue.close(grace=2 * UNIT)
            await client.close()
    got = [e for r in receiver.requests for e in events_of(r.body)]
    assert [len(events_of(r.body)) for r in receiver.requests] == [3, 3, 1]
    assert [e["id"] for e in got] == [e.id for e in sent]
    first = got[0]
    assert set(first) == {"id", "type", "document_id", "user_id", "time", "source", "message"}
    assert (first["type"], first["document_id"], first["source"]) == ("comment", doc, "client")
    assert first["message"]["Comment"]["content"] == "comment 0"
    assert first["time"].endswith("Z")
    for r in receiver.requests:
        assert verify_signature(SECRET, r.body, r.headers["X-CPC-Signature"])
    assert sample(registry, "cpc_hook_deliveries_total") == 3
    assert sample(registry, "cpc_hook_events_delivered_total") == 7
    assert sample(registry, "cpc_hook_events_total", type="comment") == 7
    assert sample(registry, "cpc_hook_queue_depth") == 0


async def test_failed_deliveries_are_retried_with_the_same_events() -> None:
    registry = CollectorRegistry()
    doc = new_id()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(500 if i < 2 else 200)
        queue, client = webhook_queue(receiver.url, registry)
        queue.start()
        event = comment_event(doc, 1)
        queue.put(event)
        try:
            await receiver.wait_for(3, 10 * UNIT)
        finally:
            await queue.close(grace=2 * UNIT)
            await client.close()
    ids = [[e["id"] for e in events_of(r.body)] for r in receiver.requests]
    assert ids == [[event.id]] * 3  # the same event id every time: receivers dedupe by it
    assert sample(registry, "cpc_hook_delivery_failures_total", reason="status") == 2
    assert sample(registry, "cpc_hook_retries_total") == 2
    assert sample(registry, "cpc_hook_deliveries_total") == 1


async def test_a_receiver_that_does_not_answer_in_time_gets_the_batch_again() -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(200, delay=10 * UNIT if i == 0 else 0)
        queue, client = webhook_queue(receiver.url, registry, timeout=0.3 * UNIT)
        queue.start()
        queue.put(comment_event(new_id(), 1))
        try:
            await receiver.wait_for(2, 10 * UNIT)
        finally:
            await queue.close(grace=2 * UNIT)
            await client.close()
    first, second = receiver.requests
    assert first.body == second.body  # at least once: the same body, signed again
    assert sample(registry, "cpc_hook_delivery_failures_total", reason="timeout") == 1


async def test_events_wait_while_the_receiver_is_down_then_arrive() -> None:
    """A receiver that is not listening yet: deliveries fail (connection refused) and
    are retried; once it listens, everything queued arrives, in order."""
    registry = CollectorRegistry()
    down = WebhookClient(closed_port_url(), secret=None, timeout=UNIT)
    delivered: list[list[str]] = []

    async def deliver(events: Sequence[HookEvent]) -> None:
        if watched.failures < 2:
            await WebhookEventSink(down, "x")(events)  # refused
        delivered.append([e.id for e in events])

    watched = Watched(deliver)
    queue = EventQueue(watched, metrics=HookMetrics(registry), backoff_base=0.05 * UNIT)
    queue.start()
    sent = [comment_event(new_id(), n) for n in range(3)]
    for event in sent:
        queue.put(event)
    try:
        await watched.until(lambda: watched.failures == 2)
        assert not delivered
        assert sample(registry, "cpc_hook_delivery_failures_total", reason="connection") == 2
        assert sample(registry, "cpc_hook_queue_depth") == 3
        await watched.until(lambda: bool(delivered))
    finally:
        await queue.close(grace=UNIT)
        await down.close()
    assert [i for batch in delivered for i in batch] == [e.id for e in sent]
    assert len(queue) == 0


async def test_a_full_queue_drops_new_events_counts_and_logs_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    delivered: list[str] = []

    async def deliver(events: Sequence[HookEvent]) -> None:
        delivered.extend(e.id for e in events)

    queue = EventQueue(deliver, metrics=HookMetrics(registry), max_events=3)
    sent = [comment_event(new_id(), n) for n in range(10)]
    accepted = [queue.put(e) for e in sent]  # the worker has not started: nothing leaves
    assert accepted == [True] * 3 + [False] * 7
    assert sample(registry, "cpc_hook_events_dropped_total", reason="overflow") == 7
    assert sample(registry, "cpc_hook_queue_depth") == 3
    notices = [r for r in caplog.records if "event hook queue full" in r.getMessage()]
    assert len(notices) == 1  # rate-limited: one line for the burst
    queue.start()
    await queue.close(grace=UNIT)
    assert delivered == [e.id for e in sent[:3]]  # the queued ones, in order


async def test_close_delivers_what_is_queued_within_the_grace() -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        queue, client = webhook_queue(receiver.url, registry, batch_size=2)
        queue.start()
        for n in range(5):
            queue.put(comment_event(new_id(), n))
        await queue.close(grace=5 * UNIT)
        await client.close()
    assert sum(len(events_of(r.body)) for r in receiver.requests) == 5
    assert sample(registry, "cpc_hook_events_dropped_total", reason="shutdown") == 0


async def test_close_counts_what_could_not_be_delivered(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that keeps failing: close cuts the backoff short for one last attempt,
    then what remains is counted as dropped at shutdown, and logged."""
    registry = CollectorRegistry()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(500)
        client = WebhookClient(receiver.url, secret=SECRET, timeout=2 * UNIT)
        watched = Watched(WebhookEventSink(client, "instance-a"))
        queue = EventQueue(watched, metrics=HookMetrics(registry), backoff_base=30.0)
        queue.start()
        for n in range(4):
            queue.put(comment_event(new_id(), n))
        await watched.until(lambda: watched.failures == 1)  # now pausing 15-30 s
        async with asyncio.timeout(3 * UNIT):  # close does not wait for the pause
            await queue.close(grace=2 * UNIT)
        await client.close()
    assert len(receiver.requests) == 2  # the first attempt and the last one at close
    assert sample(registry, "cpc_hook_events_dropped_total", reason="shutdown") == 4
    assert not queue.put(comment_event(new_id(), 9))  # closed: nothing more is taken
    assert any("were not delivered" in r.getMessage() for r in caplog.records)


async def test_a_callable_that_raises_is_retried() -> None:
    registry = CollectorRegistry()

    async def deliver(events: Sequence[HookEvent]) -> None:
        if not watched.failures:
            raise ConnectionError("database unavailable")

    watched = Watched(deliver)
    queue = EventQueue(watched, metrics=HookMetrics(registry), backoff_base=0.01 * UNIT)
    queue.start()
    event = comment_event(new_id(), 0)
    queue.put(event)
    await watched.until(lambda: len(watched.calls) == 2)
    await queue.close(grace=UNIT)
    assert watched.calls == [[event.id], [event.id]]
    assert sample(registry, "cpc_hook_delivery_failures_total", reason="error") == 1


def test_backoff_is_exponential_capped_and_jittered() -> None:
    registry = CollectorRegistry()

    async def deliver(events: Sequence[HookEvent]) -> None:
        return None

    low = EventQueue(
        deliver, metrics=HookMetrics(registry), backoff_base=0.5, backoff_max=60, rng=lambda: 0.0
    )
    high = EventQueue(
        deliver,
        metrics=HookMetrics(CollectorRegistry()),
        backoff_base=0.5,
        backoff_max=60,
        rng=lambda: 1.0,
    )
    assert [high.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [low.backoff(n) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]
    assert high.backoff(20) == 60 and high.backoff(10_000) == 60
    assert low.backoff(20) == 30


def test_an_event_decodes_to_its_protocol_message() -> None:
    doc = new_id()
    event = comment_event(doc, 4)
    message = event.decoded()
    assert isinstance(message, Comment)
    assert (message.document_id, message.content) == (doc, "comment 4")
    assert json.loads(encode_batch([event], "i"))["events"][0]["id"] == event.id
