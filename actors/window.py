"""Window actor: per-symbol rolling windows of 1-minute candles keyed by open time.

Inputs (one inbox, fan-in from every connection actor and the ranking actor): `Kline`
pushes, `ConnStatus` changes, `StatsRequest`s and `CandlesRequest`s (the ranking actor's,
for the live page). Output: batches of `MarketData` to the publisher. It owns the windows;
nobody else reads them except through a `StatsRequest` or a `CandlesRequest`. It closes its
outbox when the inbox ends, so shutdown cascades. Nothing is retried here: the core is pure,
a bug is a crash.

The window holds candles with `t > now_minute - lookback`, `now_minute` being the minute of
the newest exchange push time seen, so a window is measured in minutes, never in messages.

Besides live pushes (`source` "mexc"), the inbox carries REST history (backfill actor,
"mexc-rest-history": merged without events, never over a live candle) and REST prices
(failover actor, "mexc-rest": an update of the minute's candle, with events). Only live
pushes refresh `last_push_at`, the feed's freshness.

`ConnStatus` items keep the feed snapshot's connection counts and `down_since` (`Links`): since
when the longest-down connection has been down, for /health's "degraded".

Closed candles: with a `Candles` (the closer of screener/core/closing.py, its repair requests
and its snapshot), every live push, history row, `HistoryDone` and connection break goes to
the closer too; what it closes goes to the publisher as one `CandleBatch` per wakeup, the
symbols it owes minutes to the backfill (never waiting: it asks again later), and while it
has anything to close the window wakes at least every CLOSER_WAKE_S to let the clocks close
it.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left, bisect_right
from collections.abc import AsyncIterator, Sequence
from typing import Final, TypeVar

import trio
from loguru import logger

from screener.core.closing import Closer, Dropped
from screener.core.metrics import Metrics
from screener.core.models import (
    HISTORY_SOURCE,
    LIVE_SOURCE,
    CandleBatch,
    CandleLag,
    Candles,
    CandlesRequest,
    ClosedCandle,
    ConnStatus,
    FeedStatus,
    HistoryDone,
    Kline,
    MarketData,
    PublisherInbox,
    StatsRequest,
    SymbolSet,
    SymbolStat,
    Unwatched,
    WindowInbox,
)
from screener.core.snapshot import Latest

T = TypeVar("T")

CLOSER_WAKE_S: Final = 1.0
"""The longest the window sleeps while the closer may have something to close by the clock
(a silent symbol's minute, a repair to ask for): an idle feed still closes its minutes."""


class CandleDuty:
    """The window's candle duty: the closer, where its repair requests go, and the snapshot
    of the minutes it owes (for /health)."""

    def __init__(
        self,
        closer: Closer,
        repairs: trio.MemorySendChannel[SymbolSet] | None,
        owed: Latest[CandleLag],
        metrics: Metrics,
    ) -> None:
        self.closer = closer
        self.repairs = repairs
        self.owed = owed
        self.metrics = metrics
        self.housekept_at = float("-inf")

    def take(self, item: Kline) -> ClosedCandle | None:
        if item.source == LIVE_SOURCE:
            return self.closer.push(item)
        if item.source == HISTORY_SOURCE:
            return self.closer.history(item)
        return None  # the failover's REST prices never close a candle

    def done(self, item: HistoryDone) -> None:
        self._count(self.closer.history_done(item))

    def wake(self, closed: list[ClosedCandle]) -> None:
        """After each wakeup: what the clocks closed, the counts, and at most once a second
        (trio time) the repair requests and the snapshot."""
        closer, metrics = self.closer, self.metrics
        by_clock, dropped = closer.tick()
        closed.extend(by_clock)
        self._count(dropped)
        if closer.late:
            metrics.candle_late_pushes.inc(closer.late)
            closer.late = 0
        if closer.repaired:
            metrics.candles_repaired.inc(closer.repaired)
            closer.repaired = 0
        now = trio.current_time()
        if now - self.housekept_at < CLOSER_WAKE_S:
            return
        self.housekept_at = now
        self.owed.set(closer.lag())
        symbols = closer.repairs()
        if symbols and self.repairs is not None:
            try:
                self.repairs.send_nowait(symbols)
            except trio.WouldBlock:  # the backfill is busy: asked again after the retry time
                pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.repairs = None

    def close(self) -> None:
        if self.repairs is not None:
            self.repairs.close()

    def _count(self, dropped: Dropped) -> None:
        if dropped.absent:
            self.metrics.candles_dropped.labels("absent").inc(dropped.absent)
        if dropped.unrepaired:
            self.metrics.candles_dropped.labels("unrepaired").inc(dropped.unrepaired)
            logger.bind(actor="window").warning(
                "{n} closed minutes given up: the REST kline endpoint did not answer for them "
                "within the lookback",
                n=dropped.unrepaired,
            )


def merged(held: Kline, k: Kline) -> Kline | None:
    """The candle to hold when a non-live `k` meets `held` for the same minute (None: keep
    `held`). History never replaces a live push but replaces our REST approximation; a REST
    price updates the held candle (its open and volume stay, high/low widen) unless the held
    candle is newer."""
    if k.source == HISTORY_SOURCE:
        return None if held.source == LIVE_SOURCE else k
    if held.ts_ms > k.ts_ms:
        return None
    return k._replace(
        open=held.open,
        high=max(held.high, k.high),
        low=min(held.low, k.low),
        volume=held.volume,
        amount=held.amount,
    )


class Windows:
    """The pure core: candles per symbol, the change over the window, expiry."""

    def __init__(self, lookback_min: int) -> None:
        self.lookback_s = lookback_min * 60
        self.now_minute = 0
        # Per symbol: open times ascending and the candles in the same order.
        self._times: dict[str, list[int]] = {}
        self._candles: dict[str, list[Kline]] = {}

    @property
    def cutoff(self) -> int:
        """Candles with `t <= cutoff` are outside the window."""
        return self.now_minute - self.lookback_s

    def apply(self, k: Kline) -> MarketData | None:
        """Merge one push; None when it is too old for the window (the caller counts it)."""
        minute = k.ts_ms // 60_000 * 60
        if minute > self.now_minute:
            self.now_minute = minute
        cutoff = self.now_minute - self.lookback_s
        if k.t <= cutoff:
            return None
        times = self._times.get(k.symbol)
        if times is None:
            times = self._times[k.symbol] = []
            self._candles[k.symbol] = []
        candles = self._candles[k.symbol]
        if not times or k.t > times[-1]:
            times.append(k.t)
            candles.append(k)
        else:
            i = bisect_left(times, k.t)
            if times[i] != k.t:
                times.insert(i, k.t)
                candles.insert(i, k)
            elif k.source == LIVE_SOURCE:
                candles[i] = k
            else:  # history and REST prices defer to what is held for that minute
                held = merged(candles[i], k)
                if held is None:
                    return None
                k = candles[i] = held
        # Another symbol may have moved the clock since this one was last touched.
        if times[0] <= cutoff:
            drop = bisect_left(times, cutoff + 1)
            del times[:drop], candles[:drop]
        if k.source == HISTORY_SOURCE:
            return None  # history fills the window but is no news: no event
        oldest, newest = candles[0], candles[-1]
        return MarketData(
            kline=k,
            change_pct=(newest.close / oldest.open - 1.0) * 100.0,
            window_min=(newest.t - oldest.t) // 60 + 1,
        )

    def stats(self) -> tuple[SymbolStat, ...]:
        """Every symbol with candles in the window; expired candles are dropped here."""
        cutoff = self.cutoff
        out: list[SymbolStat] = []
        for symbol in list(self._times):
            times, candles = self._times[symbol], self._candles[symbol]
            if times[0] <= cutoff:
                drop = bisect_left(times, cutoff + 1)
                del times[:drop], candles[:drop]
                if not times:
                    del self._times[symbol], self._candles[symbol]
                    continue
            newest = candles[-1]
            out.append(
                SymbolStat(
                    symbol=symbol,
                    change_pct=(newest.close / candles[0].open - 1.0) * 100.0,
                    price=newest.close,
                )
            )
        return tuple(out)

    def candles(self, symbol: str) -> Sequence[Kline]:
        return tuple(self._candles.get(symbol, ()))

    def all_candles(self) -> Candles:
        """Every symbol's candles inside the window, oldest first: one tuple per symbol of
        the held (immutable) records, nothing copied or dropped here."""
        cutoff = self.cutoff
        out: dict[str, tuple[Kline, ...]] = {}
        for symbol, times in self._times.items():
            first = bisect_right(times, cutoff)
            if first < len(times):
                out[symbol] = tuple(self._candles[symbol][first:])
        return out

    def held(self) -> int:
        """Candles held in all windows (memory bound checks)."""
        return sum(len(c) for c in self._candles.values())


class Links:
    """Each chunk's connection, up or down since when (trio time), from `ConnStatus` items.

    A chunk counts as down from its first (down) status, sent when it starts, until it is up;
    a repeated down keeps the earlier time, so an outage is measured from its beginning; a
    retired chunk leaves the counts. `down_since` is the earliest time of the ones down.
    """

    def __init__(self) -> None:
        self._down_since: dict[int, float | None] = {}  # conn_id -> None while up

    def apply(self, status: ConnStatus, now: float) -> None:
        if status.retired:
            self._down_since.pop(status.conn_id, None)
        elif status.up:
            self._down_since[status.conn_id] = None
        elif self._down_since.get(status.conn_id) is None:
            self._down_since[status.conn_id] = now

    def feed(self, feed: FeedStatus) -> FeedStatus:
        """`feed` with this state's counts and `down_since`."""
        down = [at for at in self._down_since.values() if at is not None]
        return feed._replace(
            conns_up=len(self._down_since) - len(down),
            conns_total=len(self._down_since),
            down_since=min(down, default=None),
        )


async def _close_by_the_clock(
    candles: CandleDuty, outbox: trio.MemorySendChannel[PublisherInbox]
) -> None:
    """Every CLOSER_WAKE_S, what the clocks closed: an idle or dead feed wakes the window
    for nothing else. A task of its own rather than a deadline on every receive of the
    window, which cost 24 us per wakeup (three times the receive itself)."""
    while True:
        await trio.sleep(CLOSER_WAKE_S)
        closed: list[ClosedCandle] = []
        candles.wake(closed)
        if closed:
            await outbox.send(CandleBatch(closed))


@contextlib.asynccontextmanager
async def _closing(candles: CandleDuty | None) -> AsyncIterator[None]:
    """The duty's repair channel (an owned clone) closes with the window."""
    try:
        yield
    finally:
        if candles is not None:
            candles.close()


def _answer(reply: trio.MemorySendChannel[T], value: T, what: str) -> None:
    """Answer a one-shot request without ever waiting (the reply channel holds one item);
    a requester that went away is logged, never an error of the window's."""
    try:
        reply.send_nowait(value)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        logger.bind(actor="window").warning("{what} requester went away", what=what)
    reply.close()


async def run_window(
    inbox: trio.MemoryReceiveChannel[WindowInbox],
    outbox: trio.MemorySendChannel[PublisherInbox],
    *,
    lookback_min: int,
    feed: Latest[FeedStatus],
    metrics: Metrics,
    batch_wait_s: float = 0.0,
    candles: CandleDuty | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A batch is what is queued when the window wakes, plus what the other tasks ready in
    the same scheduler round queue meanwhile (one yield: every socket with data gets read
    first, at no cost in time). So batches follow the load with no fixed wait: under light
    load a push leaves at once, under heavy load the inbox fills while the window works and
    each wakeup takes more. The publisher does the same with the writes: what arrives while
    one is in flight goes in the next. `batch_wait_s` (BATCH_WAIT_MS, default 0) adds a
    fixed wait after the first item, for a deployment that prefers fewer, larger batches.
    `candles`: close candles too (None: `screener rest` at an interval other than Min1)."""
    windows = Windows(lookback_min)
    links = Links()
    peak = 0
    peak_gauge = metrics.queue_peak.labels("ingest")
    task_status.started()
    async with inbox, outbox, _closing(candles), trio.open_nursery() as nursery:
        if candles is not None:
            nursery.start_soon(_close_by_the_clock, candles, outbox)
        while True:
            try:
                first = await inbox.receive()
            except trio.EndOfChannel:
                nursery.cancel_scope.cancel()
                return
            closed: list[ClosedCandle] = []
            arrived_at = trio.current_time()
            if batch_wait_s > 0:
                await trio.sleep(batch_wait_s)
            else:  # let the tasks that are ready (other sockets) add theirs first
                await trio.lowlevel.checkpoint()
            waiting = inbox.statistics().current_buffer_used + 1  # the first one included
            if waiting > peak:
                peak = waiting
                peak_gauge.set(peak)
            # Drain what is already queued: one batch downstream per wakeup, not per push.
            batch: list[MarketData] = []
            late = 0
            item: WindowInbox = first
            while True:
                if type(item) is Kline:
                    event = windows.apply(item)
                    if event is None:
                        late += item.source != HISTORY_SOURCE
                    else:
                        batch.append(event)
                    if candles is not None and (candle := candles.take(item)) is not None:
                        closed.append(candle)
                elif type(item) is ConnStatus:
                    links.apply(item, arrived_at)
                    feed.set(links.feed(feed.value))
                    metrics.connections_up.set(feed.value.conns_up)
                    if candles is not None and not item.up:
                        candles.closer.broke(item.symbols)
                elif type(item) is Unwatched:
                    if candles is not None:
                        candles.closer.unwatch(item.symbols)
                elif type(item) is HistoryDone:
                    if candles is not None:
                        candles.done(item)
                elif type(item) is StatsRequest:
                    _answer(item.reply, windows.stats(), "stats")
                elif type(item) is CandlesRequest:
                    _answer(item.reply, windows.all_candles(), "candles")
                try:
                    item = inbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            if late:
                metrics.rejected.labels("late").inc(late)
            if batch:
                # Only live pushes make the feed fresh: REST prices are the failover's own.
                if any(event.kline.source == LIVE_SOURCE for event in batch):
                    feed.set(feed.value._replace(last_push_at=arrived_at))
                await outbox.send(batch)
            if candles is not None:
                candles.wake(closed)
            if closed:
                await outbox.send(CandleBatch(closed))
