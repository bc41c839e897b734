"""The join authorizer against real HTTP receivers (and embedders' callables)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cpc_signaling.server.hooks import JoinDenied, JoinRequest, verify_signature
from cpc_signaling.server.hooks.authorize import (
    MAX_REASON_CHARS,
    Decision,
    JoinAuthorizer,
    Verdict,
    WebhookJoinCheck,
    sanitize,
)
from cpc_signaling.server.hooks.metrics import HookMetrics
from cpc_signaling.server.hooks.webhook import WebhookClient

from ..helpers import UNIT, new_id
from .receiver import Answer, closed_port_url, receiving

SECRET = "s3cret-for-tests"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def authorizer(
    url: str, registry: CollectorRegistry, **options: Any
) -> tuple[JoinAuthorizer, WebhookClient]:
    client = WebhookClient(url, secret=SECRET, timeout=options.pop("timeout", 2 * UNIT))
    auth = JoinAuthorizer(
        WebhookJoinCheck(client),
        metrics=HookMetrics(registry),
        timeout=client.timeout,
        **options,
    )
    return auth, client


def request(claims: dict[str, Any] | None = None) -> JoinRequest:
    return JoinRequest(user_id=new_id(), document_id=new_id(), claims=claims)


async def test_2xx_allows_and_the_request_is_signed_json() -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        auth, client = authorizer(receiver.url, registry)
        try:
            req = request({"sub": "x", "role": "editor"})
            assert await auth.authorize(req) == Decision(Verdict.ALLOWED)
        finally:
            await client.close()
    (got,) = receiver.requests
    assert json.loads(got.body) == {
        "user_id": req.user_id,
        "document_id": req.document_id,
        "claims": {"sub": "x", "role": "editor"},
    }
    assert got.headers["Content-Type"] == "application/json"
    assert verify_signature(SECRET, got.body, got.headers["X-CPC-Signature"])
    assert not verify_signature("another secret", got.body, got.headers["X-CPC-Signature"])
    assert sample(registry, "cpc_join_checks_total", result="allowed", source="hook") == 1


async def test_open_mode_sends_null_claims() -> None:
    async with receiving() as receiver:
        auth, client = authorizer(receiver.url, CollectorRegistry())
        try:
            await auth.authorize(request(None))
        finally:
            await client.close()
    assert json.loads(receiver.requests[0].body)["claims"] is None


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b'{"reason": "read-only for guests"}', "application/json", "read-only for guests"),
        (b"not a member of this team", "text/plain", "not a member of this team"),
        (b"", "text/plain", "not allowed by the application"),
        (b'{"other": 1}', "application/json", "not allowed by the application"),
    ],
)
async def test_403_denies_with_the_reason_from_the_body(
    body: bytes, content_type: str, reason: str
) -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(403, body, content_type)
        auth, client = authorizer(receiver.url, registry)
        try:
            decision = await auth.authorize(request())
        finally:
            await client.close()
    assert decision == Decision(Verdict.DENIED, reason)
    assert sample(registry, "cpc_join_checks_total", result="denied", source="hook") == 1


async def test_a_hostile_reason_is_bounded_and_sanitized() -> None:
    hostile = ("line one\r\n\x1b[31mred\x00" + "é" * 5000).encode()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(403, hostile)
        auth, client = authorizer(receiver.url, CollectorRegistry())
        try:
            decision = await auth.authorize(request())
        finally:
            await client.close()
    assert decision.verdict is Verdict.DENIED
    assert len(decision.reason) <= MAX_REASON_CHARS
    assert decision.reason.startswith("line one [31mred éé")
    assert all(ch.isprintable() for ch in decision.reason)


def test_sanitize() -> None:
    assert sanitize("  a\tb\n\nc  ") == "a b c"
    assert sanitize("x" * 500) == "x" * 199 + "…"
    assert sanitize("\u202eevil\u200b") == "evil"


@pytest.mark.parametrize("status", [500, 401, 404, 302, 204])
async def test_other_statuses_fail_closed_or_allow(status: int) -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(status)
        auth, client = authorizer(receiver.url, registry)
        try:
            decision = await auth.authorize(request())
        finally:
            await client.close()
    if status == 204:  # any 2xx allows
        assert decision.allowed
        return
    assert decision.verdict is Verdict.UNAVAILABLE
    assert sample(registry, "cpc_join_check_failures_total", reason="status") == 1
    assert sample(registry, "cpc_join_checks_total", result="failed_closed", source="hook") == 1


async def test_fail_open_allows_when_there_is_no_answer() -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(503)
        auth, client = authorizer(receiver.url, registry, fail_open=True)
        try:
            assert (await auth.authorize(request())).allowed
            receiver.answer = lambda i, r: Answer(403, b"no")
            assert (await auth.authorize(request())).verdict is Verdict.DENIED  # still denies
        finally:
            await client.close()
    assert sample(registry, "cpc_join_checks_total", result="failed_open", source="hook") == 1


async def test_a_slow_receiver_times_out() -> None:
    registry = CollectorRegistry()
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(200, delay=10 * UNIT)
        auth, client = authorizer(receiver.url, registry, timeout=0.3 * UNIT)
        try:
            decision = await auth.authorize(request())
        finally:
            await client.close()
    assert decision.verdict is Verdict.UNAVAILABLE
    assert sample(registry, "cpc_join_check_failures_total", reason="timeout") == 1


async def test_a_refused_connection_fails_closed() -> None:
    registry = CollectorRegistry()
    auth, client = authorizer(closed_port_url(), registry)
    try:
        decision = await auth.authorize(request())
    finally:
        await client.close()
    assert decision.verdict is Verdict.UNAVAILABLE
    assert sample(registry, "cpc_join_check_failures_total", reason="connection") == 1


async def test_answers_are_cached_per_user_and_document_failures_are_not() -> None:
    registry = CollectorRegistry()
    clock = Clock()
    async with receiving() as receiver:
        statuses = iter([200, 403, 500, 200, 200])
        receiver.answer = lambda i, r: Answer(next(statuses))
        auth, client = authorizer(receiver.url, registry, cache_seconds=30, clock=clock)
        try:
            allowed, denied, failing = request(), request(), request()
            assert (await auth.authorize(allowed)).allowed
            assert (await auth.authorize(denied)).verdict is Verdict.DENIED
            assert (await auth.authorize(failing)).verdict is Verdict.UNAVAILABLE
            assert len(receiver.requests) == 3
            clock.now += 29
            assert (await auth.authorize(allowed)).allowed  # cached
            assert (await auth.authorize(denied)).verdict is Verdict.DENIED  # cached
            assert len(receiver.requests) == 3
            assert (await auth.authorize(failing)).allowed  # a failure is asked again
            assert len(receiver.requests) == 4
            # The same user in another document is another question.
            other = JoinRequest(allowed.user_id, new_id(), None)
            assert (await auth.authorize(other)).allowed
            assert len(receiver.requests) == 5
            clock.now += 2  # 31 s after the first answers: expired
            receiver.answer = lambda i, r: Answer(403, b"revoked")
            assert await auth.authorize(allowed) == Decision(Verdict.DENIED, "revoked")
        finally:
            await client.close()
    assert sample(registry, "cpc_join_checks_total", result="allowed", source="cache") == 1
    assert sample(registry, "cpc_join_checks_total", result="denied", source="cache") == 1


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    async with receiving() as receiver:
        auth, client = authorizer(receiver.url, CollectorRegistry(), cache_seconds=60, cache_size=2)
        try:
            a, b, c = request(), request(), request()
            await auth.authorize(a)
            await auth.authorize(b)
            await auth.authorize(a)  # a is now the most recently used
            await auth.authorize(c)  # evicts b
            assert len(auth) == 2
            assert len(receiver.requests) == 3
            await auth.authorize(a)
            assert len(receiver.requests) == 3
            await auth.authorize(b)
            assert len(receiver.requests) == 4
        finally:
            await client.close()


async def test_forget_user_drops_its_cached_answers() -> None:
    async with receiving() as receiver:
        auth, client = authorizer(receiver.url, CollectorRegistry(), cache_seconds=60)
        try:
            a = request()
            b = JoinRequest(a.user_id, new_id(), None)
            c = request()
            for r in (a, b, c):
                await auth.authorize(r)
            assert auth.forget_user(a.user_id) == 2
            await auth.authorize(a)
            await auth.authorize(c)
            assert len(receiver.requests) == 4  # a asked again, c still cached
        finally:
            await client.close()


async def test_concurrent_joins_of_one_user_and_document_ask_once() -> None:
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(200, delay=0.2 * UNIT)
        auth, client = authorizer(receiver.url, CollectorRegistry())
        try:
            req = request()
            decisions = await asyncio.gather(*(auth.authorize(req) for _ in range(5)))
            assert all(d.allowed for d in decisions)
            assert len(receiver.requests) == 1
            assert auth.pending == 0
        finally:
            await client.close()


async def test_a_waiter_that_goes_away_does_not_cancel_the_question() -> None:
    async with receiving() as receiver:
        receiver.answer = lambda i, r: Answer(200, delay=0.3 * UNIT)
        auth, client = authorizer(receiver.url, CollectorRegistry())
        try:
            req = request()
            first = asyncio.ensure_future(auth.authorize(req))
            second = asyncio.ensure_future(auth.authorize(req))
            await receiver.wait_for(1, 5 * UNIT)
            first.cancel()  # its connection closed while the check was in flight
            assert (await second).allowed
            assert len(receiver.requests) == 1
        finally:
            await client.close()


async def test_callables() -> None:
    registry = CollectorRegistry()
    seen: list[JoinRequest] = []

    async def check(req: JoinRequest) -> bool:
        seen.append(req)
        if req.claims == {"role": "guest"}:
            raise JoinDenied("guests may not join\n")
        if req.claims == {"role": "banned"}:
            return False
        if req.claims == {"role": "broken"}:
            raise RuntimeError("database down")
        if req.claims == {"role": "slow"}:
            await asyncio.sleep(10 * UNIT)
        return True

    auth = JoinAuthorizer(check, metrics=HookMetrics(registry), timeout=0.3 * UNIT)
    assert (await auth.authorize(request({"role": "editor"}))).allowed
    assert await auth.authorize(request({"role": "guest"})) == Decision(
        Verdict.DENIED, "guests may not join"
    )
    assert await auth.authorize(request({"role": "banned"})) == Decision(
        Verdict.DENIED, "not allowed by the application"
    )
    assert (await auth.authorize(request({"role": "broken"}))).verdict is Verdict.UNAVAILABLE
    assert (await auth.authorize(request({"role": "slow"}))).verdict is Verdict.UNAVAILABLE
    assert sample(registry, "cpc_join_check_failures_total", reason="error") == 1
    assert sample(registry, "cpc_join_check_failures_total", reason="timeout") == 1
    assert len(seen) == 5


async def test_failures_are_logged_at_most_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth, client = authorizer(closed_port_url(), CollectorRegistry())
    try:
        for _ in range(5):
            await auth.authorize(request())
    finally:
        await client.close()
    lines = [r for r in caplog.records if "join authorization failed" in r.getMessage()]
    assert len(lines) == 1
    assert "refused" in lines[0].getMessage()
