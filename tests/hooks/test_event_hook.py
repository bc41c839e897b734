"""Events out, end to end: real WebSocket clients, a real server (both transports), a
real HTTP receiver as the application's event webhook."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from cpc_signaling.client import Client
from cpc_signaling.protocol import Comment, JoinDocument, Position, encode
from cpc_signaling.server.hooks import HookEvent, Hooks, verify_signature

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, new_id, receive_until, spawn_server
from .receiver import Receiver, receiving

SECRET = "event-hook-secret"


def received_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [e for r in receiver.requests for e in json.loads(r.body)["events"]]


async def until_events(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` events arrived over however many requests."""
    async with asyncio.timeout(TIMEOUT):
        n = 1
        while True:
            await receiver.wait_for(n, TIMEOUT)
            events = received_events(receiver)
            if len(events) >= count:
                return events
            n = len(receiver.requests) + 1


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["user_id"]) for e in events]


async def test_user_level_joins_and_leaves_annotations_and_comments(
    server_factory: ServerFactory,
) -> None:
    doc = new_id()
    alice, bob = new_id(), new_id()
    async with (
        receiving() as hook,
        server_factory(event_webhook=hook.url, webhook_secret=SECRET) as server,
    ):
        async with server.client(alice, reconnect=False) as a:
            await a.join(doc)
            async with (
                server.client(bob, reconnect=False) as b1,
                server.client(bob, reconnect=False) as b2,
            ):
                await b1.join(doc)
                await b2.join(doc)  # bob's second tab: not a user-level join
                await a.cursor(doc, 1, 1)  # presence is not an event
                await a.comment(doc, 2, 0, "ship it")
                await b1.annotate(doc, 3, 0, "typo")
                await receive_until(a, lambda m: type(m).__name__ == "Annotation")
                await b2.leave(doc)  # bob still present through b1: no event
                await b1.leave(doc)  # bob's last connection: leave
            await a.leave(doc)
        events = await until_events(hook, 6)
    assert summary(events) == [
        ("join", alice),
        ("join", bob),
        ("comment", alice),
        ("annotation", bob),
        ("leave", bob),
        ("leave", alice),
    ]
    assert len({e["id"] for e in events}) == 6
    assert all(e["document_id"] == doc and e["source"] == "client" for e in events)
    assert events[0]["message"] == {"JoinDocument": {"document_id": doc, "user_id": alice}}
    assert events[2]["message"]["Comment"]["content"] == "ship it"
    assert events[4]["message"] == {"LeaveDocument": {"document_id": doc, "user_id": bob}}
    for request in hook.requests:
        assert verify_signature(SECRET, request.body, request.headers["X-CPC-Signature"])
    registry = server.service.metrics.registry
    assert registry.get_sample_value("cpc_hook_events_delivered_total") == 6


async def test_a_closed_connection_leaves_and_api_publishes_are_events(
    server_factory: ServerFactory,
) -> None:
    doc = new_id()
    async with (
        receiving() as hook,
        server_factory(event_webhook=hook.url) as server,
    ):
        async with server.client(reconnect=False) as client:
            # Open mode: the join carries the user's info; the event's message has it.
            join = JoinDocument(document_id=doc, user_id=client.user_id, info={"name": "Ada"})
            await client.send(join)
            await receive_until(client, lambda m: m == join)
        published = Comment(
            document_id=doc,
            user_id=new_id(),
            position=Position(line=0, column=0),
            content="from the backend",
            timestamp="2026-12-01T10:00:00Z",
        )
        server.service.publish(published)
        events = await until_events(hook, 3)
    assert [(e["type"], e["source"]) for e in events] == [
        ("join", "client"),
        ("leave", "client"),
        ("comment", "api"),
    ]
    assert events[0]["message"] == json.loads(encode(join))
    assert events[0]["message"]["JoinDocument"]["info"] == {"name": "Ada"}
    assert events[2]["message"] == json.loads(encode(published))


async def test_an_embedders_callable_gets_typed_events(server_factory: ServerFactory) -> None:
    got: list[HookEvent] = []
    arrived = asyncio.Condition()

    async def on_events(events: Sequence[HookEvent]) -> None:
        async with arrived:
            got.extend(events)
            arrived.notify_all()

    doc = new_id()
    async with server_factory(hooks=Hooks(on_events=on_events)) as server:
        async with server.client(reconnect=False) as client:
            await client.join(doc)
            await client.comment(doc, 0, 0, "hello")
        async with asyncio.timeout(TIMEOUT), arrived:
            await arrived.wait_for(lambda: len(got) == 3)
    assert [e.type for e in got] == ["join", "comment", "leave"]
    comment = got[1].decoded()
    assert isinstance(comment, Comment) and comment.content == "hello"


async def test_a_real_process_delivers_its_leaves_before_it_exits() -> None:
    """SIGTERM: every connection leaves (drain), and those leaves reach the webhook
    before the process exits."""
    doc = new_id()
    async with receiving() as hook:
        server = await spawn_server(["--event-webhook", hook.url, "--webhook-secret", SECRET])
        try:
            async with Client(server.url, new_id(), reconnect=False) as client:
                await client.join(doc)
                await until_events(hook, 1)
                assert await asyncio.to_thread(server.stop) == 0
            events = received_events(hook)
            assert [e["type"] for e in events] == ["join", "leave"]
        finally:
            server.kill()
