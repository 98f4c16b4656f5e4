"""Backfill actor: fills the windows from REST kline history while the live feed runs.

Input: `requests`, sets of symbols to fill (from the universe: every symbol at start, new
ones after a refresh, every one per round in `screener rest`; from a connection back after an
outage: its chunk). Output: history `Kline`s (source "mexc-rest-history") into the window
inbox; the window merges them by candle `t`, never over a live candle, without events. Each
fetch's rows are followed by a `HistoryDone`: the window's candle closer repairs owed minutes
from the rows and learns which ones the endpoint has no row for. The closer asks for
symbols here too (`requests`), when it owes them minutes.

Requested symbols queue once each, in arrival order, and `workers` tasks fetch them through
the shared, paced `RestClient`, so the live feed is never blocked and the venue's budget is
kept. Each fetch covers the candles the window holds now plus one spare older row (a few
seconds of clock skew must not cost the oldest candle). A symbol whose fetch fails after the
client's retries is logged, counted and skipped: its window fills from live pushes instead.
Progress (`done`/`total`) goes to the `progress` snapshot for /health and to the log. It
closes its outbox when the requests channel ends and the queue is empty; on cancel, fetches
in flight are abandoned.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import trio
from loguru import logger

from screener.core.metrics import Metrics
from screener.core.models import BackfillProgress, HistoryDone, Kline, SymbolSet, WindowInbox
from screener.core.names import INTERVAL_MINUTES, LIVE_INTERVAL
from screener.core.periodic import Pulse
from screener.core.snapshot import Latest
from screener.mexc.client import RestFailed

FetchKlines = Callable[[str, str, int, int], Awaitable[list[Kline]]]
"""`(symbol, interval, start_s, end_s) -> candles`; raises `RestFailed`."""

WORKERS: Final = 4
"""Fetches in flight: as many as the client lets through at once."""
REQUESTS_BUFFER: Final = 16
"""Symbol sets waiting for the collector, which takes them at once."""


def history_range(now_s: float, lookback_min: int, interval_min: int) -> tuple[int, int]:
    """Open times (seconds) of the first and last candle to fetch at wall time `now_s`: the
    open one, those a `lookback_min` window holds before it, and one spare older row."""
    step = interval_min * 60
    current = int(now_s) // step * step
    rows = -(-lookback_min // interval_min)  # ceil: candles in a window
    return current - rows * step, current


class BackfillQueue:
    """Pending symbols in arrival order, each at most once (a symbol being fetched is not
    queued again: its answer is as fresh as the request), and the progress counts."""

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}
        self._fetching: set[str] = set()
        self.done = 0
        self.total = 0
        self.failed = 0
        self.last_ok_at: float | None = None

    def add(self, symbols: Iterable[str]) -> int:
        """Queue what is not queued yet (sorted, so the order is stable); how many were new."""
        fresh = [s for s in sorted(symbols) if s not in self._pending and s not in self._fetching]
        self._pending.update(dict.fromkeys(fresh))
        self.total += len(fresh)
        return len(fresh)

    def pop(self) -> str | None:
        if not self._pending:
            return None
        symbol = next(iter(self._pending))
        del self._pending[symbol]
        self._fetching.add(symbol)
        return symbol

    def finished(self, symbol: str, ok: bool, now: float) -> None:
        self._fetching.discard(symbol)
        self.done += 1
        if ok:
            self.last_ok_at = now
        else:
            self.failed += 1

    @property
    def idle(self) -> bool:
        return self.done == self.total

    @property
    def progress(self) -> BackfillProgress:
        return BackfillProgress(
            done=self.done, total=self.total, failed=self.failed, last_ok_at=self.last_ok_at
        )


class Backfill:
    """The actor's state and its tasks: `collect` (requests -> queue), `dispatch` (queue ->
    workers, each symbol once) and `work` (fetch -> window)."""

    def __init__(
        self,
        fetch: FetchKlines,
        lookback_min: int,
        interval: str,
        progress: Latest[BackfillProgress],
        metrics: Metrics,
        wall: Callable[[], float],
    ) -> None:
        self.fetch = fetch
        self.lookback_min = lookback_min
        self.interval = interval
        self.interval_min = INTERVAL_MINUTES[interval]
        self.progress = progress
        self.metrics = metrics
        self.wall = wall
        self.queue = BackfillQueue()
        self.more = Pulse()
        self.requests_ended = False
        self.spell_began = trio.current_time()  # when the current spell of work began
        self.log = logger.bind(actor="backfill")

    async def collect(self, requests: trio.MemoryReceiveChannel[SymbolSet]) -> None:
        async with requests:
            async for symbols in requests:
                if self.queue.idle:
                    self.spell_began = trio.current_time()
                if self.queue.add(symbols):
                    self.progress.set(self.queue.progress)
                    self.more.fire()
        self.requests_ended = True
        self.more.fire()

    async def dispatch(self, work: trio.MemorySendChannel[str]) -> None:
        async with work:
            while True:
                symbol = self.queue.pop()
                if symbol is not None:
                    await work.send(symbol)
                elif self.requests_ended:
                    return
                else:
                    await self.more.wait()

    async def work(
        self, symbols: trio.MemoryReceiveChannel[str], outbox: trio.MemorySendChannel[WindowInbox]
    ) -> None:
        async with symbols:
            async for symbol in symbols:
                start_s, end_s = history_range(self.wall(), self.lookback_min, self.interval_min)
                try:
                    rows = await self.fetch(symbol, self.interval, start_s, end_s)
                except RestFailed as exc:
                    self.log.warning("backfill of {symbol} skipped: {why}", symbol=symbol, why=exc)
                    ok = False
                else:
                    for row in rows:
                        await outbox.send(row)
                    # The window's candle closer learns which owed minutes have no row.
                    await outbox.send(HistoryDone(symbol, start_s, end_s))
                    ok = True
                self.queue.finished(symbol, ok, trio.current_time())
                self.metrics.backfill_symbols.labels("ok" if ok else "failed").inc()
                self.progress.set(self.queue.progress)
                self._report()

    def _report(self) -> None:
        done, total = self.queue.done, self.queue.total
        if done == total:
            self.log.info(
                "backfill: {done}/{total} symbols, {failed} failed, in {s:.1f}s",
                done=done,
                total=total,
                failed=self.queue.failed,
                s=trio.current_time() - self.spell_began,
            )
        elif done % max(1, total // 10) == 0:
            self.log.info("backfill: {done}/{total} symbols", done=done, total=total)


async def run_backfill(
    requests: trio.MemoryReceiveChannel[SymbolSet],
    outbox: trio.MemorySendChannel[WindowInbox],
    *,
    fetch: FetchKlines,
    lookback_min: int,
    progress: Latest[BackfillProgress],
    metrics: Metrics,
    interval: str = LIVE_INTERVAL,
    workers: int = WORKERS,
    wall: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    backfill = Backfill(fetch, lookback_min, interval, progress, metrics, wall)
    work_send, work_recv = trio.open_memory_channel[str](0)
    async with outbox:
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backfill.collect, requests)
            nursery.start_soon(backfill.dispatch, work_send)
            async with work_recv:  # each worker owns a clone
                for _ in range(workers):
                    nursery.start_soon(backfill.work, work_recv.clone(), outbox)
