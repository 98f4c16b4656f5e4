"""`Ticker` and `Pulse` on MockClock: exact deadlines on the grid, ticks skipped after an
overrun, and wake-ups that are neither lost nor repeated."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from screener.core.periodic import Pulse, Ticker


async def test_ticks_stay_on_the_grid_whatever_the_work_takes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticks: list[tuple[float, int]] = []
    with trio.fail_after(100):
        await trio.sleep(2.5)
        ticker = Ticker(15.0)  # the grid starts now, at 2.5
        for work_s in (4.0, 0.0, 14.9, 1.0):
            tick = await ticker.wait()
            ticks.append((trio.current_time(), tick))
            await trio.sleep(work_s)
    # sleep(15) after each round's work would drift: 17.5, 36.5, 51.5, 81.4.
    assert ticks == [(17.5, 1), (32.5, 2), (47.5, 3), (62.5, 4)]


@pytest.mark.parametrize(
    ("overrun_s", "next_tick"),
    [
        (5.0, (20.0, 2)),  # within the period: nothing skipped
        (10.0, (30.0, 3)),  # ends exactly on tick 2: the next one is after now
        (10.5, (30.0, 3)),
        (35.0, (50.0, 5)),  # three ticks missed, none caught up
    ],
)
async def test_ticks_missed_during_an_overrun_are_skipped(
    autojump_clock: trio.testing.MockClock, overrun_s: float, next_tick: tuple[float, int]
) -> None:
    ticker = Ticker(10.0)
    ticks: list[tuple[float, int]] = []
    with trio.fail_after(100):
        for work_s in (overrun_s, 0.0, 0.0):
            tick = await ticker.wait()
            ticks.append((trio.current_time(), tick))
            await trio.sleep(work_s)
    at, n = next_tick
    assert ticks == [(10.0, 1), (at, n), (at + 10.0, n + 1)]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (73.0, [(103.0, 3), (113.0, 4)]),  # in the past: the grid goes on from it
        (100.0, [(110.0, 1), (120.0, 2)]),  # now: the default
        (130.0, [(140.0, 1), (150.0, 2)]),  # ahead: k starts at 1 all the same
    ],
)
async def test_a_given_start_fixes_the_grid(
    autojump_clock: trio.testing.MockClock, start: float, expected: list[tuple[float, int]]
) -> None:
    ticks: list[tuple[float, int]] = []
    with trio.fail_after(300):
        await trio.sleep_until(100.0)
        ticker = Ticker(10.0, start=start)
        for _ in expected:
            tick = await ticker.wait()
            ticks.append((trio.current_time(), tick))
    assert ticks == expected


@pytest.mark.parametrize("period_s", [0.0, -1.0, math.inf, -math.inf, math.nan])
async def test_a_period_that_is_not_a_positive_finite_number_is_rejected(period_s: float) -> None:
    with pytest.raises(ValueError, match="period must be a positive number"):
        Ticker(period_s)  # checked before the clock is read: no await, no ceiling needed


@pytest.mark.parametrize("fires", [1, 3])
async def test_fires_before_wait_wake_it_once(
    autojump_clock: trio.testing.MockClock, fires: int
) -> None:
    pulse = Pulse()
    woke: list[float] = []

    async def fire_later() -> None:
        await trio.sleep(7.0)
        pulse.fire()

    with trio.fail_after(100):
        for _ in range(fires):
            pulse.fire()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fire_later)
            await pulse.wait()  # not lost: returns at once
            woke.append(trio.current_time())
            await pulse.wait()  # consumed: waits for the next fire
            woke.append(trio.current_time())
        with trio.move_on_after(5.0) as idle:
            await pulse.wait()
    assert woke == [0.0, 7.0]
    assert idle.cancelled_caught
    assert trio.current_time() == 12.0


async def test_a_fire_while_the_waiter_is_busy_is_kept_for_its_next_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pulse = Pulse()
    woke: list[float] = []

    async def waiter() -> None:
        for _ in range(3):
            await pulse.wait()
            woke.append(trio.current_time())
            await trio.sleep(3.0)  # busy from 1 to 4: fires at 2 and 3 land here

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            for at in (1.0, 2.0, 3.0, 10.0):
                await trio.sleep_until(at)
                pulse.fire()
    assert woke == [1.0, 4.0, 10.0]
