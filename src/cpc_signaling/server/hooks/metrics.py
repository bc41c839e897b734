"""The hooks' Prometheus metrics, registered on the service's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.join_checks = Counter(
            "cpc_join_checks",
            "join authorizations, by result (allowed, denied, failed_closed, failed_open) "
            "and source (hook: asked the application; cache: a cached answer)",
            ["result", "source"],
            registry=r,
        )
        self.join_check_seconds = Histogram(
            "cpc_join_check_seconds",
            "time the application's join authorization took to answer (or fail)",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.join_check_failures = Counter(
            "cpc_join_check_failures",
            "join authorizations that got no usable answer, by reason "
            "(timeout, connection, status, error)",
            ["reason"],
            registry=r,
        )
        self.events_queued = Counter(
            "cpc_hook_events",
            "events queued for the application's event hook, by type",
            ["type"],
            registry=r,
        )
        self.deliveries = Counter(
            "cpc_hook_deliveries",
            "batches of events the event hook accepted",
            registry=r,
        )
        self.events_delivered = Counter(
            "cpc_hook_events_delivered",
            "events the event hook accepted",
            registry=r,
        )
        self.delivery_failures = Counter(
            "cpc_hook_delivery_failures",
            "failed deliveries of a batch, by reason (timeout, connection, status, error)",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "cpc_hook_retries",
            "deliveries that were attempts again of a batch that had failed",
            registry=r,
        )
        self.dropped = Counter(
            "cpc_hook_events_dropped",
            "events never delivered, by reason (overflow: the queue was full; shutdown: "
            "still queued when the process stopped)",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "cpc_hook_queue_depth",
            "events waiting for the event hook (the batch being delivered included)",
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "cpc_hook_delivery_seconds",
            "time one delivery attempt of a batch took",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
