"""REST failover: the schedule in exact virtual time, /health's view of it, and the whole
service over loopback with the WebSocket side dark, then back."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from actors.failover import run_failover
from screener.core.metrics import Metrics
from screener.core.models import (
    REST_SOURCE,
    FeedStatus,
    Kline,
    RestFeedStatus,
    StatsRequest,
    SymbolStat,
    UniverseStatus,
    WindowInbox,
)
from screener.core.snapshot import Views
from screener.http.health import health_report
from screener.mexc.client import RestFailed
from screener.mexc.rest import Tick

M = 1_770_330_480


async def test_failover_polls_on_schedule_and_the_first_live_push_ends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    metrics = Metrics()
    polls: list[float] = []
    updates: list[tuple[float, Kline]] = []
    failing = False

    async def fetch() -> dict[str, Tick]:
        polls.append(trio.current_time())
        await trio.sleep(0.5)
        if failing:
            raise RestFailed("ticker", "timeout", "no answer within 10s")
        ms = int((M + trio.current_time()) * 1000)
        return {"A_USDT": Tick(11.0, ms), "B_USDT": Tick(2.0, ms), "OTHER_USDT": Tick(1.0, ms)}

    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](16)

    async def window_stub() -> None:
        async for item in inbox_recv:
            if isinstance(item, StatsRequest):
                await item.reply.send((SymbolStat("A_USDT", 0.5, 10.0),))
            else:
                assert isinstance(item, Kline)
                updates.append((trio.current_time(), item))

    # B is tracked but the window holds nothing of it yet; OTHER is not tracked at all.
    views.universe.set(UniverseStatus(2, 1, None, frozenset({"A_USDT", "B_USDT"})))
    with trio.fail_after(500):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(window_stub)
            await nursery.start(
                partial(
                    run_failover,
                    inbox_send,
                    fetch=fetch,
                    feed=views.feed,
                    universe=views.universe,
                    status=views.rest,
                    stale_after_s=60.0,
                    poll_s=10.0,
                    metrics=metrics,
                )
            )
            await trio.sleep_until(59.9)
            assert polls == []
            assert health_report(views, 59.9, 60.0)[1]["feed"] == "ws"
            await trio.sleep_until(95.0)
            assert polls == [60.0, 70.0, 80.0, 90.0]
            assert views.rest.value == RestFeedStatus(True, 90.5, None)
            code, body = health_report(views, 95.0, 60.0)
            assert (code, body["status"], body["feed"]) == (200, "degraded", "rest")
            assert body["problems"] == ["no push received yet"]
            assert metrics.registry.get_sample_value("screener_feed_rest") == 1

            views.feed.set(FeedStatus(95.0, 1, 1))  # the window accepted a live push at 95
            await trio.sleep_until(100.0)
            await trio.testing.wait_all_tasks_blocked()
            assert polls == [60.0, 70.0, 80.0, 90.0]  # the tick at 100 saw it and stopped
            assert views.rest.value.active is False
            assert metrics.registry.get_sample_value("screener_feed_rest") == 0
            assert health_report(views, 100.0, 60.0)[1]["feed"] == "ws"

            failing = True  # stale again at 95 + 60; the ticker times out meanwhile
            await trio.sleep_until(170.0)
            assert polls[4:] == [155.0, 165.0]
            code, body = health_report(views, 170.0, 60.0)
            assert (code, body["status"], body["feed"]) == (503, "stale", "rest")
            assert (
                "REST ticker unavailable: ticker: timeout: no answer within 10s" in body["problems"]
            )
            nursery.cancel_scope.cancel()

    # Each poll: one update per tracked symbol, opening at the window's last price.
    assert [t for t, _ in updates] == [60.5, 60.5, 70.5, 70.5, 80.5, 80.5, 90.5, 90.5]
    ts_ms = (M + 60) * 1000 + 500
    assert [k for _, k in updates[:2]] == [
        Kline("A_USDT", M + 60, 10.0, 11.0, 10.0, 11.0, 0.0, 0.0, ts_ms, REST_SOURCE),
        Kline("B_USDT", M + 60, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, ts_ms, REST_SOURCE),
    ]
