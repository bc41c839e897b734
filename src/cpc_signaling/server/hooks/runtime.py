"""The hooks a service runs: built from :class:`Hooks` (embedders) and the configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from ...core import DocumentState, Event, Joined, Left, Relayed
from ...core.state import STORED_KINDS, Outcome, join_frame
from ...protocol import LeaveDocument, encode
from ..config import Config
from .authorize import AuthorizeJoin, JoinAuthorizer, WebhookJoinCheck
from .events import DeliverEvents, EventQueue, WebhookEventSink, make_event
from .metrics import HookMetrics
from .webhook import WebhookClient, url_problem

log = logging.getLogger("cpc_signaling.hooks")


@dataclass(frozen=True, slots=True)
class Hooks:
    """The application's hooks, for embedders (``Service(config, hooks=Hooks(...))``).

    ``authorize_join``: ``async (JoinRequest) -> bool``; True allows, False or
    ``JoinDenied(reason)`` denies. ``on_events``: ``async (list[HookEvent]) -> None``;
    raising means "not delivered": the batch is retried. Each takes the place of
    its webhook (``--join-webhook``, ``--event-webhook``); giving both is an error.
    """

    authorize_join: AuthorizeJoin | None = None
    on_events: DeliverEvents | None = None


def hooks_problem(config: Config, hooks: Hooks | None = None) -> str | None:
    """Why the hook options cannot work (a bad URL, an empty secret...), or None."""
    hooks = hooks or Hooks()
    if config.join_webhook:
        problem = url_problem(config.join_webhook, "--join-webhook")
        if problem:
            return problem
        if hooks.authorize_join is not None:
            return "give either an authorize_join hook or --join-webhook, not both"
    if config.event_webhook:
        problem = url_problem(config.event_webhook, "--event-webhook")
        if problem:
            return problem
        if hooks.on_events is not None:
            return "give either an on_events hook or --event-webhook, not both"
    if config.webhook_secret is not None and not config.webhook_secret:
        return "--webhook-secret is empty: give a real key or none"
    positive = (
        ("--join-webhook-timeout", config.join_webhook_timeout),
        ("--event-webhook-timeout", config.event_webhook_timeout),
        ("--event-webhook-queue", config.event_webhook_queue),
        ("--event-webhook-batch", config.event_webhook_batch),
        ("--event-webhook-backoff-max", config.event_webhook_backoff_max),
    )
    for flag, value in positive:
        if value <= 0:
            return f"{flag} must be > 0"
    for flag, value in (
        ("--join-webhook-cache", config.join_webhook_cache),
        ("--join-webhook-cache-size", config.join_webhook_cache_size),
    ):
        if value < 0:
            return f"{flag} must be >= 0"
    return None


@dataclass(frozen=True, slots=True)
class Before:
    """A replica as it was before an event: the event connection's user if it was a
    member, and whether the event's user was present."""

    member: str | None
    present: bool


_FROM_API: Final = Before(None, False)  # an annotation or comment of the server-side API


class HookRuntime:
    """What the service calls: ``authorizer`` (None: joins are not checked) and
    :meth:`emit` (a no-op without an event hook)."""

    def __init__(
        self,
        config: Config,
        hooks: Hooks | None,
        registry: CollectorRegistry,
        instance_id: str,
    ) -> None:
        problem = hooks_problem(config, hooks)
        if problem:
            raise ValueError(problem)
        hooks = hooks or Hooks()
        self.metrics = HookMetrics(registry)
        self._clients: list[WebhookClient] = []
        secret = config.webhook_secret or None

        check = hooks.authorize_join
        if check is None and config.join_webhook:
            client = WebhookClient(
                config.join_webhook, secret=secret, timeout=config.join_webhook_timeout
            )
            self._clients.append(client)
            check = WebhookJoinCheck(client)
        self.authorizer: JoinAuthorizer | None = None
        if check is not None:
            self.authorizer = JoinAuthorizer(
                check,
                metrics=self.metrics,
                timeout=config.join_webhook_timeout,
                cache_seconds=config.join_webhook_cache,
                cache_size=config.join_webhook_cache_size,
                fail_open=config.join_webhook_fail_open,
            )

        deliver = hooks.on_events
        if deliver is None and config.event_webhook:
            client = WebhookClient(
                config.event_webhook,
                secret=secret,
                timeout=config.event_webhook_timeout,
                max_connections=2,
            )
            self._clients.append(client)
            deliver = WebhookEventSink(client, instance_id)
        self.events: EventQueue | None = None
        if deliver is not None:
            self.events = EventQueue(
                deliver,
                metrics=self.metrics,
                max_events=config.event_webhook_queue,
                batch_size=config.event_webhook_batch,
                timeout=config.event_webhook_timeout,
                backoff_max=config.event_webhook_backoff_max,
            )
        self._grace = config.event_webhook_timeout
        self._join_url = _safe_url(config.join_webhook) if check is not None else None
        self._event_url = _safe_url(config.event_webhook) if deliver is not None else None
        if (config.join_webhook or config.event_webhook) and not secret:
            log.warning(
                "webhooks are not signed: set --webhook-secret so receivers can check "
                "that requests come from this server"
            )

    def start(self) -> None:
        if self.authorizer is not None:
            check = "a callable" if not self._join_url else f"webhook {self._join_url}"
            log.info(
                "join authorization: %s (timeout %gs, cache %gs, fail %s)",
                check,
                self.authorizer.timeout,
                self.authorizer.cache_seconds,
                "open" if self.authorizer.fail_open else "closed",
            )
        if self.events is not None:
            sink = "a callable" if not self._event_url else f"webhook {self._event_url}"
            log.info(
                "events: %s (queue %d, batches of %d)",
                sink,
                self.events.max_events,
                self.events.batch_size,
            )
            self.events.start()

    def forget_user(self, user_id: str) -> None:
        """The user was disconnected: their cached join answers go (asked again)."""
        if self.authorizer is not None:
            self.authorizer.forget_user(user_id)

    def emit(self, type: str, document_id: str, user_id: str, frame: bytes, source: str) -> None:
        """Queue one event for the application (never blocks)."""
        events = self.events
        if events is not None:
            events.put(make_event(type, document_id, user_id, frame, source))

    # -- which sequenced events are events for the application --------------------
    #
    # The service reads the replica just before and just after it applies an event
    # (``observe``, then ``applied``): a join is an event when it made the user
    # present (their first connection), a leave when it made them absent (their
    # last), an annotation or comment when it was accepted. An event that happened
    # here but that this instance does not apply (a document it does not follow, a
    # join or leave a reload already contained) comes with the outcome the shared
    # store decided: ``decided``.

    def observe(self, state: DocumentState | None, event: Event) -> Before | None:
        """Before ``event`` is applied to ``state``: what ``applied`` needs, or None
        when the event cannot be one for the application (presence)."""
        if type(event) is Relayed:
            if event.kind not in STORED_KINDS:
                return None  # presence: not an event for the application
            if not event.conn:
                return _FROM_API
        member = state.conns.get(event.conn) if state is not None else None
        present = state is not None and event.user in state.users
        return Before(member, present)

    def applied(
        self, document_id: str, state: DocumentState | None, event: Event, before: Before
    ) -> None:
        """After ``event`` was applied (``state``: the replica now, None if dropped)."""
        kind = type(event)
        if kind is Joined:
            if (
                before.member is None
                and not before.present
                and state is not None
                and state.conns.get(event.conn) == event.user
            ):
                self.emit("join", document_id, event.user, state.join_frame(event.user), "client")
        elif kind is Left:
            if before.member is not None and (state is None or event.user not in state.users):
                frame = encode(LeaveDocument(document_id=document_id, user_id=event.user))
                self.emit("leave", document_id, event.user, frame, "client")
        else:
            assert isinstance(event, Relayed)
            if before is _FROM_API:
                self.emit(event.kind.lower(), document_id, event.user, event.frame, "api")
            elif before.member == event.user:  # else not a member: ignored by the replica
                self.emit(event.kind.lower(), document_id, event.user, event.frame, "client")

    def decided(self, document_id: str, event: Event, outcome: Outcome) -> None:
        """An event this instance does not apply, with what it did in the shared store."""
        if outcome is Outcome.JOINED_FIRST and type(event) is Joined:
            frame = join_frame(document_id, event.user, event.info)
            self.emit("join", document_id, event.user, frame, "client")
        elif outcome is Outcome.LEFT_LAST:
            frame = encode(LeaveDocument(document_id=document_id, user_id=event.user))
            self.emit("leave", document_id, event.user, frame, "client")
        elif outcome is Outcome.RELAYED and type(event) is Relayed and event.kind in STORED_KINDS:
            source = "client" if event.conn else "api"
            self.emit(event.kind.lower(), document_id, event.user, event.frame, source)

    async def close(self) -> None:
        """Deliver what is queued (for up to ``--event-webhook-timeout``), then stop."""
        if self.events is not None:
            await self.events.close(self._grace)
        if self.authorizer is not None:
            await self.authorizer.close()
        for client in self._clients:
            await client.close()


def _safe_url(url: str | None) -> str | None:
    """``url`` for a log line: no credentials, no query string (either may hold a secret)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
