"""Join authorization end to end: real WebSocket clients, a real server (both
transports), a real HTTP receiver as the application's join webhook."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import pytest

from cpc_signaling.client import Client, JoinError
from cpc_signaling.protocol import (
    CursorUpdate,
    ErrorCode,
    JoinDocument,
    LeaveDocument,
    Position,
)
from cpc_signaling.server.hooks import Hooks, JoinDenied, JoinRequest
from cpc_signaling.tokens import mint_token

from ..conftest import ServerFactory
from ..helpers import TIMEOUT, UNIT, RunningServer, new_id, receive_until
from .receiver import Answer, receiving

SECRET = "join-hook-secret"
JWT_SECRET = "a-jwt-secret-that-is-long-enough-for-hs256!"


def metric(server: RunningServer, name: str, **labels: str) -> float:
    return server.service.metrics.registry.get_sample_value(name, labels) or 0.0


def answering(rule: Callable[[dict[str, object]], Answer]) -> Callable[..., Answer]:
    return lambda i, r: rule(json.loads(r.body))


async def test_the_webhook_allows_and_denies_joins(server_factory: ServerFactory) -> None:
    allowed_doc, denied_doc = new_id(), new_id()
    async with receiving() as hook:
        hook.answer = answering(
            lambda req: (
                Answer(403, b'{"reason": "you are not on this project"}')
                if req["document_id"] == denied_doc
                else Answer(200)
            )
        )
        async with server_factory(join_webhook=hook.url, webhook_secret=SECRET) as server:
            alice = new_id()
            async with server.client(alice, reconnect=False) as client:
                with pytest.raises(JoinError) as refused:
                    await client.join(denied_doc)
                assert refused.value.error.code == ErrorCode.AUTH_ERROR
                assert "you are not on this project" in refused.value.error.message
                assert denied_doc in refused.value.error.message
                # The connection stays open and may join what it is allowed to.
                snapshot = await client.join(allowed_doc)
                assert snapshot[-1] == JoinDocument(document_id=allowed_doc, user_id=alice)
            assert await server.service.presence(denied_doc) == []
            assert metric(server, "cpc_join_checks_total", result="denied", source="hook") == 1
            assert metric(server, "cpc_join_checks_total", result="allowed", source="hook") == 1
    bodies = [json.loads(r.body) for r in hook.requests]
    assert bodies == [
        {"user_id": alice, "document_id": denied_doc, "claims": None},
        {"user_id": alice, "document_id": allowed_doc, "claims": None},
    ]


async def test_jwt_claims_are_sent_to_the_webhook(server_factory: ServerFactory) -> None:
    doc, user = new_id(), new_id()
    token = mint_token(sub=user, secret=JWT_SECRET, extra={"team": "blue", "role": "editor"})
    async with (
        receiving() as hook,
        server_factory(join_webhook=hook.url, jwt_secret=JWT_SECRET) as server,
        Client(server.url, user, token=token, reconnect=False) as client,
    ):
        await client.join(doc)
    claims = json.loads(hook.requests[0].body)["claims"]
    assert (claims["sub"], claims["team"], claims["role"]) == (user, "blue", "editor")
    assert "exp" in claims


@pytest.mark.parametrize("fail_open", [False, True])
async def test_no_answer_fails_closed_with_connection_error_or_open(
    server_factory: ServerFactory, fail_open: bool
) -> None:
    async with receiving() as hook:
        hook.answer = lambda i, r: Answer(500)
        async with (
            server_factory(join_webhook=hook.url, join_webhook_fail_open=fail_open) as server,
            server.client(reconnect=False) as client,
        ):
            doc = new_id()
            if fail_open:
                await client.join(doc)
                assert len(await server.service.presence(doc)) == 1
                return
            with pytest.raises(JoinError) as refused:
                await client.join(doc)
            assert refused.value.error.code == ErrorCode.CONNECTION_ERROR
            assert doc in refused.value.error.message
            assert await server.service.presence(doc) == []
            hook.answer = lambda i, r: Answer(200)  # back: the client's retry gets in
            await client.join(doc)


async def test_a_slow_check_does_not_hold_the_connections_other_documents(
    server_factory: ServerFactory,
) -> None:
    """Joining B waits for the webhook; meanwhile the same connection's cursor in A
    reaches A's other members, and B's own frames wait for B's join (none is lost)."""
    doc_a, doc_b = new_id(), new_id()
    gate = asyncio.Event()
    async with (
        receiving() as hook,
        server_factory(join_webhook=hook.url, join_webhook_cache=0) as server,
        server.client(reconnect=False) as alice,
        server.client(reconnect=False) as bob,
    ):
        await alice.join(doc_a)
        await bob.join(doc_a)
        await receive_until(alice, lambda m: isinstance(m, JoinDocument))
        hook.answer = lambda i, r: Answer(200, gate=gate)
        joining = asyncio.ensure_future(alice.join(doc_b))
        await hook.wait_for(3, TIMEOUT)  # alice's check of B is in flight
        await alice.cursor(doc_a, 1, 2)
        got = await receive_until(bob, lambda m: isinstance(m, CursorUpdate))
        assert isinstance(got[-1], CursorUpdate)
        assert (got[-1].document_id, got[-1].position) == (doc_a, Position(line=1, column=2))
        assert not joining.done()  # the cursor went through while B was checked
        await alice.cursor(doc_b, 3, 4)  # for B: waits for B's join, not dropped
        hook.answer = lambda i, r: Answer(200)
        gate.set()
        await asyncio.wait_for(joining, TIMEOUT)
        snapshot = await bob.join(doc_b)
        cursors = [m for m in snapshot if isinstance(m, CursorUpdate)]
        assert [(c.user_id, c.position) for c in cursors] == [
            (alice.user_id, Position(line=3, column=4))
        ]


async def test_a_close_while_the_check_is_in_flight_leaks_no_member(
    server_factory: ServerFactory,
) -> None:
    doc = new_id()
    gate = asyncio.Event()
    async with (
        receiving() as hook,
        server_factory(join_webhook=hook.url, join_webhook_cache=0) as server,
        server.client(reconnect=False) as watcher,
    ):
        await watcher.join(doc)
        hook.answer = lambda i, r: Answer(200, gate=gate)
        leaver = server.client(reconnect=False)
        await leaver.connect()
        await leaver.send(JoinDocument(document_id=doc, user_id=leaver.user_id))
        await hook.wait_for(2, TIMEOUT)
        await leaver.close()  # gone before the answer (allow) comes
        hook.answer = lambda i, r: Answer(200)
        gate.set()
        # A later joiner's snapshot: the watcher only, never the closed connection.
        async with server.client(reconnect=False) as late:
            snapshot = await late.join(doc)
        assert snapshot == [
            JoinDocument(document_id=doc, user_id=watcher.user_id),
            JoinDocument(document_id=doc, user_id=late.user_id),
        ]
        users = [u.user_id for u in await server.service.presence(doc)]
        assert users == [watcher.user_id]
        got = await receive_until(watcher, lambda m: isinstance(m, LeaveDocument))
        assert [m for m in got if getattr(m, "user_id", None) == leaver.user_id] == []


async def test_a_leave_right_after_the_join_is_applied_after_it(
    server_factory: ServerFactory,
) -> None:
    doc = new_id()
    async with receiving() as hook:
        hook.answer = lambda i, r: Answer(200, delay=0.5 * UNIT)
        async with (
            server_factory(join_webhook=hook.url) as server,
            server.client(reconnect=False) as client,
        ):
            await client.send(JoinDocument(document_id=doc, user_id=client.user_id))
            await client.send(LeaveDocument(document_id=doc, user_id=client.user_id))
            got = await receive_until(client, lambda m: isinstance(m, LeaveDocument))
            assert got == [
                JoinDocument(document_id=doc, user_id=client.user_id),
                LeaveDocument(document_id=doc, user_id=client.user_id),
            ]
            assert await server.service.presence(doc) == []


async def test_answers_are_cached_and_a_disconnect_forgets_them(
    server_factory: ServerFactory,
) -> None:
    doc, user = new_id(), new_id()
    async with (
        receiving() as hook,
        server_factory(join_webhook=hook.url, join_webhook_cache=60) as server,
    ):
        async with server.client(user, reconnect=False) as tab1:
            await tab1.join(doc)
            await tab1.join(doc)  # a repeated join on the connection: not asked again
            async with server.client(user, reconnect=False) as tab2:
                await tab2.join(doc)  # cached
                assert len(hook.requests) == 1
                assert (
                    metric(server, "cpc_join_checks_total", result="allowed", source="cache") == 1
                )
                await server.service.disconnect(user)  # e.g. after revoking access
        hook.answer = lambda i, r: Answer(403, b"revoked")
        async with server.client(user, reconnect=False) as again:
            with pytest.raises(JoinError, match="revoked"):
                await again.join(doc)
        assert len(hook.requests) == 2


async def test_an_embedders_callable(server_factory: ServerFactory) -> None:
    seen: list[JoinRequest] = []
    private = new_id()

    async def authorize(request: JoinRequest) -> bool:
        seen.append(request)
        if request.document_id == private:
            raise JoinDenied("private document")
        return True

    async with (
        server_factory(hooks=Hooks(authorize_join=authorize)) as server,
        server.client(reconnect=False) as client,
    ):
        await client.join(new_id())
        with pytest.raises(JoinError, match="private document"):
            await client.join(private)
    assert [r.user_id for r in seen] == [client.user_id] * 2


async def test_the_webhook_flags_on_a_real_process(tmp_path: object) -> None:
    from ..helpers import spawn_server

    doc = new_id()
    async with receiving() as hook:
        hook.answer = lambda i, r: Answer(403, b"closed for maintenance")
        server = await spawn_server(["--join-webhook", hook.url, "--webhook-secret", SECRET])
        try:
            async with Client(server.url, new_id(), reconnect=False) as client:
                with pytest.raises(JoinError, match="closed for maintenance"):
                    await client.join(doc)
            async with aiohttp.ClientSession() as http, http.get(server.http + "/metrics") as r:
                text = await r.text()
            assert 'cpc_join_checks_total{result="denied",source="hook"} 1.0' in text
        finally:
            assert server.stop() == 0
    assert "X-CPC-Signature" in hook.requests[0].headers
