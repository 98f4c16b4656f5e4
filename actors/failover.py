"""Failover actor: REST ticker prices into the windows while the live feed is stale.

It watches the feed snapshot's `last_push_at` (written by the window actor, live pushes only)
and reads the tracked symbols from the universe snapshot. When no live push arrived for
`stale_after_s` (counted from start when none ever did) it polls `contract/ticker` (every
contract in one call) every `poll_s` on absolute deadlines, asks the window for the last
prices it holds (a `StatsRequest`), and sends each tracked symbol's `lastPrice` as a
"mexc-rest" `Kline` of the ticker's minute. The window merges it as an update of that
minute's candle; a new minute opens at the previous close, as MEXC's candles do, so the
ranking and the events go on. The first live push ends the failover; the WebSocket
connections are not touched and keep reconnecting on their own meanwhile.

Output: an owned clone of the window inbox, closed on exit. A failed poll (the client has
retried already) is reported in /health through `status` and tried again at the next tick.
Nothing else is retried; on cancel a poll in flight is abandoned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from loguru import logger

from screener.core.metrics import Metrics
from screener.core.models import (
    REST_SOURCE,
    FeedStatus,
    Kline,
    RestFeedStatus,
    UniverseStatus,
    WindowInbox,
    ask_stats,
)
from screener.core.periodic import Ticker, wait_quiet
from screener.core.snapshot import Latest
from screener.mexc.client import RestFailed
from screener.mexc.rest import Tick

FetchTickers = Callable[[], Awaitable[dict[str, Tick]]]
"""Every contract's last price; raises `RestFailed`."""


def price_update(symbol: str, tick: Tick, last: float | None) -> Kline:
    """A REST price as the state of its minute's candle, opening at the last price held
    (at the price itself for a symbol the window holds nothing of)."""
    p = tick.price
    o = p if last is None else last
    return Kline(
        symbol=symbol,
        t=tick.ts_ms // 60_000 * 60,
        open=o,
        high=max(o, p),
        low=min(o, p),
        close=p,
        volume=0.0,  # the ticker has no per-minute volume; the window keeps what it holds
        amount=0.0,
        ts_ms=tick.ts_ms,
        source=REST_SOURCE,
    )


async def wait_stale(feed: Latest[FeedStatus], since: float, stale_after_s: float) -> None:
    """Return once no live push arrived for `stale_after_s` (counted from `since` before the
    first push); wakes only at the deadlines, which move with each push."""

    def last() -> float:
        at = feed.value.last_push_at
        return since if at is None else at

    await wait_quiet(last, stale_after_s)


class Failover:
    """The actor's state: where prices go, where freshness and the tracked symbols are read."""

    def __init__(
        self,
        outbox: trio.MemorySendChannel[WindowInbox],
        fetch: FetchTickers,
        views: tuple[Latest[FeedStatus], Latest[UniverseStatus], Latest[RestFeedStatus]],
        metrics: Metrics,
    ) -> None:
        self.outbox = outbox
        self.fetch = fetch
        self.feed, self.universe, self.status = views
        self.metrics = metrics
        self.log = logger.bind(actor="failover")

    async def poll(self, epoch: float | None) -> int:
        """One round: prices into the windows; how many symbols were updated."""
        try:
            ticks = await self.fetch()
        except RestFailed as exc:
            self.status.set(self.status.value._replace(error=f"REST ticker unavailable: {exc}"))
            return 0
        if self.feed.value.last_push_at != epoch:
            return 0  # a live push came while we asked: it wins
        last = {stat.symbol: stat.price for stat in await ask_stats(self.outbox)}
        updates = [
            price_update(symbol, ticks[symbol], last.get(symbol))
            for symbol in sorted(self.universe.value.tracked)
            if symbol in ticks
        ]
        for update in updates:
            await self.outbox.send(update)
        self.status.set(RestFeedStatus(active=True, last_ok_at=trio.current_time(), error=None))
        return len(updates)

    async def spell(self, stale_after_s: float, poll_s: float) -> None:
        """Poll every `poll_s` on a fixed grid from now until the first live push."""
        epoch = self.feed.value.last_push_at
        began = trio.current_time()
        self.log.warning(
            "no live push for {s:.0f}s: feeding the windows from the REST ticker every {p:g}s",
            s=stale_after_s if epoch is None else began - epoch,
            p=poll_s,
        )
        self.status.set(RestFeedStatus(active=True, last_ok_at=None, error=None))
        self.metrics.feed_rest.set(1)
        ticker = Ticker(poll_s, start=began)
        polls = 0
        while self.feed.value.last_push_at == epoch:
            updated = await self.poll(epoch)
            polls += 1
            if polls == 1 and updated:
                self.log.info("REST failover: {n} symbols updated per poll", n=updated)
            await ticker.wait()  # a slow poll skips ticks instead of drifting
        self.log.info(
            "live pushes are back: REST failover ended after {d:.0f}s and {n} polls",
            d=trio.current_time() - began,
            n=polls,
        )
        self.status.set(RestFeedStatus(active=False, last_ok_at=None, error=None))
        self.metrics.feed_rest.set(0)


async def run_failover(
    outbox: trio.MemorySendChannel[WindowInbox],
    *,
    fetch: FetchTickers,
    feed: Latest[FeedStatus],
    universe: Latest[UniverseStatus],
    status: Latest[RestFeedStatus],
    stale_after_s: float,
    poll_s: float,
    metrics: Metrics,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    failover = Failover(outbox, fetch, (feed, universe, status), metrics)
    async with outbox:
        task_status.started()
        since = trio.current_time()
        while True:
            await wait_stale(feed, since, stale_after_s)
            await failover.spell(stale_after_s, poll_s)
