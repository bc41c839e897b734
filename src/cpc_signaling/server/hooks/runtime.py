"""The hooks a service runs: built from :class:`Hooks` (embedders) and the configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

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
        if (config.join_webhook or config.event_webhook) and not secret:
            log.warning(
                "webhooks are not signed: set --webhook-secret so receivers can check "
                "that requests come from this server"
            )

    def start(self) -> None:
        if self.events is not None:
            self.events.start()

    def emit(self, type: str, document_id: str, user_id: str, frame: bytes, source: str) -> None:
        """Queue one event for the application (never blocks)."""
        events = self.events
        if events is not None:
            events.put(make_event(type, document_id, user_id, frame, source))

    async def close(self) -> None:
        """Deliver what is queued (for up to ``--event-webhook-timeout``), then stop."""
        if self.events is not None:
            await self.events.close(self._grace)
        if self.authorizer is not None:
            await self.authorizer.close()
        for client in self._clients:
            await client.close()
