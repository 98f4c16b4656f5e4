"""REST failover: the schedule in exact virtual time, /health's view of it, and the whole
service over loopback with the WebSocket side dark, then back."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from functools import partial

import httpx
import trio
import trio.testing

from actors.failover import run_failover
from actors.mexc import Tick
from actors.rest_client import RestFailed
from actors.window import WindowInbox
from screener.app import Service
from screener.devredis import RedisServer
from screener.http import Views, health_report
from screener.metrics import Metrics
from screener.models import (
    REST_SOURCE,
    FeedStatus,
    Kline,
    RestFeedStatus,
    StatsRequest,
    SymbolStat,
    UniverseStatus,
)
from screener.simulator import FakeExchange, SimAddress, SimConfig
from tests.service_harness import Subscriber, counter, eventually, running, simulator

M = 1_770_330_480
T0 = M + 30.0


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


def frozen_simulator(symbols: int) -> AbstractAsyncContextManager[tuple[FakeExchange, SimAddress]]:
    """A simulator whose wall clock stands still: every test minute is minute M."""
    return simulator(
        SimConfig(symbols=symbols, rate_per_s=0, extra_contracts=False), clock=lambda: T0
    )


def service(
    sim: SimAddress, redis_port: int, **env: str
) -> AbstractAsyncContextManager[tuple[Service, httpx.AsyncClient]]:
    """The service on the same frozen clock, with a fixed reconnect jitter."""
    return running(sim, redis_port, wall=lambda: T0, rand=lambda: 0.1, **env)


async def test_dark_websocket_fails_over_to_rest_then_recovers(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    env = {"STALE_AFTER_S": "1", "FALLBACK_POLL_S": "0.2", "TOP_N": "2"}
    try:
        with trio.fail_after(30):
            async with (
                frozen_simulator(6) as (ex, sim),
                service(sim, redis_server.port, **env) as (svc, http),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 6)
                opens = {s: (await ex.push(s))["data"]["o"] for s in ex.live_symbols}
                await eventually(lambda: svc.views.feed.value.last_push_at is not None)
                health = await http.get("/health")
                assert (health.status_code, health.json()["feed"]) == (200, "ws")

                # The WebSocket side goes dark: sockets dropped, reconnects refused.
                ex.refuse_handshake = True
                await ex.drop_all()
                health_now = {}

                async def rest_feed() -> bool:
                    response = await http.get("/health")
                    health_now.update(response.json(), code=response.status_code)
                    return health_now["feed"] == "rest" and health_now["status"] == "degraded"

                await wait_for(rest_feed, what="REST failover in /health")
                assert health_now["code"] == 200
                assert health_now["connections"]["up"] == 0

                # The market moves; only the REST ticker can see it.
                mover = ex.live_symbols[3]
                await ex.push(mover, price=opens[mover] * 1.5)  # nobody is subscribed
                await eventually(
                    lambda: (svc.views.ranking.value or [0, 0, [None]])[2][0].symbol == mover,
                    what="the mover on top through REST",
                )
                top = (await http.get("/top5")).json()
                assert top["stale"] is False
                assert abs(top["top5_gainers"][0]["change_pct"] - 50.0) < 1e-6
                await eventually(
                    lambda: any(
                        e["source"] == "mexc-rest" and e["symbol"] == mover
                        for e in sub.get("market_data")
                    ),
                    what="mexc-rest events on Redis",
                )

                # The exchange is back: the connection resubscribes, the first push ends it.
                ex.refuse_handshake = False
                await eventually(lambda: svc.views.feed.value.conns_up == 1, within_s=15)
                await eventually(lambda: counter(svc, "screener_subscriptions") == 6)

                async def ws_feed() -> bool:
                    await ex.push(ex.live_symbols[0])
                    response = await http.get("/health")
                    health_now.update(response.json(), code=response.status_code)
                    return health_now["feed"] == "ws" and health_now["status"] == "ok"

                await wait_for(ws_feed, what="back on the WebSocket feed")
                await eventually(lambda: counter(svc, "screener_feed_rest") == 0)
                assert counter(svc, "screener_rest_requests_total", endpoint="ticker") >= 2
    finally:
        sub.close()
    live = [e for e in sub.get("market_data") if e["source"] == "mexc"]
    assert live[-1]["symbol"] == ex.live_symbols[0]


async def wait_for(check: object, *, what: str, within_s: float = 10.0) -> None:
    """`eventually` for a check that must itself await (an HTTP request, a push)."""
    assert callable(check)
    with trio.move_on_after(within_s):
        while not await check():  # noqa: ASYNC110 - real sockets, no event
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not within {within_s}s: {what}")
