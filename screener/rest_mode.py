"""`screener rest`: the screener fed by REST polling alone, without any WebSocket.

The same actors as the WebSocket service, wired differently: every `REST_POLL_S` the universe
actor (`stream=False`: no connections) re-reads the contract list and hands every tracked
symbol to the backfill actor, which fetches each one's klines at `INTERVAL` over the
`LOOKBACK_MIN` window through the paced REST client into the same window actor (history:
merged by candle `t`, no events). The ranking actor ranks them every `RANK_INTERVAL_S` into
/top5 and the publisher sends each ranking on `TOP_MOVERS_CHANNEL`. HTTP serves /health,
/top5 and /metrics on `REST_SCREENER_PORT`; /health says `"feed":"rest"` and is "ok" while a
kline fetch succeeded within two poll periods.

Channels, buffers and shutdown are those of `screener.app`; only the wiring is here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import trio
from loguru import logger

from actors.backfill import REQUESTS_BUFFER, run_backfill
from actors.rest_client import fetch_klines
from actors.universe import run_universe
from screener.app import Service, cancel_on_signal, open_paced_rest, start_core
from screener.config import Settings
from screener.http import create_app, serve_http


def fresh_for_s(settings: Settings) -> float:
    """How long /health stays "ok" after the last successful kline fetch."""
    return 2 * settings.rest.poll_s


async def run_rest_service(
    settings: Settings,
    *,
    wall: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled; `started()` once HTTP is listening on `REST_SCREENER_PORT`."""
    svc = Service(settings)
    metrics, views = svc.metrics, svc.views
    fill_send, fill_recv = trio.open_memory_channel[frozenset[str]](REQUESTS_BUFFER)
    app = create_app(views, metrics, stale_after_s=fresh_for_s(settings), rest_mode=True)
    async with open_paced_rest(svc) as rest, trio.open_nursery() as nursery:
        # REST candles arrive minutes apart: no batching wait to trade.
        ingest_send = await start_core(nursery, svc, batch_wait_s=0.0, rand=rand)
        await nursery.start(
            partial(
                run_backfill,
                fill_recv,
                ingest_send.clone(),
                fetch=partial(fetch_klines, rest),
                lookback_min=settings.lookback_min,
                interval=settings.rest.mexc_interval,
                progress=views.backfill,
                metrics=metrics,
                wall=wall,
            )
        )
        await nursery.start(
            partial(
                run_universe,
                ingest_send,
                # Each read of the contract list starts a poll round over every symbol.
                settings=replace(settings.exchange, contracts_refresh_s=settings.rest.poll_s),
                status=views.universe,
                metrics=metrics,
                rand=rand,
                backfill=fill_send,
                stream=False,
            )
        )
        svc.http_port = await nursery.start(serve_http, app, settings.http_host, settings.rest.port)
        logger.bind(actor="app").info(
            "REST screener serving on {host}:{port}; {base} every {poll:g}s at {interval}; "
            "redis {redis}",
            host=settings.http_host,
            port=svc.http_port,
            base=settings.exchange.rest_base,
            poll=settings.rest.poll_s,
            interval=settings.rest.interval,
            redis=settings.redis.safe_target(),
        )
        task_status.started(svc)


async def run_rest_until_signal(settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(cancel_on_signal, nursery.cancel_scope)
        await nursery.start(run_rest_service, settings)
