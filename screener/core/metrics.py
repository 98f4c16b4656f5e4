"""Prometheus metrics, one registry per service instance (no module-level singletons).

Every metric is declared once in `METRICS` (name, help, labels and the label values known in
advance, so each labelled series exists at zero from the start instead of appearing on its
first increment). The registry also carries the process and platform collectors
(`process_*`: RSS, CPU, file descriptors, start time) and `screener_build_info`; no
`_created` series. Counters are thread-safe and monotonic, so actors update them directly;
the hot paths add per batch rather than per message where they can.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from screener import __version__

REJECT_REASONS: Final = (
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
ENDPOINTS: Final = ("contract_detail", "kline", "ticker")
REST_REASONS: Final = (
    "timeout",
    "transport",
    "server",
    "rate_limited",
    "envelope",
    "malformed",
    "status",
)
ROUTES: Final = (
    "/health",
    "/livez",
    "/readyz",
    "/top5",
    "/metrics",
    "/openapi.json",
    "/",
    "/stream",
    "/symbol/<symbol>",
    "other",
)
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds; a push normally reaches Redis within a few ms, an outage shows in the top ones."""
CANDLE_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300)
"""Seconds from a minute's close to its candle in Redis: well under a second normally, the
2 s mark is the promise, the top ones an outage."""
HTTP_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Spec(NamedTuple):
    """One metric: the attribute it is reached by, its kind, name, help and labels;
    `values` are the label values (one tuple per series) created at zero."""

    attr: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: Sequence[tuple[str, ...]] = ()
    buckets: tuple[float, ...] = ()


def _each(*values: str) -> tuple[tuple[str, ...], ...]:
    return tuple((v,) for v in values)


METRICS: Final = (
    Spec("received", Counter, "screener_messages_received", "WebSocket messages received"),
    Spec(
        "rejected",
        Counter,
        "screener_messages_rejected",
        "Messages or pushes rejected, by reason",
        ("reason",),
        _each(*REJECT_REASONS),
    ),
    Spec("published", Counter, "screener_events_published", "Events published", ("channel",)),
    Spec(
        "dropped",
        Counter,
        "screener_events_dropped",
        "Events dropped before Redis (superseded by a newer one of the same symbol)",
    ),
    Spec(
        "skipped",
        Counter,
        "screener_events_skipped",
        "Events Redis did not publish again: published already (a write resent after a "
        "timeout, or pushes another replica of the shard published)",
    ),
    Spec("reconnects", Counter, "screener_reconnects", "WebSocket reconnects after a failure"),
    Spec(
        "reconnects_early",
        Counter,
        "screener_reconnects_early",
        "Reconnects started before their backoff ended: another connection reached the "
        "exchange again after it had been unreachable",
    ),
    Spec(
        "silent_resubscribes",
        Counter,
        "screener_silent_resubscribes",
        "Chunks resubscribed after SILENT_RESUBSCRIBE_S without a push on a live socket",
    ),
    Spec(
        "silent_reconnects",
        Counter,
        "screener_silent_reconnects",
        "Connections replaced: still no push SILENT_RESUBSCRIBE_S after resubscribing",
    ),
    Spec("rs_errors", Counter, "screener_subscribe_errors", "rs.error answers from the exchange"),
    Spec(
        "rest_errors",
        Counter,
        "screener_rest_errors",
        "Failed REST calls",
        ("endpoint",),
        _each(*ENDPOINTS),
    ),
    Spec(
        "rest_requests",
        Counter,
        "screener_rest_requests",
        "REST requests sent (retries included)",
        ("endpoint",),
        _each(*ENDPOINTS),
    ),
    Spec(
        "rest_failures",
        Counter,
        "screener_rest_failures",
        "Failed REST attempts by reason, retried or not",
        ("endpoint", "reason"),
        tuple((e, r) for e in ENDPOINTS for r in REST_REASONS),
    ),
    Spec(
        "rest_rate",
        Gauge,
        "screener_rest_request_rate_limit",
        "REST requests per second in force (halved after rate-limit answers)",
    ),
    Spec(
        "backfill_symbols",
        Counter,
        "screener_backfill_symbols",
        "Symbols refilled from REST klines",
        ("result",),
        _each("ok", "failed"),
    ),
    Spec("feed_rest", Gauge, "screener_feed_rest", "1 while the REST ticker feeds the windows"),
    Spec("connections_up", Gauge, "screener_connections_up", "WebSockets open and subscribed"),
    Spec("connections_total", Gauge, "screener_connections", "WebSockets wanted (chunks)"),
    Spec("subscriptions", Gauge, "screener_subscriptions", "kline subscriptions acknowledged"),
    Spec("symbols", Gauge, "screener_symbols", "Symbols in the tracked universe"),
    Spec("redis_up", Gauge, "screener_redis_up", "1 when the last Redis write worked"),
    Spec("publish_backlog", Gauge, "screener_publish_backlog", "Events waiting for Redis"),
    Spec("rankings", Counter, "screener_rankings", "Rankings made with at least one symbol"),
    Spec("stream_clients", Gauge, "screener_stream_clients", "Live page streams open"),
    Spec(
        "stream_dropped",
        Counter,
        "screener_stream_clients_dropped",
        "Live page streams ended because the client fell a queue behind (not waited for)",
    ),
    Spec(
        "stream_refused",
        Counter,
        "screener_stream_clients_refused",
        "Live page streams refused (503): MAX_STREAM_CLIENTS open, or shutting down",
    ),
    Spec(
        "queue_peak",
        Gauge,
        "screener_queue_peak",
        "Most items ever waiting in a bounded queue (ingest channel, publish buffer)",
        ("queue",),
        _each("ingest", "publish_buffer"),
    ),
    Spec(
        "fleet_leader",
        Gauge,
        "screener_fleet_leader",
        "1 while this replica may publish for its shard (FLEET_SHARD): it holds the lease "
        "and the lease is still valid by its own clock (read at each scrape)",
        ("shard",),
    ),
    Spec(
        "fleet_term",
        Gauge,
        "screener_fleet_term",
        "The shard's lease term, as last seen",
        ("shard",),
    ),
    Spec(
        "fleet_renewals",
        Counter,
        "screener_fleet_lease_requests",
        "Lease acquire-or-renew requests by outcome: granted (held by this replica), "
        "standby (held by another), unconfirmed (held by this replica but not extended: its "
        "previous answer came too late), refused (FLEET_REPLICA_ID in use by another "
        "process, or a configuration that differs from the fleet's), failed (no answer in "
        "time, or an error), late (reached Redis after its deadline, which then changed "
        "nothing; each also counts as failed)",
        ("outcome",),
        _each("granted", "standby", "unconfirmed", "refused", "failed", "late"),
    ),
    Spec(
        "fleet_refused",
        Gauge,
        "screener_fleet_refused",
        "1 while Redis refuses to let this replica lead, by reason: replica_id (another live "
        "process has its FLEET_REPLICA_ID), config (the fleet on its channel runs other "
        "settings); /health's problems say which",
        ("reason",),
        _each("replica_id", "config"),
    ),
    Spec(
        "fleet_takeovers",
        Counter,
        "screener_fleet_takeovers",
        "Times this replica took its shard's lease over from another replica",
    ),
    Spec(
        "fleet_standby_events",
        Counter,
        "screener_fleet_standby_events",
        "Events left unpublished because this replica stands by (its leader publishes them)",
    ),
    Spec(
        "fleet_fenced_writes",
        Counter,
        "screener_fleet_fenced_writes",
        "Writes Redis refused because this replica's token no longer holds its shard's lease",
    ),
    Spec(
        "publish_latency",
        Histogram,
        "screener_push_to_publish_seconds",
        "From the exchange's push time to the event written to Redis",
        buckets=LATENCY_BUCKETS,
    ),
    Spec(
        "candles_published",
        Counter,
        "screener_candles_published",
        "Closed one-minute candles published, by where their values came from (mexc: the "
        "minute's last push; mexc-rest-kline: the REST kline endpoint)",
        ("source",),
        _each("mexc", "mexc-rest-kline"),
    ),
    Spec(
        "candles_repaired",
        Counter,
        "screener_candles_repaired",
        "Closed minutes whose end the live feed did not see, made from the REST kline endpoint",
    ),
    Spec(
        "candles_skipped",
        Counter,
        "screener_candles_skipped",
        "Closed candles Redis did not publish again: that (symbol, minute) was published "
        "already (by this replica, another, or a process before a restart)",
    ),
    Spec(
        "candles_dropped",
        Counter,
        "screener_candles_dropped",
        "Closed minutes never published, by reason (expired: held past LOOKBACK_MIN while "
        "Redis did not take them; unrepaired: the REST kline endpoint did not answer within "
        "LOOKBACK_MIN; absent: the endpoint has no row for it; refused: Redis refused it for "
        "good)",
        ("reason",),
        _each("expired", "unrepaired", "absent", "refused"),
    ),
    Spec(
        "candle_late_pushes",
        Counter,
        "screener_candle_late_pushes",
        "Pushes for a minute already closed (they never make a second candle)",
    ),
    Spec(
        "candle_delay",
        Histogram,
        "screener_candle_delay_seconds",
        "From a live-closed minute's close (the exchange time of the push or clock that "
        "closed it) to its candle written to Redis",
        buckets=CANDLE_BUCKETS,
    ),
    Spec(
        "http_duration",
        Histogram,
        "screener_http_request_duration_seconds",
        "HTTP request handling time by route",
        ("route",),
        _each(*ROUTES),
        HTTP_BUCKETS,
    ),
)


class Metrics:
    """The metrics of one service instance, each an attribute named as in `METRICS`."""

    received: Counter
    rejected: Counter
    published: Counter
    dropped: Counter
    skipped: Counter
    reconnects: Counter
    reconnects_early: Counter
    silent_resubscribes: Counter
    silent_reconnects: Counter
    rs_errors: Counter
    rest_errors: Counter
    rest_requests: Counter
    rest_failures: Counter
    rest_rate: Gauge
    backfill_symbols: Counter
    feed_rest: Gauge
    connections_up: Gauge
    connections_total: Gauge
    subscriptions: Gauge
    symbols: Gauge
    redis_up: Gauge
    publish_backlog: Gauge
    rankings: Counter
    stream_clients: Gauge
    stream_dropped: Counter
    stream_refused: Counter
    queue_peak: Gauge
    fleet_leader: Gauge
    fleet_term: Gauge
    fleet_renewals: Counter
    fleet_refused: Gauge
    fleet_takeovers: Counter
    fleet_standby_events: Counter
    fleet_fenced_writes: Counter
    candles_published: Counter
    candles_repaired: Counter
    candles_skipped: Counter
    candles_dropped: Counter
    candle_late_pushes: Counter
    candle_delay: Histogram
    publish_latency: Histogram
    http_duration: Histogram

    def __init__(
        self, channels: Sequence[str] = ("market_data", "top_movers"), shard: int = 0
    ) -> None:
        # The client library offers only a process-wide switch for `_created` series; every
        # registry of this process is ours, so turning them off here is what we want.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        r = self.registry
        for spec in METRICS:
            metric = (
                Histogram(spec.name, spec.help, spec.labels, registry=r, buckets=spec.buckets)
                if spec.kind is Histogram
                else spec.kind(spec.name, spec.help, spec.labels, registry=r)
            )
            # Label values known only from the configuration: created at zero all the same.
            values = {
                "published": _each(*channels),
                "fleet_leader": _each(str(shard)),
                "fleet_term": _each(str(shard)),
            }.get(spec.attr, spec.values)
            for labels in values:
                metric.labels(*labels)
            setattr(self, spec.attr, metric)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("screener_build", "The running screener", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.last_push = Gauge(
            "screener_last_push_timestamp_seconds",
            "Unix time of the last accepted live push (0 before any)",
            registry=r,
        )

    def watch_last_push(self, age: Callable[[], float | None]) -> None:
        """Compute the last push's Unix time at scrape time from its age (on trio's clock),
        rather than on every push."""
        self.last_push.set_function(lambda: 0.0 if (a := age()) is None else time.time() - a)

    def render(self) -> bytes:
        return generate_latest(self.registry)
