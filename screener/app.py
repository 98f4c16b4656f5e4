"""Wiring: the channels, the root nursery of actors, and signal-driven shutdown.

    universe --(control: frozenset)--> connection x N --(Kline, ConnStatus)--+
    universe, connections --(backfill: frozenset)--> backfill --(history)----+
                                                                             v
    ranking --(StatsRequest)-------------------------------------------> window
    failover --(StatsRequest, REST-price Kline)------------------------> window
    ranking --(Ranking)--> publisher <--(list[MarketData])-------------- window

Every channel is bounded; each sender is a clone owned by one actor, so closing cascades.
Backfill and failover share one paced REST client (`open_rest_client`), owned here.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial

import trio
from loguru import logger

from actors.backfill import REQUESTS_BUFFER as BACKFILL_REQUESTS
from actors.backfill import run_backfill
from actors.failover import run_failover
from actors.publisher import PublisherInbox, run_publisher
from actors.ranking import run_ranking
from actors.rest_client import RestClient, fetch_klines, fetch_tickers, open_rest_client
from actors.universe import run_universe
from actors.window import WindowInbox, run_window
from screener.config import Settings
from screener.http import Views, create_app, serve_http
from screener.metrics import Metrics

# Pushes queue here while the window actor works; 4096 covers a burst of every symbol
# several times over, and backpressure beyond it slows the sockets, never loses data.
INGEST_BUFFER = 4096
# Batches (one per window wakeup) for the publisher, which drains them at once into its
# own coalescing buffer; a small queue is enough.
PUBLISH_QUEUE = 64


class Service:
    """What a running service exposes to its caller (tests, the CLI)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.views = Views.empty()
        self.http_port = 0
        self.metrics.watch_age(lambda: self.views.push_age(trio.current_time()))


async def start_core(
    nursery: trio.Nursery,
    svc: Service,
    *,
    batch_wait_s: float,
    rand: Callable[[], float] = random.random,
) -> trio.MemorySendChannel[WindowInbox]:
    """Publisher, ranking and window, the actors every mode shares, with their two channels.

    Returns the original sender of the window's inbox: the caller hands clones (or the
    original itself) to its feeding actors, so the window ends when they all have."""
    ingest_send, ingest_recv = trio.open_memory_channel[WindowInbox](INGEST_BUFFER)
    events_send, events_recv = trio.open_memory_channel[PublisherInbox](PUBLISH_QUEUE)
    settings, metrics, views = svc.settings, svc.metrics, svc.views
    await nursery.start(
        partial(
            run_publisher,
            events_recv,
            settings=settings.redis,
            status=views.redis,
            metrics=metrics,
            rand=rand,
        )
    )
    await nursery.start(
        partial(
            run_ranking,
            ingest_send.clone(),
            events_send.clone(),
            interval_s=settings.rank_interval_s,
            top_n=settings.top_n,
            lookback_min=settings.lookback_min,
            snapshot=views.ranking,
            metrics=metrics,
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
            batch_wait_s=batch_wait_s,
        )
    )
    return ingest_send


def open_paced_rest(svc: Service) -> AbstractAsyncContextManager[RestClient]:
    """The one paced REST client a mode's backfill and failover share."""
    rest = svc.settings.rest
    return open_rest_client(
        svc.settings.exchange.rest_base,
        rate_per_s=rest.rate_per_s,
        timeout_s=rest.timeout_s,
        metrics=svc.metrics,
    )


async def run_service(
    settings: Settings,
    *,
    wall: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run every actor until cancelled; `started()` once HTTP is listening. `wall` is the
    clock that dates kline history requests (a simulator's in tests); `rand` the jitter
    source of the reconnect backoff (fixed in tests)."""
    svc = Service(settings)
    metrics, views = svc.metrics, svc.views
    fill_send, fill_recv = trio.open_memory_channel[frozenset[str]](BACKFILL_REQUESTS)
    app = create_app(views, metrics, stale_after_s=settings.stale_after_s)
    async with open_paced_rest(svc) as rest, trio.open_nursery() as nursery:
        ingest_send = await start_core(nursery, svc, batch_wait_s=settings.batch_wait_s, rand=rand)
        backfill: trio.MemorySendChannel[frozenset[str]] | None = None
        if settings.rest.backfill:
            await nursery.start(
                partial(
                    run_backfill,
                    fill_recv,
                    ingest_send.clone(),
                    fetch=partial(fetch_klines, rest),
                    lookback_min=settings.lookback_min,
                    progress=views.backfill,
                    metrics=metrics,
                    wall=wall,
                )
            )
            backfill = fill_send
        else:
            fill_send.close()
            fill_recv.close()
        await nursery.start(
            partial(
                run_failover,
                ingest_send.clone(),
                fetch=partial(fetch_tickers, rest),
                feed=views.feed,
                universe=views.universe,
                status=views.rest,
                stale_after_s=settings.stale_after_s,
                poll_s=settings.rest.fallback_poll_s,
                metrics=metrics,
            )
        )
        await nursery.start(
            partial(
                run_universe,
                ingest_send,
                settings=settings.exchange,
                status=views.universe,
                metrics=metrics,
                backfill=backfill,
                gap_after_s=settings.rest.backfill_gap_s,
                rand=rand,
            )
        )
        svc.http_port = await nursery.start(serve_http, app, settings.http_host, settings.http_port)
        logger.bind(actor="app").info(
            "screener serving on {host}:{port}; exchange {ws}; redis {redis}",
            host=settings.http_host,
            port=svc.http_port,
            ws=settings.exchange.ws_url,
            redis=settings.redis.safe_target(),
        )
        task_status.started(svc)


async def cancel_on_signal(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM/SIGINT cancel the root scope; the actors' own cleanup does the rest."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            logger.bind(actor="app").info(
                "{sig} received; shutting down", sig=signal.Signals(signum).name
            )
            scope.cancel()
            return


async def run_until_signal(settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(cancel_on_signal, nursery.cancel_scope)
        await nursery.start(run_service, settings)
