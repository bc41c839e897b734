"""Join authorization: ask the application before a connection joins a document.

The application answers through an async callable (embedders) or a webhook
(``--join-webhook``). :class:`JoinAuthorizer` wraps either with what both need:
a timeout, a bounded LRU cache of answers per (user, document), one request in
flight per (user, document) however many connections join at once, and the
fail-closed/fail-open policy for a check that gives no answer.

Outcomes (the service turns them into what the client is sent):

* allowed: the join goes on.
* denied: ``AUTH_ERROR`` with the application's reason (bounded, sanitized).
* unavailable (no usable answer, failing closed): ``CONNECTION_ERROR``, the
  server cannot serve the join now and the client may retry. With
  ``fail_open`` the join is allowed instead.

Only answers are cached (allowed or denied), never failures.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ...core.ratelimit import Notices
from ...errors import CheckFailed, JoinDenied, WebhookError
from .metrics import HookMetrics
from .webhook import WebhookClient

log = logging.getLogger("cpc_signaling.hooks")

MAX_REASON_CHARS = 200
DEFAULT_REASON = "not allowed by the application"


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What the application is asked about: may ``user_id`` join ``document_id``?

    ``claims`` are the connection's token claims with JWT authentication, None
    in open mode (no token).
    """

    user_id: str
    document_id: str
    claims: Mapping[str, Any] | None


AuthorizeJoin = Callable[[JoinRequest], Awaitable[bool]]
"""An application's join check: True allows, False denies, :class:`JoinDenied` denies
with a reason; any other exception (or no answer in time) is a failure."""


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # why denied or unavailable, safe to send to the client

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


ALLOWED = Decision(Verdict.ALLOWED)


def sanitize(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """One line of printable text, at most ``limit`` characters: safe in an Error."""
    cleaned = "".join(
        " " if unicodedata.category(ch)[0] in "CZ" else ch for ch in reason[: limit * 4]
    )
    text = " ".join(cleaned.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


class WebhookJoinCheck:
    """``--join-webhook``: POST ``{user_id, document_id, claims}``; 2xx allows, 403 denies
    with the reason in the body (JSON ``{"reason": "..."}`` or plain text); anything
    else is a failure."""

    def __init__(self, client: WebhookClient) -> None:
        self.client = client

    async def __call__(self, request: JoinRequest) -> bool:
        body = msgspec.json.encode(
            {
                "user_id": request.user_id,
                "document_id": request.document_id,
                "claims": request.claims,
            }
        )
        try:
            response = await self.client.post(body)
        except WebhookError as exc:
            raise CheckFailed(exc.reason, exc.message) from None
        if 200 <= response.status < 300:
            return True
        if response.status == 403:
            raise JoinDenied(_reason_from(response.body))
        raise CheckFailed("status", f"join webhook answered HTTP {response.status}")


def _reason_from(body: bytes) -> str:
    if not body.strip():
        return DEFAULT_REASON
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(value, dict):
        for key in ("reason", "message", "error"):
            if isinstance(value.get(key), str):
                return str(value[key])
        return DEFAULT_REASON
    if isinstance(value, str):
        return value
    return body.decode("utf-8", "replace")


class JoinAuthorizer:
    """A join check with timeout, cache, request coalescing and the failure policy."""

    def __init__(
        self,
        check: AuthorizeJoin,
        *,
        metrics: HookMetrics,
        timeout: float = 3.0,
        cache_seconds: float = 0.0,
        cache_size: int = 10_000,
        fail_open: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.metrics = metrics
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.cache_size = max(0, cache_size)
        self.fail_open = fail_open
        self._clock = clock
        # (user, document) -> (expires at, decision); least recently used first.
        self._cache: OrderedDict[tuple[str, str], tuple[float, Decision]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[Decision]] = {}
        self._notices = Notices(5.0)
        self._suppressed = 0

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def pending(self) -> int:
        """Checks in flight (one per (user, document))."""
        return len(self._inflight)

    def cached(self, user_id: str, document_id: str) -> Decision | None:
        """A cached answer, if one is fresh; counted in metrics when it is used."""
        key = (user_id, document_id)
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, decision = entry
        if self._clock() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        self.metrics.join_checks.labels(decision.verdict.value, "cache").inc()
        return decision

    async def authorize(self, request: JoinRequest) -> Decision:
        """The decision for ``request``: from the cache, or asking the application."""
        hit = self.cached(request.user_id, request.document_id)
        if hit is not None:
            return hit
        key = (request.user_id, request.document_id)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._ask(request))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        # Shielded: a caller that goes away (its connection closed) does not cancel the
        # question for the others waiting on it.
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str], task: asyncio.Task[Decision]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _ask(self, request: JoinRequest) -> Decision:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                allowed = await self._check(request)
        except JoinDenied as exc:
            decision = Decision(Verdict.DENIED, sanitize(exc.reason) or DEFAULT_REASON)
        except CheckFailed as exc:
            return self._failed(request, exc.reason, exc.message, started)
        except TimeoutError:
            return self._failed(request, "timeout", f"no answer within {self.timeout:g}s", started)
        except Exception as exc:
            message = f"{type(exc).__name__}: {sanitize(str(exc))}"
            return self._failed(request, "error", message, started)
        else:
            decision = ALLOWED if allowed else Decision(Verdict.DENIED, DEFAULT_REASON)
        self.metrics.join_check_seconds.observe(time.perf_counter() - started)
        self.metrics.join_checks.labels(decision.verdict.value, "hook").inc()
        self._remember(request, decision)
        if not decision.allowed:
            log.info(
                "join denied by the application: %s",
                decision.reason,
                extra={"user_id": request.user_id, "document_id": request.document_id},
            )
        return decision

    def _failed(self, request: JoinRequest, reason: str, message: str, started: float) -> Decision:
        self.metrics.join_check_seconds.observe(time.perf_counter() - started)
        self.metrics.join_check_failures.labels(reason).inc()
        result = "failed_open" if self.fail_open else "failed_closed"
        self.metrics.join_checks.labels(result, "hook").inc()
        # A receiver that is down fails every join: one line per 5 s, with a count.
        if self._notices.due(time.monotonic()):
            more = f" ({self._suppressed} more since the last notice)" if self._suppressed else ""
            self._suppressed = 0
            log.warning(
                "join authorization failed (%s), join %s%s",
                message,
                "allowed (--join-webhook-fail-open)" if self.fail_open else "refused",
                more,
                extra={"user_id": request.user_id, "document_id": request.document_id},
            )
        else:
            self._suppressed += 1
        if self.fail_open:
            return ALLOWED
        return Decision(Verdict.UNAVAILABLE, "the application could not authorize the join")

    def _remember(self, request: JoinRequest, decision: Decision) -> None:
        if self.cache_seconds <= 0 or self.cache_size == 0:
            return
        key = (request.user_id, request.document_id)
        cache = self._cache
        cache[key] = (self._clock() + self.cache_seconds, decision)
        cache.move_to_end(key)
        while len(cache) > self.cache_size:  # overflow: the least recently used answer goes
            cache.popitem(last=False)

    def forget_user(self, user_id: str) -> int:
        """Drop ``user_id``'s cached answers (say, after the API disconnected the user)."""
        stale = [key for key in self._cache if key[0] == user_id]
        for key in stale:
            del self._cache[key]
        return len(stale)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
