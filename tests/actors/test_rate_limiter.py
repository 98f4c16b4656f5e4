"""The REST client: pacing in exact virtual time, and every scripted fault of the simulator
over real loopback (500, 510, 429, hang, garbage, a venue refusal)."""

from __future__ import annotations

import trio
import trio.testing

from screener.mexc.client import (
    RateLimiter,
)


async def test_limiter_releases_callers_at_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = RateLimiter(4.0)
    sent: list[float] = []

    async def caller() -> None:
        await limiter.wait()
        sent.append(trio.current_time())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(caller)
        assert sent == [0.0, 0.25, 0.5, 0.75, 1.0]
        limiter.slow_down()  # at t=1.0, with the bucket one token in debt until 1.25
        assert limiter.rate == 2.0
        await limiter.wait()
        assert trio.current_time() == 1.5  # the debt of 1.25 paid at 2/s, then one more
        await trio.sleep_until(31.0)
        assert limiter.rate == 4.0
        await limiter.wait()
        await limiter.wait()
        assert trio.current_time() == 31.25
