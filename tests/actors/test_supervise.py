"""Backoff schedule and restart policy, in exact virtual time."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from screener.core.supervise import Backoff, Spell, run_supervised


def test_full_jitter_doubles_from_two_and_caps_at_sixty() -> None:
    top = Backoff(rand=lambda: 0.999999)
    ceilings = [round(top.next_delay()) for _ in range(8)]
    assert ceilings == [2, 4, 8, 16, 32, 60, 60, 60]
    half = Backoff(rand=lambda: 0.5)
    assert [half.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    half.reset()
    assert half.next_delay() == 1.0


async def test_retries_on_exact_schedule_and_resets_after_a_healthy_spell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []
    plan = itertools.chain(["fail"] * 3, ["healthy-then-fail"], ["fail"] * 2)
    done = trio.Event()

    async def attempt(spell: Spell) -> None:
        starts.append(trio.current_time())
        step = next(plan, None)
        if step is None:
            done.set()
            await trio.sleep_forever()
        if step == "healthy-then-fail":
            spell.healthy()
            await trio.sleep(100)
        raise ConnectionResetError("boom")

    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_supervised(
                    attempt,
                    name="t",
                    retry_on=(OSError,),
                    backoff=Backoff(rand=lambda: 0.5),
                    healthy_after_s=60,
                )
            )
            await done.wait()
            nursery.cancel_scope.cancel()
    # delays 1, 2, 4; the healthy attempt runs 100 s, then the backoff restarts: 1, 2, 4.
    assert starts == [0, 1, 3, 7, 108, 110, 114]


async def test_unnamed_exceptions_are_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def attempt(spell: Spell) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with trio.fail_after(10), pytest.raises(KeyError):
        await run_supervised(
            attempt,
            name="t",
            retry_on=(OSError,),
            backoff=Backoff(rand=lambda: 0.5),
            healthy_after_s=60,
        )
    assert calls == 1


async def test_retryable_inside_an_exception_group(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []

    async def attempt(spell: Spell) -> None:
        starts.append(trio.current_time())
        if len(starts) == 3:
            raise KeyError("stop")
        async with trio.open_nursery():
            raise OSError("net")

    with trio.fail_after(100), pytest.raises(KeyError):
        await run_supervised(
            attempt,
            name="t",
            retry_on=(OSError,),
            backoff=Backoff(rand=lambda: 1.0),
            healthy_after_s=60,
        )
    assert starts == [0, 2, 6]
