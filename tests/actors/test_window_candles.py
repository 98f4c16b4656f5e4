"""The window actor's candle duty in exact virtual time: minutes closed by a later push, by
the exchange clock of other symbols' pushes, by the window's own wakeups while nothing
arrives; repairs asked of the backfill and answered by its rows; the failover's prices never
a candle (the closing rules themselves: tests/unit/test_closing.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio
import trio.testing

from actors.window import CandleDuty, run_window
from screener.core.closing import Closer
from screener.core.metrics import Metrics
from screener.core.models import (
    CANDLE_REST_SOURCE,
    HISTORY_SOURCE,
    LIVE_SOURCE,
    REST_SOURCE,
    CandleBatch,
    CandleLag,
    ConnStatus,
    FeedStatus,
    HistoryDone,
    Kline,
    PublisherInbox,
    SymbolSet,
    WindowInbox,
)
from screener.core.snapshot import Latest
from tests.helpers import sample

M = 1_770_330_480  # a minute boundary (seconds); trio's clock 0 is this wall time
GRACE = 10.0


def kline(symbol: str, minute: int, close: float, at_s: float, source: str = LIVE_SOURCE) -> Kline:
    t = M + minute * 60
    ts_ms = t * 1000 if source == HISTORY_SOURCE else int((t + at_s) * 1000)
    return Kline(symbol, t, 1.0, max(1.0, close), min(1.0, close), close, 3.0, 30.0, ts_ms, source)


@dataclass
class Rig:
    inbox: trio.MemorySendChannel[WindowInbox]
    out: trio.MemoryReceiveChannel[PublisherInbox]
    repairs: trio.MemoryReceiveChannel[SymbolSet]
    owed: Latest[CandleLag]
    metrics: Metrics

    async def candles(self) -> list[tuple[str, int, float, str]]:
        """The next candle batch as (symbol, minute, close, source), skipping event batches."""
        while True:
            item = await self.out.receive()
            if isinstance(item, CandleBatch):
                return [(c.symbol, (c.t - M) // 60, c.close, c.source) for c in item.candles]

    async def at(self, wall_s: float) -> None:
        """Let virtual time reach `wall_s` seconds after M."""
        await trio.sleep_until(wall_s)


@asynccontextmanager
async def window(lookback_min: int = 1) -> AsyncIterator[Rig]:
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](100)
    out_send, out_recv = trio.open_memory_channel[PublisherInbox](100)
    repairs_send, repairs_recv = trio.open_memory_channel[SymbolSet](10)
    owed: Latest[CandleLag] = Latest(CandleLag())
    metrics = Metrics()
    closer = Closer(lookback_min=lookback_min, grace_s=GRACE, wall=lambda: M + trio.current_time())
    duty = CandleDuty(closer, repairs_send, owed, metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                run_window,
                inbox_recv,
                out_send,
                lookback_min=lookback_min,
                feed=Latest(FeedStatus(last_push_at=None, conns_up=0, conns_total=0)),
                metrics=metrics,
                candles=duty,
            )
        )
        yield Rig(inbox_send, out_recv, repairs_recv, owed, metrics)
        nursery.cancel_scope.cancel()


async def test_a_minute_closes_at_the_next_minutes_first_push(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with window() as rig:
        await rig.inbox.send(kline("A_USDT", 0, 2.0, 10))
        await rig.inbox.send(kline("A_USDT", 0, 2.5, 59))
        await rig.at(60.2)
        await rig.inbox.send(kline("A_USDT", 1, 2.6, 0.2))
        assert await rig.candles() == [("A_USDT", 0, 2.5, LIVE_SOURCE)]


async def test_a_silent_symbol_closes_by_the_exchange_clock_of_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with window() as rig:
        await rig.inbox.send(kline("A_USDT", 0, 2.0, 30))
        await rig.inbox.send(kline("B_USDT", 0, 5.0, 30))
        await rig.at(60 + GRACE + 1)
        await rig.inbox.send(kline("B_USDT", 1, 5.5, GRACE + 1))
        got = await rig.candles()  # B's minute 0 at once, A's by the clock B moved
        got += [] if ("A_USDT", 0, 2.0, LIVE_SOURCE) in got else await rig.candles()
        assert sorted(got) == [("A_USDT", 0, 2.0, LIVE_SOURCE), ("B_USDT", 0, 5.0, LIVE_SOURCE)]
        await rig.inbox.send(kline("A_USDT", 0, 9.0, 59.9))  # late: no second candle
        await trio.testing.wait_all_tasks_blocked()
        assert sample(rig.metrics, "screener_candle_late_pushes_total") == 1


async def test_a_minute_cut_by_a_broken_connection_is_repaired_from_rest_when_nothing_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with window() as rig:
        await rig.inbox.send(kline("A_USDT", 0, 2.0, 30))
        await rig.inbox.send(ConnStatus(conn_id=0, up=False, symbols=frozenset({"A_USDT"})))
        # No push arrives any more: the window's own wakeups owe the minute, then ask.
        assert await rig.repairs.receive() == frozenset({"A_USDT"})
        assert trio.current_time() >= 60 + GRACE
        assert rig.owed.value == CandleLag(1, M)
        await rig.inbox.send(kline("A_USDT", 0, 2.7, 0, HISTORY_SOURCE))
        await rig.inbox.send(HistoryDone("A_USDT", M - 60, M + 60))
        assert await rig.candles() == [("A_USDT", 0, 2.7, CANDLE_REST_SOURCE)]
        assert sample(rig.metrics, "screener_candles_repaired_total") == 1
        await rig.at(trio.current_time() + 1.5)
        assert rig.owed.value == CandleLag()


async def test_a_repair_the_endpoint_has_no_row_for_is_counted_absent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with window() as rig:
        await rig.inbox.send(kline("A_USDT", 0, 2.0, 30))
        await rig.at(2 * 60 + 30)
        await rig.inbox.send(kline("A_USDT", 2, 2.0, 30))  # minute 1 skipped
        assert await rig.candles() == [("A_USDT", 0, 2.0, LIVE_SOURCE)]
        assert await rig.repairs.receive() == frozenset({"A_USDT"})
        await rig.inbox.send(HistoryDone("A_USDT", M, M + 120))
        await trio.testing.wait_all_tasks_blocked()
        assert sample(rig.metrics, "screener_candles_dropped_total", reason="absent") == 1


async def test_the_failovers_prices_never_close_a_candle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with window() as rig:
        await rig.inbox.send(kline("A_USDT", 0, 2.0, 30))
        await rig.inbox.send(ConnStatus(conn_id=0, up=False, symbols=frozenset({"A_USDT"})))
        await rig.at(65)
        await rig.inbox.send(kline("A_USDT", 1, 3.0, 5, REST_SOURCE))
        await rig.inbox.send(kline("A_USDT", 2, 3.0, 5, REST_SOURCE))
        await trio.testing.wait_all_tasks_blocked()
        out = []
        while (stats := rig.out.statistics()).current_buffer_used:
            out.append(rig.out.receive_nowait())
        assert stats.current_buffer_used == 0
        assert not [item for item in out if isinstance(item, CandleBatch)]
        assert sum(len(item) for item in out if isinstance(item, list)) == 3  # events all
