"""Ranking actor: top gainers and losers every `interval_s`, on absolute deadlines.

It asks the window actor for the current per-symbol stats (a `StatsRequest` with a one-shot
reply channel), ranks them with the pure `rank`, replaces the snapshot HTTP reads, logs one
structured line and sends the ranking to the publisher. Given a `charts` snapshot, it also
asks for every symbol's window candles (a `CandlesRequest`: one tuple of shared records per
symbol) and publishes them before the ranking, for the live page. It owns clones of both
channels and closes them on exit. Nothing here is retried.

A round that finds no symbol with data (no contract list yet, windows not filled) ranks
nothing: it is neither published (a consumer of `top_movers` would read an empty list as
"nothing moves") nor put in the snapshot (/top5 keeps the last figures, whose `ts` shows
their age, and /health says whether the feed is fresh), and it is not counted in
`screener_rankings_total`. One line is logged when such a spell begins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import trio
from loguru import logger

from screener.core.metrics import Metrics
from screener.core.models import (
    Charts,
    Ranking,
    SymbolStat,
    WindowInbox,
    ask_candles,
    ask_stats,
)
from screener.core.periodic import Ticker
from screener.core.snapshot import Latest


def rank(stats: Iterable[SymbolStat], *, top_n: int, lookback_min: int, wall_ts: float) -> Ranking:
    """Gainers by change descending, losers ascending; ties broken by symbol name."""
    items = list(stats)
    gainers = sorted(items, key=lambda s: (-s.change_pct, s.symbol))[:top_n]
    losers = sorted(items, key=lambda s: (s.change_pct, s.symbol))[:top_n]
    return Ranking(
        wall_ts=wall_ts,
        lookback_min=lookback_min,
        gainers=tuple(gainers),
        losers=tuple(losers),
        ranked=len(items),
    )


async def run_ranking(
    requests: trio.MemorySendChannel[WindowInbox],
    outbox: trio.MemorySendChannel[Ranking],
    *,
    snapshot: Latest[Ranking | None],
    metrics: Metrics,
    interval_s: float,
    top_n: int,
    lookback_min: int,
    wall: Callable[[], float] = time.time,
    charts: Latest[Charts] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`charts`: also obtain every symbol's window candles each round and publish them
    there, before the ranking, for the live page and `/symbol/<SYMBOL>` (HTTP never asks
    the window actor itself)."""
    log = logger.bind(actor="ranking")
    empty_spell = False  # the last round found nothing to rank
    async with requests, outbox:
        ticker = Ticker(interval_s)
        task_status.started()
        while True:
            await ticker.wait()  # a slow round skips ticks instead of drifting
            stats = await ask_stats(requests)
            if not stats:
                if not empty_spell:
                    log.info("ranking: no symbol has data in the window; nothing published")
                empty_spell = True
                continue
            empty_spell = False
            ranking = rank(stats, top_n=top_n, lookback_min=lookback_min, wall_ts=wall())
            if charts is not None:
                candles = await ask_candles(requests)
                charts.set(
                    Charts(wall_ts=ranking.wall_ts, lookback_min=lookback_min, candles=candles)
                )
            snapshot.set(ranking)
            metrics.rankings.inc()
            log.info(
                "ranking",
                ranked=ranking.ranked,
                gainers=[(s.symbol, round(s.change_pct, 4)) for s in ranking.gainers],
                losers=[(s.symbol, round(s.change_pct, 4)) for s in ranking.losers],
            )
            await outbox.send(ranking)
