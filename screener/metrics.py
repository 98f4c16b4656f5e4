"""Prometheus metrics, one registry per service instance (no module-level singletons).

Counters are thread-safe and monotonic, so actors update them directly; the hot paths add
per batch rather than per message where they can.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REJECT_REASONS = (
    "json",
    "binary",
    "shape",
    "unknown_channel",
    "missing_field",
    "bad_symbol",
    "bad_type",
    "bad_value",
    "interval",
    "late",
    "too_large",
    "unencodable",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "screener_messages_received", "WebSocket messages received", registry=r
        )
        self.rejected = Counter(
            "screener_messages_rejected",
            "Messages or pushes rejected, by reason",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.published = Counter(
            "screener_events_published", "Events published to Redis", ["channel"], registry=r
        )
        self.dropped = Counter(
            "screener_events_dropped",
            "Events dropped before Redis (superseded by a newer one of the same symbol)",
            registry=r,
        )
        self.reconnects = Counter(
            "screener_reconnects", "WebSocket reconnect attempts after a failure", registry=r
        )
        self.reconnects_early = Counter(
            "screener_reconnects_early",
            "Reconnects started before their backoff ended: another connection reached the "
            "exchange again after it had been unreachable",
            registry=r,
        )
        self.silent_resubscribes = Counter(
            "screener_silent_resubscribes",
            "Chunks resubscribed after SILENT_RESUBSCRIBE_S without a push on a live socket",
            registry=r,
        )
        self.silent_reconnects = Counter(
            "screener_silent_reconnects",
            "Connections replaced: still no push SILENT_RESUBSCRIBE_S after resubscribing",
            registry=r,
        )
        self.rs_errors = Counter(
            "screener_subscribe_errors", "rs.error answers from the exchange", registry=r
        )
        self.rest_errors = Counter(
            "screener_rest_errors", "Failed REST calls", ["endpoint"], registry=r
        )
        self.rest_requests = Counter(
            "screener_rest_requests",
            "REST requests sent (retries included)",
            ["endpoint"],
            registry=r,
        )
        self.rest_failures = Counter(
            "screener_rest_failures",
            "Failed REST attempts by reason, retried or not",
            ["endpoint", "reason"],
            registry=r,
        )
        self.rest_rate = Gauge(
            "screener_rest_rate_per_s",
            "REST request rate in force (halved after rate-limit answers)",
            registry=r,
        )
        self.backfill_symbols = Counter(
            "screener_backfill_symbols", "Symbols refilled from REST klines", ["result"], registry=r
        )
        self.feed_rest = Gauge(
            "screener_feed_rest", "1 while the REST ticker failover feeds the windows", registry=r
        )
        self.connections_up = Gauge(
            "screener_connections_up", "WebSocket connections open and subscribed", registry=r
        )
        self.connections_total = Gauge(
            "screener_connections", "WebSocket connections wanted (chunks)", registry=r
        )
        self.subscriptions = Gauge(
            "screener_subscriptions", "kline subscriptions acknowledged", registry=r
        )
        self.symbols = Gauge("screener_symbols", "Symbols in the tracked universe", registry=r)
        self.redis_up = Gauge("screener_redis_up", "1 when the last Redis call worked", registry=r)
        self.publish_backlog = Gauge(
            "screener_publish_backlog", "Events waiting for Redis", registry=r
        )
        self.last_push_age = Gauge(
            "screener_last_push_age_seconds",
            "Seconds since the last accepted push (-1 before any)",
            registry=r,
        )
        self.rankings = Counter("screener_rankings", "Rankings computed", registry=r)
        self.queue_peak = Gauge(
            "screener_queue_peak",
            "Most items ever waiting in a bounded queue (ingest channel, publish buffer)",
            ["queue"],
            registry=r,
        )

    def watch_age(self, age: Callable[[], float | None]) -> None:
        """Compute the last-push age at scrape time rather than on every push."""
        self.last_push_age.set_function(lambda: -1.0 if (a := age()) is None else a)

    def render(self) -> bytes:
        return generate_latest(self.registry)
