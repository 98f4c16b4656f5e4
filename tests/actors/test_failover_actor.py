"""REST failover actor on MockClock: a fake ticker fetch, a fake window answering
`StatsRequest`s (and once a real `run_window`), snapshots set as the other actors would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import trio
import trio.testing
from loguru import logger

from actors.failover import price_update, run_failover
from screener.core.metrics import Metrics
from screener.core.models import (
    REST_SOURCE,
    Kline,
    MarketData,
    RestFeedStatus,
    StatsRequest,
    SymbolStat,
    UniverseStatus,
    WindowInbox,
)
from screener.core.snapshot import Views
from screener.mexc.client import RestFailed
from screener.mexc.rest import Tick
from tests.actors.fakes import start_window

M = 1_770_330_480  # a minute boundary (seconds); virtual time 0 is this exchange time
ERROR = "REST ticker unavailable: ticker: timeout: no answer within 10s"
INACTIVE = RestFeedStatus(active=False, last_ok_at=None, error=None)


class FakeTicker:
    """`contract/ticker`: `prices` at exchange time M + now, answered `delay_s` after the
    call; the calls numbered in `failing` (from 0) raise `RestFailed` instead."""

    def __init__(
        self,
        prices: dict[str, float],
        *,
        delay_s: float = 0.5,
        failing: frozenset[int] = frozenset(),
    ) -> None:
        self.prices = prices
        self.delay_s = delay_s
        self.failing = failing
        self.calls: list[float] = []

    async def __call__(self) -> dict[str, Tick]:
        n = len(self.calls)
        self.calls.append(trio.current_time())
        await trio.sleep(self.delay_s)
        if n in self.failing:
            raise RestFailed("ticker", "timeout", "no answer within 10s")
        ms = int((M + trio.current_time()) * 1000)
        return {symbol: Tick(price=p, ts_ms=ms) for symbol, p in self.prices.items()}


class FakeWindow:
    """The window's side of the inbox: answers stats from `held`, records what arrives."""

    def __init__(self, held: dict[str, float]) -> None:
        self.held = held
        self.asked: list[float] = []
        self.updates: list[tuple[float, Kline]] = []
        self.closed_at: float | None = None

    async def run(self, inbox: trio.MemoryReceiveChannel[WindowInbox]) -> None:
        async with inbox:
            async for item in inbox:
                if isinstance(item, StatsRequest):
                    self.asked.append(trio.current_time())
                    stats = tuple(
                        SymbolStat(symbol=s, change_pct=0.0, price=p) for s, p in self.held.items()
                    )
                    await item.reply.send(stats)
                else:
                    assert isinstance(item, Kline)
                    self.updates.append((trio.current_time(), item))
        self.closed_at = trio.current_time()

    def times(self) -> list[float]:
        return [t for t, _ in self.updates]

    def symbols(self) -> list[str]:
        return [k.symbol for _, k in self.updates]


async def start(
    nursery: trio.Nursery,
    views: Views,
    fetch: FakeTicker,
    metrics: Metrics,
    window: FakeWindow | trio.MemorySendChannel[WindowInbox],
    *,
    stale_after_s: float = 30.0,
    poll_s: float = 10.0,
) -> None:
    """The failover, started at the current time, sending to `window` (a fake one behind a
    channel of its own, or the given inbox)."""
    if isinstance(window, FakeWindow):
        outbox, inbox = trio.open_memory_channel[WindowInbox](64)
        nursery.start_soon(window.run, inbox)
    else:
        outbox = window
    await nursery.start(
        partial(
            run_failover,
            outbox,
            fetch=fetch,
            feed=views.feed,
            universe=views.universe,
            status=views.rest,
            stale_after_s=stale_after_s,
            poll_s=poll_s,
            metrics=metrics,
        )
    )


def tracking(views: Views, *symbols: str) -> None:
    views.universe.set(
        UniverseStatus(symbols=len(symbols), chunks=1, error=None, tracked=frozenset(symbols))
    )


def push_at(views: Views, t: float) -> None:
    """What the window actor does on an accepted live push."""
    views.feed.set(views.feed.value._replace(last_push_at=t))


def rest_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("screener_feed_rest")


@contextmanager
def failover_log() -> Iterator[list[tuple[float, str, str]]]:
    """(virtual time, level, message) of the failover actor's log lines."""
    lines: list[tuple[float, str, str]] = []
    sink = logger.add(
        lambda m: lines.append((trio.current_time(), m.record["level"].name, m.record["message"])),
        filter=lambda r: r["extra"].get("actor") == "failover",
        level="DEBUG",
    )
    try:
        yield lines
    finally:
        logger.remove(sink)


@pytest.mark.parametrize(("pushed_at", "first_poll"), [(None, 37.0), (5.0, 35.0)])
async def test_stale_counts_from_start_without_a_push_else_from_the_last_push(
    autojump_clock: trio.testing.MockClock, pushed_at: float | None, first_poll: float
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch, window = FakeTicker({"A_USDT": 2.0}), FakeWindow({})
    if pushed_at is not None:
        push_at(views, pushed_at)
    with failover_log() as log, trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await trio.sleep_until(7.0)
            await start(nursery, views, fetch, metrics, window)
            await trio.sleep_until(first_poll - 0.25)
            assert (fetch.calls, views.rest.value, rest_gauge(metrics)) == ([], INACTIVE, 0.0)
            await trio.sleep_until(first_poll)
            await trio.testing.wait_all_tasks_blocked()
            assert fetch.calls == [first_poll]
            assert views.rest.value == RestFeedStatus(active=True, last_ok_at=None, error=None)
            assert rest_gauge(metrics) == 1.0
            await trio.sleep_until(first_poll + 0.5)
            await trio.testing.wait_all_tasks_blocked()
            assert window.times() == [first_poll + 0.5]
            assert views.rest.value == RestFeedStatus(True, first_poll + 0.5, None)
            nursery.cancel_scope.cancel()
    assert log[0] == (
        first_poll,
        "WARNING",
        "no live push for 30s: feeding the windows from the REST ticker every 10s",
    )


@pytest.mark.parametrize(
    ("poll_s", "delay_s", "calls"),
    [
        (7.5, 0.5, [30.0, 37.5, 45.0, 52.5]),
        (5.0, 12.0, [30.0, 45.0, 60.0, 75.0]),  # a slow poll skips the ticks it overran
        (4.0, 4.0, [30.0, 38.0, 46.0, 54.0]),  # ending on a tick is past it
    ],
)
async def test_polls_on_the_fixed_grid_while_stale(
    autojump_clock: trio.testing.MockClock, poll_s: float, delay_s: float, calls: list[float]
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch, window = FakeTicker({"A_USDT": 2.0}, delay_s=delay_s), FakeWindow({})
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await start(nursery, views, fetch, metrics, window, poll_s=poll_s)
            await trio.sleep_until(calls[-1] + delay_s)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert fetch.calls == calls
    assert window.times() == [t + delay_s for t in calls]


async def test_a_failed_poll_reports_its_error_and_the_next_tick_tries_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch, window = FakeTicker({"A_USDT": 2.0}, failing=frozenset({1, 2})), FakeWindow({})
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await start(nursery, views, fetch, metrics, window)
            await trio.sleep_until(45.0)
            assert views.rest.value == RestFeedStatus(active=True, last_ok_at=30.5, error=ERROR)
            await trio.sleep_until(55.0)
            assert views.rest.value == RestFeedStatus(active=True, last_ok_at=30.5, error=ERROR)
            assert rest_gauge(metrics) == 1.0
            await trio.sleep_until(61.0)
            assert views.rest.value == RestFeedStatus(active=True, last_ok_at=60.5, error=None)
            nursery.cancel_scope.cancel()
    assert fetch.calls == [30.0, 40.0, 50.0, 60.0]  # no retry between the ticks
    assert window.times() == [30.5, 60.5]  # nothing from the failed polls
    assert window.asked == [30.5, 60.5]


async def test_a_live_push_arriving_during_a_poll_wins_over_its_prices(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch, window = FakeTicker({"A_USDT": 2.0}, delay_s=2.0), FakeWindow({"A_USDT": 1.0})
    with failover_log() as log, trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await start(nursery, views, fetch, metrics, window)
            await trio.sleep_until(31.0)  # the poll of 30 is in flight
            push_at(views, 31.0)
            await trio.sleep_until(33.0)
            assert (window.updates, window.asked) == ([], [])  # its answer came at 32: dropped
            assert views.rest.value == RestFeedStatus(active=True, last_ok_at=None, error=None)
            await trio.sleep_until(40.0)  # the next tick sees the push and ends the failover
            await trio.testing.wait_all_tasks_blocked()
            assert (views.rest.value, rest_gauge(metrics)) == (INACTIVE, 0.0)
            await trio.sleep_until(64.0)  # stale again at 31 + 30: this poll goes through
            nursery.cancel_scope.cancel()
    assert fetch.calls == [30.0, 61.0]
    assert window.times() == [63.0]
    assert (40.0, "INFO", "live pushes are back: REST failover ended after 10s and 1 polls") in log


async def test_a_push_ends_the_failover_and_each_push_moves_the_next_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch, window = FakeTicker({"A_USDT": 2.0}), FakeWindow({})
    with failover_log() as log, trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await start(nursery, views, fetch, metrics, window)
            await trio.sleep_until(45.0)
            assert rest_gauge(metrics) == 1.0
            push_at(views, 45.0)
            await trio.sleep_until(49.75)
            assert views.rest.value.active is True  # noticed at the next tick, not before
            await trio.sleep_until(50.0)
            await trio.testing.wait_all_tasks_blocked()
            assert (views.rest.value, rest_gauge(metrics)) == (INACTIVE, 0.0)
            await trio.sleep_until(60.0)
            push_at(views, 60.0)  # stale now at 90, no longer at 75
            await trio.sleep_until(89.75)
            assert (views.rest.value, rest_gauge(metrics)) == (INACTIVE, 0.0)
            await trio.sleep_until(90.0)
            await trio.testing.wait_all_tasks_blocked()
            assert views.rest.value.active is True
            assert rest_gauge(metrics) == 1.0
            nursery.cancel_scope.cancel()
    assert fetch.calls == [30.0, 40.0, 90.0]
    assert [t for t, level, _ in log if level == "WARNING"] == [30.0, 90.0]
    assert (50.0, "INFO", "live pushes are back: REST failover ended after 20s and 2 polls") in log


async def test_only_the_tracked_symbols_of_the_moment_are_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = Views.empty(), Metrics()
    prices = {"A_USDT": 1.0, "B_USDT": 2.0, "C_USDT": 3.0, "D_USDT": 4.0}
    fetch, window = FakeTicker(prices), FakeWindow({})
    tracking(views, "C_USDT", "A_USDT", "E_USDT")  # E is not in the ticker's answer
    with failover_log() as log, trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await start(nursery, views, fetch, metrics, window)
            await trio.sleep_until(35.0)
            tracking(views, "B_USDT")  # a universe refresh between two polls
            await trio.sleep_until(45.0)
            tracking(views)
            await trio.sleep_until(51.0)
            nursery.cancel_scope.cancel()
    assert window.updates == [
        (30.5, price_update("A_USDT", Tick(price=1.0, ts_ms=(M + 30) * 1000 + 500), None)),
        (30.5, price_update("C_USDT", Tick(price=3.0, ts_ms=(M + 30) * 1000 + 500), None)),
        (40.5, price_update("B_USDT", Tick(price=2.0, ts_ms=(M + 40) * 1000 + 500), None)),
    ]
    # Nothing tracked is still a successful poll.
    assert views.rest.value == RestFeedStatus(active=True, last_ok_at=50.5, error=None)
    assert [line for line in log if line[1] == "INFO"] == [
        (30.5, "INFO", "REST failover: 2 symbols updated per poll")
    ]


@pytest.mark.parametrize(
    ("price", "ts_ms", "last", "expected"),
    [
        # A symbol the window holds nothing of: a flat candle at the price.
        (5.0, (M + 59) * 1000 + 999, None, (M, 5.0, 5.0, 5.0, 5.0)),
        # Up from the last held price; a new minute opens at it.
        (5.0, (M + 60) * 1000, 4.0, (M + 60, 4.0, 5.0, 4.0, 5.0)),
        (5.0, (M + 61) * 1000, 6.5, (M + 60, 6.5, 6.5, 5.0, 5.0)),  # down from it
    ],
)
def test_price_update_opens_at_the_last_price_held(
    price: float,
    ts_ms: int,
    last: float | None,
    expected: tuple[int, float, float, float, float],
) -> None:
    """The pure function (no clock)."""
    t, o, h, low, c = expected
    assert price_update("A_USDT", Tick(price=price, ts_ms=ts_ms), last) == Kline(
        symbol="A_USDT",
        t=t,
        open=o,
        high=h,
        low=low,
        close=c,
        volume=0.0,
        amount=0.0,
        ts_ms=ts_ms,
        source=REST_SOURCE,
    )


async def test_the_outbox_closes_on_exit_and_a_poll_in_flight_is_abandoned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch, window = FakeTicker({"A_USDT": 2.0}, delay_s=5.0), FakeWindow({})
    with trio.fail_after(200):
        async with trio.open_nursery() as outer:
            inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](64)
            outer.start_soon(window.run, inbox_recv)
            async with trio.open_nursery() as nursery:
                await start(nursery, views, fetch, metrics, inbox_send)  # its only sender
                await trio.sleep_until(32.0)  # the poll of 30 answers at 35
                nursery.cancel_scope.cancel()
    assert window.closed_at == 32.0
    assert (window.updates, window.asked) == ([], [])
    assert fetch.calls == [30.0]


async def test_rest_prices_move_a_real_window_which_stays_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = Views.empty(), Metrics()
    tracking(views, "A_USDT")
    fetch = FakeTicker({"A_USDT": 15.0})
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](64)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](64)
    events: list[tuple[float, MarketData]] = []

    async def record() -> None:
        async for batch in events_recv:
            events.extend((trio.current_time(), event) for event in batch)

    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record)
            await start_window(
                nursery, inbox_recv, events_send, lookback_min=15, feed=views.feed, metrics=metrics
            )
            live = Kline(
                symbol="A_USDT",
                t=M,
                open=10.0,
                high=10.0,
                low=10.0,
                close=10.0,
                volume=5.0,
                amount=50.0,
                ts_ms=(M + 10) * 1000,
            )
            await inbox_send.send(live)
            await trio.testing.wait_all_tasks_blocked()
            assert views.feed.value.last_push_at == 0.0
            await start(nursery, views, fetch, metrics, inbox_send.clone())
            await trio.sleep_until(55.0)
            fetch.prices = {"A_USDT": 20.0}
            await trio.sleep_until(61.0)
            nursery.cancel_scope.cancel()
    assert fetch.calls == [30.0, 40.0, 50.0, 60.0]  # REST prices never refresh the feed
    assert views.feed.value.last_push_at == 0.0
    assert [(t, e.kline.source, e.change_pct, e.window_min) for t, e in events] == [
        (0.0, "mexc", 0.0, 1),
        (30.5, REST_SOURCE, 50.0, 1),
        (40.5, REST_SOURCE, 50.0, 1),
        (50.5, REST_SOURCE, 50.0, 1),
        (60.5, REST_SOURCE, 100.0, 2),
    ]
    # Minute M keeps the live candle's open and volume; minute M + 60 opens at its close.
    assert events[1][1].kline == live._replace(
        high=15.0, close=15.0, ts_ms=(M + 30) * 1000 + 500, source=REST_SOURCE
    )
    assert events[4][1].kline == Kline(
        symbol="A_USDT",
        t=M + 60,
        open=15.0,
        high=20.0,
        low=15.0,
        close=20.0,
        volume=0.0,
        amount=0.0,
        ts_ms=(M + 60) * 1000 + 500,
        source=REST_SOURCE,
    )
