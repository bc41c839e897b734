"""Prometheus metrics, one registry per service (tests run several in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..protocol import MESSAGE_TYPES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Live(Collector):
    """Gauges read from the running state at scrape time: nothing to keep in sync."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        for name, (doc, value) in self._read().items():
            family = GaugeMetricFamily(f"cpc_{name}", doc)
            family.add_metric([], value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_total = Counter(
            "cpc_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.messages_in = Counter(
            "cpc_messages_in", "valid messages received, by type", ["type"], registry=r
        )
        self.messages_out = Counter(
            "cpc_messages_out",
            "frames sent, by type (snapshot = frames of join snapshots)",
            ["type"],
            registry=r,
        )
        self.bytes_in = Counter("cpc_bytes_in", "bytes of frames received", registry=r)
        self.bytes_out = Counter("cpc_bytes_out", "bytes of frames sent", registry=r)
        self.errors = Counter("cpc_errors", "Error messages sent, by code", ["code"], registry=r)
        self.closes = Counter(
            "cpc_closes", "connections closed by the server, by reason", ["reason"], registry=r
        )
        self.close_timeouts = Counter(
            "cpc_close_timeouts",
            "connections whose closing handshake did not finish within 2 s of the server's "
            "decision to close: their socket was aborted",
            registry=r,
        )
        self.conflated = Counter(
            "cpc_conflated", "presence frames replaced by a newer one for a slow reader", registry=r
        )
        self.backend_state_changes = Counter(
            "cpc_backend_state_changes",
            "backend readiness changes, by new state",
            ["state"],
            registry=r,
        )
        self.backend_ready = Gauge("cpc_backend_ready", "1 when the backend can serve", registry=r)
        self.backend_failures = Counter(
            "cpc_backend_failures",
            "backend failures that forced a resync, by reason (connection: Redis lost; "
            "fenced: this instance was declared dead while alive; resync: Redis lost "
            "data; listener: applying a message failed)",
            ["reason"],
            registry=r,
        )
        self.backend_refused = Counter(
            "cpc_backend_refused",
            "events the backend refused because it was overloaded (the sender was sent "
            "CONNECTION_ERROR), by kind",
            ["kind"],
            registry=r,
        )
        self.backend_malformed = Counter(
            "cpc_backend_malformed",
            "messages from Redis nobody here can read (another deployment's, damaged): dropped",
            registry=r,
        )
        self.backend_reaped = Counter(
            "cpc_backend_reaped",
            "memberships of dead instances announced as left by this instance",
            registry=r,
        )
        self.api_requests = Counter(
            "cpc_api_requests",
            "HTTP API requests, by route and status code",
            ["route", "status"],
            registry=r,
        )
        self.api_published = Counter(
            "cpc_api_published",
            "Annotations and Comments published by the server-side API, by type",
            ["type"],
            registry=r,
        )
        self.fanout_seconds = Histogram(
            "cpc_fanout_seconds",
            "time to apply one sequenced event and hand its frames to every local recipient",
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5),
            registry=r,
        )
        self._in = {t.__name__: self.messages_in.labels(t.__name__) for t in MESSAGE_TYPES}
        self._out: dict[str, Counter] = {}

    def count_in(self, kind: str, n: int = 1) -> None:
        child = self._in.get(kind)
        if child is not None:
            child.inc(n)

    def count_out(self, kind: str, frames: int, nbytes: int) -> None:
        child = self._out.get(kind)
        if child is None:
            child = self._out[kind] = self.messages_out.labels(kind)
        child.inc(frames)
        self.bytes_out.inc(nbytes)

    def watch(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """Register gauges computed at scrape time: {name: (help, value)}."""
        self.registry.register(_Live(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
