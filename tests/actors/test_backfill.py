"""Warm start and gap fill: the window's merge rule, the backfill actor in virtual time, a
connection asking for a refill after an outage, and the whole service over loopback."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from actors.backfill import run_backfill
from actors.connection import run_connection
from screener.core.config import load_settings
from screener.core.metrics import Metrics
from screener.core.models import (
    HISTORY_SOURCE,
    REST_SOURCE,
    BackfillProgress,
    ConnStatus,
    FeedStatus,
    HistoryDone,
    Kline,
    MarketData,
    WindowInbox,
)
from screener.core.snapshot import Latest
from screener.mexc.client import RestFailed
from tests.actors.fakes import start_window
from tests.actors.memory_exchange import MemoryExchange
from tests.helpers import sample
from tests.kline_builders import M, history, k

AB = frozenset({"A_USDT", "B_USDT"})


async def test_window_actor_sends_no_event_for_history_and_rest_prices_keep_it_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    feed = Latest(FeedStatus(None, 0, 0))
    metrics = Metrics()
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](10)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_window(
                nursery, inbox_recv, events_send, lookback_min=3, feed=feed, metrics=metrics
            )
            await inbox_send.send(history(-10, 1.0, 1.0))  # too old once minute 0 is in
            await inbox_send.send(history(0, 1.0, 1.0))
            await inbox_send.send(history(-10, 1.0, 1.0))
            await inbox_send.send(k(0, 1.0, 2.0, source=REST_SOURCE))
            [event] = await events_recv.receive()
            assert event.kline.source == REST_SOURCE
            assert feed.value.last_push_at is None  # REST prices are not a live feed
            await trio.sleep(1)
            await inbox_send.send(k(0, 1.0, 3.0, at_s=50))
            [event] = await events_recv.receive()
            assert feed.value.last_push_at == 1.0
            nursery.cancel_scope.cancel()
    assert sample(metrics, "screener_messages_rejected_total", reason="late") == 0


async def test_backfill_fetches_each_symbol_once_and_reports_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetched: list[tuple[float, str, int, int]] = []

    async def fetch(symbol: str, interval: str, start_s: int, end_s: int) -> list[Kline]:
        assert interval == "Min1"
        fetched.append((trio.current_time(), symbol, start_s, end_s))
        await trio.sleep(1.0)
        if symbol == "BAD_USDT":
            raise RestFailed("kline", "server", "HTTP 500")
        return [
            Kline(symbol, t, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, t * 1000, HISTORY_SOURCE)
            for t in range(start_s, end_s + 1, 60)
        ]

    progress = Latest(BackfillProgress(0, 0))
    metrics = Metrics()
    req_send, req_recv = trio.open_memory_channel[frozenset[str]](4)
    out_send, out_recv = trio.open_memory_channel[WindowInbox](1000)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_backfill,
                    req_recv,
                    out_send,
                    fetch=fetch,
                    lookback_min=3,
                    progress=progress,
                    metrics=metrics,
                    workers=2,
                    wall=lambda: M + 30.0,
                )
            )
            await req_send.send(frozenset({"B_USDT", "A_USDT", "BAD_USDT"}))
            await req_send.send(frozenset({"A_USDT", "C_USDT"}))  # A is still queued: once
            await trio.testing.wait_all_tasks_blocked()
            assert progress.value.total == 4
            await req_send.aclose()  # the end of requests ends the actor once work is done
    assert progress.value == BackfillProgress(4, 4, 1, 2.0)
    # Two workers: two fetches at a time, in arrival order (each set sorted).
    assert [(t, s) for t, s, _, _ in fetched] == [
        (0.0, "A_USDT"),
        (0.0, "BAD_USDT"),
        (1.0, "B_USDT"),
        (1.0, "C_USDT"),
    ]
    assert {(a, b) for _, _, a, b in fetched} == {(M - 180, M)}
    rows = []
    while True:
        try:
            rows.append(out_recv.receive_nowait())
        except trio.EndOfChannel:
            break
    ends = [row.symbol for row in rows if isinstance(row, HistoryDone)]
    assert sorted(ends) == ["A_USDT", "B_USDT", "C_USDT"]  # each fetch's last word
    assert len(rows) - len(ends) == 3 * 4  # four candles each for A, B and C; nothing for BAD
    assert sample(metrics, "screener_backfill_symbols_total", result="failed") == 1


async def test_connection_asks_for_a_refill_only_after_a_long_enough_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = load_settings({"PING_INTERVAL_S": "15"}).exchange
    gaps_send, gaps_recv = trio.open_memory_channel[frozenset[str]](4)
    asked: list[tuple[float, frozenset[str]]] = []
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            exchange = MemoryExchange(nursery)
            control_send, control_recv = trio.open_memory_channel[frozenset[str]](4)
            out_send, out = trio.open_memory_channel[WindowInbox](100)
            control_send.send_nowait(AB)
            await nursery.start(
                partial(
                    run_connection,
                    control_recv,
                    out_send,
                    conn_id=1,
                    settings=settings,
                    metrics=Metrics(),
                    rand=lambda: 1.0,  # retries after 2, 4, 8 s
                    connect=exchange.connect,
                    gaps=gaps_send,
                    gap_after_s=3.0,
                )
            )

            async def record() -> None:
                async for symbols in gaps_recv:
                    asked.append((trio.current_time(), symbols))

            nursery.start_soon(record)
            assert await out.receive() == ConnStatus(1, up=False)  # counted, not yet up
            for _ in range(3):
                assert await out.receive() == ConnStatus(1, up=True)
                await trio.testing.wait_all_tasks_blocked()
                await exchange.server_sockets[-1].aclose(1001)
                assert await out.receive() == ConnStatus(1, up=False, symbols=AB)
            assert await out.receive() == ConnStatus(1, up=True)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0, 2.0, 6.0, 14.0]
    # Up at 0 (just started), 2 (down 2 s: nothing lost), 6 and 14 (down 4 and 8 s).
    chunk = frozenset({"A_USDT", "B_USDT"})
    assert asked == [(6.0, chunk), (14.0, chunk)]
