"""Wiring: every channel, every actor, and the shutdown order, for both modes.

    universe --(plans)--> connections' pool --> connection x N --(Kline, ConnStatus)---+
    universe, connections --(fills: symbols)--> backfill --(history Kline)------------+
                                                                                      v
    ranking --(StatsRequest)------------------------------------------------------> window
    failover --(StatsRequest, REST-price Kline)-----------------------------------> window
    ranking --(Ranking: this shard's)--> fleet --(global Ranking, Leadership)--> publisher
    window --(list[MarketData])----------------------------------------------> publisher

`screener` (mode "ws") runs all of them; `screener rest` (mode "rest") the same actors without
the pool, the connections and the failover: its universe hands every symbol to the backfill
each `REST_POLL_S`. The fleet actor holds this replica's shard lease and fences the publisher
with it, and merges the shards' rankings into the one /top5 serves. Every channel is bounded;
each sender is a clone owned by one actor, so closing cascades. The universe, backfill and
failover share one paced REST client, owned here. A heartbeat task stamps the time every
second for /livez, so liveness speaks of the event loop alone.

Shutdown: SIGTERM or SIGINT sets `stop`; hypercorn stops accepting and drains the requests in
flight (`graceful_timeout`); then the root scope is cancelled, connections close with 1000
and the publisher flushes what is pending under its own shielded deadline.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, Literal, NamedTuple

import trio
from loguru import logger

from actors.backfill import REQUESTS_BUFFER, run_backfill
from actors.connection import run_connection
from actors.failover import run_failover
from actors.fleet import run_fleet
from actors.publisher import run_publisher
from actors.ranking import run_ranking
from actors.universe import run_universe
from actors.window import CandleDuty, run_window
from screener.core.closing import Closer
from screener.core.config import Settings
from screener.core.metrics import Metrics
from screener.core.models import ChunkPlan, PublisherInbox, Ranking, SymbolSet, WindowInbox
from screener.core.names import LIVE_INTERVAL
from screener.core.snapshot import Views
from screener.core.supervise import Reachability, supervise_pool
from screener.fleet.agreement import Agreement
from screener.http.probes import run_heartbeat
from screener.http.routes import create_app, serve_http
from screener.http.stream import Streams
from screener.mexc.client import fetch_contracts, fetch_klines, fetch_tickers, open_rest_client
from screener.redis.client import make_client

Mode = Literal["ws", "rest"]

# Pushes queue here while the window actor works; 4096 covers a burst of every symbol
# several times over, and backpressure beyond it slows the sockets, never loses data.
INGEST_BUFFER: Final = 4096
# Batches (one per window wakeup) for the publisher, which drains them at once into its
# own coalescing buffer; a small queue is enough.
PUBLISH_QUEUE: Final = 64
# Chunk plans, one per contract-list read (hourly): the pool applies each at once.
PLANS_BUFFER: Final = 4
# This shard's rankings for the fleet actor, one per RANK_INTERVAL_S.
RANKINGS_BUFFER: Final = 2
# HTTP connections live page streams may never take, so /health and /top5 stay reachable.
TAKEOVER_HOLD_LEASES: Final = 3
"""A standby keeps what it receives for this many leases: a takeover comes within about
one lease plus a renewal period of the leader's last publish, so what the leader did not
publish is still here when this replica takes over (screener/redis/lanes.py)."""
HTTP_RESERVED: Final = 4
CANDLE_KEY_MARGIN_S: Final = 600
"""A published candle's record outlives LOOKBACK_MIN by this much: every candle a replica can
still send (held at most LOOKBACK_MIN, repaired within it) finds its record, clock skew
between replicas included."""


class Service:
    """What a running service exposes to its caller (tests, the CLI)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        redis = settings.redis
        self.metrics = Metrics(
            channels=(redis.market_data_channel, redis.top_movers_channel),
            shard=settings.fleet.shard,
        )
        self.views = Views.empty()
        self.http_port = 0
        self.metrics.watch_last_push(lambda: self.views.push_age(trio.current_time()))


class Shape(NamedTuple):
    """How a mode differs: everything else is wired the same."""

    port: int
    stale_after_s: float  # /health's freshness limit
    batch_wait_s: float
    refresh_s: float  # between contract-list reads
    interval: str  # of the backfilled candles
    stream: bool  # WebSocket connections and the REST failover
    backfill: bool


def shape_of(settings: Settings, mode: Mode) -> Shape:
    if mode == "rest":
        return Shape(
            port=settings.rest.port,
            # "ok" while a kline fetch succeeded within two poll periods.
            stale_after_s=2 * settings.rest.poll_s,
            batch_wait_s=0.0,  # REST candles arrive minutes apart: no batching to trade
            refresh_s=settings.rest.poll_s,  # each read starts a poll round
            interval=settings.rest.mexc_interval,
            stream=False,
            backfill=True,
        )
    return Shape(
        port=settings.http_port,
        stale_after_s=settings.stale_after_s,
        batch_wait_s=settings.batch_wait_s,
        refresh_s=settings.exchange.contracts_refresh_s,
        interval="Min1",
        stream=True,
        backfill=settings.rest.backfill,
    )


def candle_duty(
    settings: Settings,
    shape: Shape,
    fills: trio.MemorySendChannel[SymbolSet] | None,
    views: Views,
    metrics: Metrics,
    wall: Callable[[], float],
) -> CandleDuty | None:
    """The window's candle closer, with a clone of the backfill's requests for its repairs
    (none without the backfill: a minute the live feed did not see end is then given up at
    once, counted). Only for
    one-minute candles: `screener rest` at another interval publishes none."""
    if shape.interval != LIVE_INTERVAL:
        return None
    closer = Closer(
        lookback_min=settings.lookback_min,
        grace_s=settings.candle_grace_s,
        wall=wall,
        repairable=fills is not None,
    )
    repairs = fills.clone() if fills is not None else None
    return CandleDuty(closer, repairs, views.candles_owed, metrics)


async def run_service(
    settings: Settings,
    *,
    mode: Mode = "ws",
    stop: Callable[[], Awaitable[None]] = trio.sleep_forever,
    wall: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor of `mode`; `started()` once HTTP is listening. Returns when `stop`
    returned and HTTP drained (or on cancel). `wall` dates kline history requests and
    listings (a simulator's clock in tests); `rand` is the jitter of every backoff."""
    svc = Service(settings)
    shape = shape_of(settings, mode)
    metrics, views = svc.metrics, svc.views
    ingest_send, ingest_recv = trio.open_memory_channel[WindowInbox](INGEST_BUFFER)
    events_send, events_recv = trio.open_memory_channel[PublisherInbox](PUBLISH_QUEUE)
    fill_send, fill_recv = trio.open_memory_channel[SymbolSet](REQUESTS_BUFFER)
    plan_send, plan_recv = trio.open_memory_channel[ChunkPlan](PLANS_BUFFER)
    rank_send, rank_recv = trio.open_memory_channel[Ranking](RANKINGS_BUFFER)
    fills = fill_send if shape.backfill else None
    plans = plan_send if shape.stream else None
    if not shape.backfill:
        fill_send.close()
        fill_recv.close()
    if not shape.stream:
        plan_send.close()
        plan_recv.close()
    rest_settings = settings.rest
    flushed = trio.Event()  # the publisher's final flush ended: the lease may go
    async with (
        open_rest_client(
            settings.exchange.rest_base,
            rate_per_s=rest_settings.rate_per_s,
            timeout_s=rest_settings.timeout_s,
            metrics=metrics,
            rand=rand,
        ) as rest,
        trio.open_nursery() as nursery,
    ):
        # /livez's beat: it runs as long as the loop does, whatever the actors meet.
        await nursery.start(run_heartbeat, views.heartbeat)
        await nursery.start(
            partial(
                run_publisher,
                events_recv,
                settings=settings.redis,
                status=views.redis,
                metrics=metrics,
                rand=rand,
                fenced=True,
                hold_s=TAKEOVER_HOLD_LEASES * settings.fleet.lease_s,
                flushed=flushed,
                candle_ttl_s=settings.lookback_min * 60 + CANDLE_KEY_MARGIN_S,
                candle_hold_s=settings.lookback_min * 60,
                candle_lag=views.candles_unpublished,
            )
        )
        await nursery.start(
            partial(
                run_fleet,
                rank_recv,
                events_send.clone(),
                settings=settings.fleet,
                agreement=Agreement.of(settings),
                client=partial(make_client, settings.redis, announce_moves=False),
                snapshot=views.ranking,
                status=views.fleet,
                metrics=metrics,
                top_n=settings.top_n,
                rank_interval_s=settings.rank_interval_s,
                flushed=flushed,
            )
        )
        await nursery.start(
            partial(
                run_ranking,
                ingest_send.clone(),
                rank_send,
                interval_s=settings.rank_interval_s,
                top_n=settings.top_n,
                lookback_min=settings.lookback_min,
                snapshot=views.shard_ranking,
                metrics=metrics,
                charts=views.charts,
            )
        )
        await nursery.start(
            partial(
                run_window,
                ingest_recv,
                events_send,
                lookback_min=settings.lookback_min,
                feed=views.feed,
                metrics=metrics,
                batch_wait_s=shape.batch_wait_s,
                candles=candle_duty(settings, shape, fills, views, metrics, wall),
            )
        )
        if shape.backfill:
            await nursery.start(
                partial(
                    run_backfill,
                    fill_recv,
                    ingest_send.clone(),
                    fetch=partial(fetch_klines, rest),
                    metrics=metrics,
                    wall=wall,
                    lookback_min=settings.lookback_min,
                    interval=shape.interval,
                    progress=views.backfill,
                )
            )
        if shape.stream:
            await nursery.start(
                partial(
                    run_failover,
                    ingest_send.clone(),
                    fetch=partial(fetch_tickers, rest),
                    metrics=metrics,
                    feed=views.feed,
                    universe=views.universe,
                    status=views.rest,
                    stale_after_s=settings.stale_after_s,
                    poll_s=rest_settings.fallback_poll_s,
                )
            )
            # The connections' supervisor: one connection actor per chunk of the latest plan.
            ingest_for_conns = ingest_send.clone()
            fills_for_conns = fills.clone() if fills is not None else None
            # One view of the exchange shared by every connection: when one gets through
            # after an outage, the others stop waiting out their own backoff.
            reachability = Reachability(rand=rand)

            def connection(
                conn_id: int, control: trio.MemoryReceiveChannel[SymbolSet]
            ) -> Awaitable[None]:
                return run_connection(
                    control,
                    ingest_for_conns.clone(),
                    conn_id=conn_id,
                    settings=settings.exchange,
                    metrics=metrics,
                    rand=rand,
                    gaps=None if fills_for_conns is None else fills_for_conns.clone(),
                    gap_after_s=rest_settings.backfill_gap_s,
                    reachability=reachability,
                )

            await nursery.start(
                partial(
                    supervise_pool,
                    plan_recv,
                    connection,
                    owned=[c for c in (ingest_for_conns, fills_for_conns) if c is not None],
                )
            )
        ingest_send.close()  # every feeding actor holds its own clone
        await nursery.start(
            partial(
                run_universe,
                plans,
                fills,
                fetch=partial(fetch_contracts, rest),
                settings=settings.exchange,
                shard=(settings.fleet.shard, settings.fleet.shards),
                refresh_s=shape.refresh_s,
                status=views.universe,
                metrics=metrics,
                wall=wall,
                rand=rand,
            )
        )
        streams = Streams(
            views,
            metrics,
            stale_after_s=shape.stale_after_s,
            rest_mode=mode == "rest",
            max_clients=min(
                settings.max_stream_clients, max(0, settings.http_max_connections - HTTP_RESERVED)
            ),
        )
        await nursery.start(partial(streams.run, stop=stop))  # ends every stream on `stop`
        app = create_app(
            views,
            metrics,
            stale_after_s=shape.stale_after_s,
            rest_mode=mode == "rest",
            streams=streams,
        )

        async def serve_then_stop(task_status: trio.TaskStatus[int]) -> None:
            await serve_http(
                app,
                settings.http_host,
                shape.port,
                stop=stop,
                max_connections=settings.http_max_connections,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # HTTP drained: now the actors stop

        svc.http_port = await nursery.start(serve_then_stop)
        if shape.stream:
            logger.bind(actor="app").info(
                "screener serving on {host}:{port}; exchange {ws}; redis {redis}",
                host=settings.http_host,
                port=svc.http_port,
                ws=settings.exchange.ws_url,
                redis=settings.redis.safe_target(),
            )
        else:
            logger.bind(actor="app").info(
                "REST screener serving on {host}:{port}; {base} every {poll:g}s at {interval}; "
                "redis {redis}",
                host=settings.http_host,
                port=svc.http_port,
                base=settings.exchange.rest_base,
                poll=rest_settings.poll_s,
                interval=rest_settings.interval,
                redis=settings.redis.safe_target(),
            )
        task_status.started(svc)


async def set_on_signal(
    stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM/SIGINT set `stop`: the service drains HTTP, then stops its actors."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            logger.bind(actor="app").info(
                "{sig} received; shutting down", sig=signal.Signals(signum).name
            )
            stop.set()
            return


async def run_until_signal(settings: Settings, mode: Mode = "ws") -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(set_on_signal, stop)
        await run_service(settings, mode=mode, stop=stop.wait)
        nursery.cancel_scope.cancel()
