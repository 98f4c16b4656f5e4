"""Backfill actor on MockClock with a fake kline fetch and an injected wall clock: dedup,
worker concurrency, failures, progress, request ranges, and the end of requests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import trio
import trio.testing
from loguru import logger

from actors.backfill import BackfillQueue, run_backfill
from screener.core.metrics import Metrics
from screener.core.models import (
    HISTORY_SOURCE,
    BackfillProgress,
    HistoryDone,
    Kline,
    SymbolSet,
    WindowInbox,
)
from screener.core.snapshot import Latest
from screener.mexc.client import RestFailed
from tests.helpers import sample

M = 1_770_330_480  # a minute boundary (seconds); M % 300 == 180


class FakeKlines:
    """`(symbol, interval, start_s, end_s) -> candles`: one history row at `end_s`, answered
    `delay_s` after the call; the symbols in `failing` raise `RestFailed` instead."""

    def __init__(self, *, delay_s: float = 1.0, failing: frozenset[str] = frozenset()) -> None:
        self.delay_s = delay_s
        self.failing = failing
        self.calls: list[tuple[float, str, str, int, int]] = []

    async def __call__(self, symbol: str, interval: str, start_s: int, end_s: int) -> list[Kline]:
        self.calls.append((trio.current_time(), symbol, interval, start_s, end_s))
        await trio.sleep(self.delay_s)
        if symbol in self.failing:
            raise RestFailed("kline", "server", "HTTP 500")
        row = Kline(
            symbol=symbol,
            t=end_s,
            open=1.0,
            high=1.0,
            low=1.0,
            close=1.0,
            volume=0.0,
            amount=0.0,
            ts_ms=end_s * 1000,
            source=HISTORY_SOURCE,
        )
        return [row]


class Window:
    """The receiving end of the backfill's outbox: when each row arrived, and the close."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, str]] = []
        self.done: list[str] = []  # each fetch's end, after its rows
        self.closed_at: float | None = None

    async def run(self, inbox: trio.MemoryReceiveChannel[WindowInbox]) -> None:
        async for item in inbox:
            if isinstance(item, HistoryDone):
                assert item.symbol in {symbol for _, symbol in self.rows}  # the rows came first
                self.done.append(item.symbol)
                continue
            assert isinstance(item, Kline)
            self.rows.append((trio.current_time(), item.symbol))
        self.closed_at = trio.current_time()
        assert sorted(self.done) == sorted(symbol for _, symbol in self.rows)


async def start(
    nursery: trio.Nursery,
    fetch: FakeKlines,
    window: Window,
    progress: Latest[BackfillProgress],
    metrics: Metrics,
    *,
    workers: int,
    lookback_min: int = 15,
    interval: str = "Min1",
    wall0: float = M + 30.0,
) -> trio.MemorySendChannel[SymbolSet]:
    """The actor with `window` behind it and a wall clock at `wall0` + virtual time."""
    req_send, req_recv = trio.open_memory_channel[SymbolSet](16)
    out_send, out_recv = trio.open_memory_channel[WindowInbox](0)
    nursery.start_soon(window.run, out_recv)
    await nursery.start(
        partial(
            run_backfill,
            req_recv,
            out_send,
            fetch=fetch,
            lookback_min=lookback_min,
            progress=progress,
            metrics=metrics,
            interval=interval,
            workers=workers,
            wall=lambda: wall0 + trio.current_time(),
        )
    )
    return req_send


def symbols(*names: str) -> SymbolSet:
    return frozenset(f"{name}_USDT" for name in names)


def fill_counter(metrics: Metrics, result: str) -> float:
    return sample(metrics, "screener_backfill_symbols_total", result=result)


@contextmanager
def backfill_log() -> Iterator[list[tuple[float, str, str]]]:
    """(virtual time, level, message) of the backfill actor's log lines."""
    lines: list[tuple[float, str, str]] = []
    sink = logger.add(
        lambda m: lines.append((trio.current_time(), m.record["level"].name, m.record["message"])),
        filter=lambda r: r["extra"].get("actor") == "backfill",
        level="DEBUG",
    )
    try:
        yield lines
    finally:
        logger.remove(sink)


async def test_a_symbol_queued_or_in_flight_is_fetched_once_but_a_finished_one_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetch, window = FakeKlines(delay_s=5.0), Window()
    progress, metrics = Latest(BackfillProgress(done=0, total=0)), Metrics()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            requests = await start(nursery, fetch, window, progress, metrics, workers=1)
            await requests.send(symbols("A", "B"))
            await trio.sleep_until(1.0)  # A in flight, B queued
            await requests.send(symbols("B", "C", "A"))
            await trio.testing.wait_all_tasks_blocked()
            assert progress.value == BackfillProgress(done=0, total=3, failed=0, last_ok_at=None)
            await trio.sleep_until(20.0)  # all three done at 15
            await requests.send(symbols("A"))
            await trio.sleep_until(26.0)
            nursery.cancel_scope.cancel()
    assert [(t, s) for t, s, *_ in fetch.calls] == [
        (0.0, "A_USDT"),
        (5.0, "B_USDT"),
        (10.0, "C_USDT"),
        (20.0, "A_USDT"),
    ]
    assert window.rows == [(5.0, "A_USDT"), (10.0, "B_USDT"), (15.0, "C_USDT"), (25.0, "A_USDT")]
    assert progress.value == BackfillProgress(done=4, total=4, failed=0, last_ok_at=25.0)


@pytest.mark.parametrize(
    ("workers", "finished"),
    [
        (1, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]),
        (3, [2.0, 2.0, 2.0, 4.0, 4.0, 4.0]),
        (5, [2.0, 2.0, 2.0, 2.0, 2.0, 4.0]),
    ],
)
async def test_workers_fetches_are_in_flight_at_once(
    autojump_clock: trio.testing.MockClock, workers: int, finished: list[float]
) -> None:
    fetch, window = FakeKlines(delay_s=2.0), Window()
    progress, metrics = Latest(BackfillProgress(done=0, total=0)), Metrics()
    names = ("A", "B", "C", "D", "E", "F")
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            requests = await start(nursery, fetch, window, progress, metrics, workers=workers)
            await requests.send(symbols(*names))
            await requests.aclose()
    # Arrival order, each set sorted: the first `workers` symbols go first.
    assert sorted(window.rows) == list(zip(finished, [f"{n}_USDT" for n in names], strict=True))
    assert progress.value == BackfillProgress(done=6, total=6, failed=0, last_ok_at=finished[-1])
    assert fill_counter(metrics, "ok") == 6


async def test_a_failing_symbol_is_logged_counted_and_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetch, window = FakeKlines(failing=symbols("BAD")), Window()
    progress, metrics = Latest(BackfillProgress(done=0, total=0)), Metrics()
    with backfill_log() as log, trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            requests = await start(nursery, fetch, window, progress, metrics, workers=1)
            await requests.send(symbols("A", "BAD", "C"))
            await requests.aclose()
    # No retry: C is fetched as soon as BAD failed.
    assert [(t, s) for t, s, *_ in fetch.calls] == [
        (0.0, "A_USDT"),
        (1.0, "BAD_USDT"),
        (2.0, "C_USDT"),
    ]
    assert window.rows == [(1.0, "A_USDT"), (3.0, "C_USDT")]
    assert [line for line in log if line[1] == "WARNING"] == [
        (2.0, "WARNING", "backfill of BAD_USDT skipped: kline: server: HTTP 500")
    ]
    assert (fill_counter(metrics, "failed"), fill_counter(metrics, "ok")) == (1.0, 2.0)


async def test_progress_snapshot_and_log_over_two_spells_of_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetch, window = FakeKlines(failing=symbols("BAD")), Window()
    progress, metrics = Latest(BackfillProgress(done=0, total=0)), Metrics()
    seen: list[tuple[float, BackfillProgress]] = []

    async def check_at(t: float) -> None:
        await trio.sleep_until(t)
        await trio.testing.wait_all_tasks_blocked()
        seen.append((t, progress.value))

    with backfill_log() as log, trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            requests = await start(nursery, fetch, window, progress, metrics, workers=2)
            await requests.send(symbols("A", "BAD", "C"))
            for t in (0.0, 1.0, 2.0):
                await check_at(t)
            await trio.sleep_until(10.0)
            await requests.send(symbols("D", "E"))
            for t in (10.0, 11.0):
                await check_at(t)
            nursery.cancel_scope.cancel()
    assert seen == [
        (0.0, BackfillProgress(done=0, total=3, failed=0, last_ok_at=None)),
        (1.0, BackfillProgress(done=2, total=3, failed=1, last_ok_at=1.0)),
        (2.0, BackfillProgress(done=3, total=3, failed=1, last_ok_at=2.0)),
        (10.0, BackfillProgress(done=3, total=5, failed=1, last_ok_at=2.0)),
        (11.0, BackfillProgress(done=5, total=5, failed=1, last_ok_at=11.0)),
    ]
    assert [(t, msg) for t, level, msg in log if level == "INFO"] == [
        (1.0, "backfill: 1/3 symbols"),
        (1.0, "backfill: 2/3 symbols"),
        (2.0, "backfill: 3/3 symbols, 1 failed, in 2.0s"),
        (11.0, "backfill: 4/5 symbols"),
        (11.0, "backfill: 5/5 symbols, 1 failed, in 1.0s"),  # the second spell began at 10
    ]


FIVE = M - 180  # the 5-minute boundary at or before M


@pytest.mark.parametrize(
    ("interval", "lookback_min", "wall0", "ranges"),
    [
        # Read at each fetch: B's fetch, one second later, is in the next minute.
        ("Min1", 15, M + 59.5, [(M - 900, M), (M - 840, M + 60)]),
        # `screener rest`: 5-minute candles, ceil(lookback / 5) rows plus the open one.
        ("Min5", 15, FIVE + 299.5, [(FIVE - 900, FIVE), (FIVE - 600, FIVE + 300)]),
        ("Min5", 7, FIVE + 299.5, [(FIVE - 600, FIVE), (FIVE - 300, FIVE + 300)]),
    ],
)
async def test_request_ranges_come_from_the_wall_clock_at_fetch_time(
    autojump_clock: trio.testing.MockClock,
    interval: str,
    lookback_min: int,
    wall0: float,
    ranges: list[tuple[int, int]],
) -> None:
    fetch, window = FakeKlines(), Window()
    progress, metrics = Latest(BackfillProgress(done=0, total=0)), Metrics()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            requests = await start(
                nursery,
                fetch,
                window,
                progress,
                metrics,
                workers=1,
                lookback_min=lookback_min,
                interval=interval,
                wall0=wall0,
            )
            await requests.send(symbols("A", "B"))
            await requests.aclose()
    (a_start, a_end), (b_start, b_end) = ranges
    assert fetch.calls == [
        (0.0, "A_USDT", interval, a_start, a_end),
        (1.0, "B_USDT", interval, b_start, b_end),
    ]


@pytest.mark.parametrize(
    ("requested", "close_at", "ends_at", "rows"),
    [
        ((), 0.0, 0.0, []),
        (("A", "B", "C"), 0.5, 3.0, [(1.0, "A_USDT"), (2.0, "B_USDT"), (3.0, "C_USDT")]),
    ],
)
async def test_the_end_of_requests_finishes_the_queue_then_closes_the_outbox(
    autojump_clock: trio.testing.MockClock,
    requested: tuple[str, ...],
    close_at: float,
    ends_at: float,
    rows: list[tuple[float, str]],
) -> None:
    fetch, window = FakeKlines(), Window()
    progress = Latest(BackfillProgress(done=0, total=0))
    req_send, req_recv = trio.open_memory_channel[SymbolSet](16)
    out_send, out_recv = trio.open_memory_channel[WindowInbox](0)
    returned_at: list[float] = []

    async def actor() -> None:
        await run_backfill(
            req_recv,
            out_send,
            fetch=fetch,
            lookback_min=15,
            progress=progress,
            metrics=Metrics(),
            workers=1,
            wall=lambda: M + 30.0,
        )
        returned_at.append(trio.current_time())

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(window.run, out_recv)
            nursery.start_soon(actor)
            if requested:
                await req_send.send(symbols(*requested))
            await trio.sleep_until(close_at)  # A (if any) is in flight, the rest queued
            await req_send.aclose()
    assert returned_at == [ends_at]
    assert window.rows == rows
    assert window.closed_at == ends_at
    assert progress.value.done == progress.value.total == len(requested)


def test_backfill_queue_keeps_arrival_order_and_each_symbol_once() -> None:
    """The pure queue behind the actor (no clock)."""
    queue = BackfillQueue()
    assert queue.add(["C_USDT", "A_USDT"]) == 2
    assert queue.add(["B_USDT", "A_USDT"]) == 1  # A is queued already
    assert queue.pop() == "A_USDT"
    assert queue.add(["A_USDT"]) == 0  # A is being fetched
    assert (queue.pop(), queue.pop(), queue.pop()) == ("C_USDT", "B_USDT", None)
    assert not queue.idle
    queue.finished("A_USDT", True, 4.0)
    queue.finished("C_USDT", False, 5.0)
    assert queue.progress == BackfillProgress(done=2, total=3, failed=1, last_ok_at=4.0)
    assert queue.add(["A_USDT"]) == 1  # finished: a new request fetches it again
    queue.finished("B_USDT", True, 6.0)
    assert queue.pop() == "A_USDT"
    queue.finished("A_USDT", True, 7.0)
    assert queue.idle
    assert queue.progress == BackfillProgress(done=4, total=4, failed=1, last_ok_at=7.0)
