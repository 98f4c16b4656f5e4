"""Warm start and gap fill: the window's merge rule, the backfill actor in virtual time, a
connection asking for a refill after an outage, and the whole service over loopback."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from functools import partial

import httpx
import pytest
import trio
import trio.testing

from actors.backfill import history_range, run_backfill
from actors.connection import run_connection
from actors.rest_client import RestFailed
from actors.window import WindowInbox, Windows, run_window
from screener.app import Service
from screener.config import load_settings
from screener.devredis import RedisServer
from screener.metrics import Metrics
from screener.models import (
    HISTORY_SOURCE,
    REST_SOURCE,
    BackfillProgress,
    ConnStatus,
    FeedStatus,
    Kline,
    MarketData,
)
from screener.simulator import FakeExchange, SimAddress, SimConfig
from screener.snapshot import Latest
from tests.memory_exchange import MemoryExchange
from tests.service_harness import counter, eventually, running, simulator

M = 1_770_330_480  # a minute boundary (seconds)


def k(minute: int, o: float, c: float, *, source: str = "mexc", at_s: float = 30.0) -> Kline:
    t = M + minute * 60
    ts_ms = t * 1000 if source == HISTORY_SOURCE else int((t + at_s) * 1000)
    return Kline("A_USDT", t, o, max(o, c), min(o, c), c, 5.0, 50.0, ts_ms, source)


def history(minute: int, o: float, c: float) -> Kline:
    return k(minute, o, c, source=HISTORY_SOURCE)


# --- the merge rule in the window core ---------------------------------------------------


def test_history_fills_an_empty_window_without_events() -> None:
    w = Windows(lookback_min=3)
    assert [w.apply(history(m, 100.0 + m, 101.0 + m)) for m in range(5)] == [None] * 5
    assert [c.t for c in w.candles("A_USDT")] == [M + 120, M + 180, M + 240]
    assert w.stats()[0].change_pct == pytest.approx((105.0 / 102.0 - 1) * 100)


def test_live_wins_over_history_of_the_same_candle_either_way_round() -> None:
    w = Windows(lookback_min=3)
    w.apply(history(0, 100.0, 101.0))
    live = w.apply(k(1, 101.0, 103.0))
    assert live is not None
    assert live.change_pct == pytest.approx(3.0)
    assert w.apply(history(1, 101.0, 102.0)) is None  # history arriving after the live push
    assert w.candles("A_USDT")[-1].close == 103.0
    event = w.apply(k(0, 100.0, 100.5, at_s=59))  # a live push replaces history
    assert event is not None
    assert w.candles("A_USDT")[0].source == "mexc"
    assert w.apply(history(0, 100.0, 101.0)) is None
    assert w.candles("A_USDT")[0].close == 100.5


def test_history_replaces_history_and_rest_prices() -> None:
    w = Windows(lookback_min=3)
    w.apply(history(0, 100.0, 101.0))
    w.apply(history(0, 100.0, 102.0))
    assert w.candles("A_USDT")[0].close == 102.0
    w.apply(k(1, 102.0, 104.0, source=REST_SOURCE))
    w.apply(history(1, 102.0, 103.0))
    assert w.candles("A_USDT")[-1].source == HISTORY_SOURCE
    assert w.candles("A_USDT")[-1].close == 103.0


def test_rest_price_updates_the_held_candle() -> None:
    w = Windows(lookback_min=3)
    w.apply(k(0, 100.0, 101.0, at_s=10))  # live: open 100, high 101, volume 5
    tick = Kline("A_USDT", M, 101.0, 104.0, 101.0, 104.0, 0.0, 0.0, (M + 40) * 1000, REST_SOURCE)
    event = w.apply(tick)
    assert event is not None
    held = w.candles("A_USDT")[0]
    assert (held.open, held.high, held.low, held.close) == (100.0, 104.0, 100.0, 104.0)
    assert (held.volume, held.source) == (5.0, REST_SOURCE)
    assert event.kline.source == REST_SOURCE
    assert event.as_dict()["source"] == "mexc-rest"
    assert event.change_pct == pytest.approx(4.0)
    stale_tick = tick._replace(close=90.0, low=90.0, ts_ms=(M + 20) * 1000)
    assert w.apply(stale_tick) is None  # older than what is held
    w.apply(k(0, 100.0, 102.0, at_s=50))  # live is back: it wins outright
    assert w.candles("A_USDT")[0].close == 102.0


def test_history_range_covers_the_window_and_one_spare_row() -> None:
    assert history_range(M + 30.5, 15, 1) == (M - 15 * 60, M)
    five = M // 300 * 300
    assert history_range(M + 30, 15, 5) == (five - 3 * 300, five)
    hour = M // 3600 * 3600
    assert history_range(M + 30, 15, 60) == (hour - 3600, hour)


async def test_window_actor_sends_no_event_for_history_and_rest_prices_keep_it_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    feed = Latest(FeedStatus(None, 0, 0))
    metrics = Metrics()
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](10)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_window,
                    inbox_recv,
                    events_send,
                    lookback_min=3,
                    feed=feed,
                    metrics=metrics,
                )
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
    assert counter_value(metrics, "screener_messages_rejected_total", reason="late") == 0


def counter_value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# --- the backfill actor in virtual time --------------------------------------------------


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
    assert len(rows) == 3 * 4  # four candles each for A, B and C; nothing for BAD
    assert counter_value(metrics, "screener_backfill_symbols_total", result="failed") == 1


# --- a connection back after an outage asks for a refill ---------------------------------


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
            control_send.send_nowait(frozenset({"A_USDT", "B_USDT"}))
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
            for _ in range(3):
                assert await out.receive() == ConnStatus(1, up=True)
                await trio.testing.wait_all_tasks_blocked()
                await exchange.server_sockets[-1].aclose(1001)
                assert await out.receive() == ConnStatus(1, up=False)
            assert await out.receive() == ConnStatus(1, up=True)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert exchange.connects == [0.0, 2.0, 6.0, 14.0]
    # Up at 0 (just started), 2 (down 2 s: nothing lost), 6 and 14 (down 4 and 8 s).
    chunk = frozenset({"A_USDT", "B_USDT"})
    assert asked == [(6.0, chunk), (14.0, chunk)]


# --- the whole service over loopback -----------------------------------------------------

T0 = M + 30.0  # the simulator's frozen wall clock: every test minute is minute M


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


async def window_change(rest_url: str, symbol: str, lookback_min: int) -> float:
    """The change a correct window shows, recomputed from the simulator's own rows."""
    async with httpx.AsyncClient(base_url=rest_url) as client:
        body = (
            await client.get(
                f"/api/v1/contract/kline/{symbol}",
                params={"interval": "Min1", "start": M - (lookback_min - 1) * 60, "end": M},
            )
        ).json()["data"]
    assert body["time"][0] == M - (lookback_min - 1) * 60
    assert body["time"][-1] == M
    return (body["close"][-1] / body["open"][0] - 1.0) * 100.0


async def test_warm_start_top5_is_right_for_the_full_lookback_at_once(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(20):
        async with (
            frozen_simulator(10) as (ex, sim),
            service(sim, redis_server.port, BACKFILL="on", TOP_N="3", REST_RATE_PER_S="50") as (
                svc,
                http,
            ),
        ):
            await eventually(
                lambda: svc.views.backfill.value[:3] == (10, 10, 0), what="backfill done"
            )
            await eventually(lambda: (svc.views.ranking.value or [0] * 5)[4] == 10)
            top = (await http.get("/top5")).json()
            expected = {s: await window_change(sim.rest_url, s, 15) for s in ex.live_symbols}
            ranked = sorted(expected, key=lambda s: (-expected[s], s))
            assert [g["symbol"] for g in top["top5_gainers"]] == ranked[:3]
            assert [g["symbol"] for g in top["top5_losers"]] == ranked[::-1][:3]
            for entry in top["top5_gainers"] + top["top5_losers"]:
                assert entry["change_pct"] == pytest.approx(expected[entry["symbol"]], abs=1e-9)
            health = await http.get("/health")
            assert health.json()["backfill"] == {"done": 10, "total": 10}
            assert health.json()["feed"] == "ws"
            assert counter(svc, "screener_rest_requests_total", endpoint="kline") == 10

            # A live push of the current minute wins over its history row.
            await eventually(lambda: counter(svc, "screener_subscriptions") == 10)
            symbol = ranked[-1]
            last = (await ex.push(symbol))["data"]["c"]  # a first live push of minute M
            pushed = await ex.push(symbol, price=round(last * 1.2, 8))
            await eventually(
                lambda: (svc.views.ranking.value or [0, 0, [None]])[2][0].symbol == symbol,
                what="the pushed symbol on top",
            )
            top = (await http.get("/top5")).json()
            first_open = await first_row_open(sim, symbol)
            assert top["top5_gainers"][0]["change_pct"] == pytest.approx(
                (pushed["data"]["c"] / first_open - 1) * 100, abs=1e-9
            )
            assert (await http.get("/health")).json()["status"] == "ok"


async def first_row_open(sim: SimAddress, symbol: str) -> float:
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (
            await client.get(
                f"/api/v1/contract/kline/{symbol}",
                params={"interval": "Min1", "start": M - 14 * 60, "end": M - 14 * 60},
            )
        ).json()["data"]
    return float(body["open"][0])


async def test_a_connection_back_after_a_gap_refills_its_chunk(redis_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with (
            frozen_simulator(6) as (ex, sim),
            service(
                sim, redis_server.port, BACKFILL="on", BACKFILL_GAP_S="0.5", REST_RATE_PER_S="50"
            ) as (svc, _),
        ):
            await eventually(lambda: svc.views.backfill.value[:2] == (6, 6))
            await eventually(lambda: svc.views.feed.value.conns_up == 1)
            ex.refuse_handshake = True
            await ex.drop_all()
            await eventually(lambda: counter(svc, "screener_reconnects_total") >= 2)
            await trio.sleep(0.5)  # real time: the outage must outlast BACKFILL_GAP_S
            ex.refuse_handshake = False
            await eventually(
                lambda: svc.views.backfill.value[:2] == (12, 6 * 2), what="the chunk refilled"
            )
            assert svc.views.backfill.value.failed == 0
