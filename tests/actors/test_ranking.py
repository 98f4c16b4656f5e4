"""Periodic and staleness logic in exact virtual time (autojump MockClock)."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from actors.ranking import run_ranking
from screener.core.metrics import Metrics
from screener.core.models import (
    PublisherInbox,
    Ranking,
    StatsRequest,
    SymbolStat,
    WindowInbox,
)
from screener.core.snapshot import Views


async def test_ranking_runs_on_absolute_deadlines(autojump_clock: trio.testing.MockClock) -> None:
    views = Views.empty()
    req_send, req_recv = trio.open_memory_channel[WindowInbox](4)
    out_send, out_recv = trio.open_memory_channel[PublisherInbox](4)
    asked: list[float] = []
    published: list[tuple[float, Ranking]] = []

    async def window_stub() -> None:
        async for request in req_recv:
            assert isinstance(request, StatsRequest)
            asked.append(trio.current_time())
            await trio.sleep(2.5)  # a slow answer must not shift the next deadline
            await request.reply.send((SymbolStat("A_USDT", 1.0, 2.0),))

    async def publisher_stub() -> None:
        async for item in out_recv:
            assert isinstance(item, Ranking)
            published.append((trio.current_time(), item))

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(window_stub)
            nursery.start_soon(publisher_stub)
            await nursery.start(
                partial(
                    run_ranking,
                    req_send,
                    out_send,
                    interval_s=15,
                    top_n=5,
                    lookback_min=15,
                    snapshot=views.ranking,
                    metrics=Metrics(),
                    wall=lambda: 1_770_000_000.0,
                )
            )
            await trio.sleep(50)
            nursery.cancel_scope.cancel()
    assert asked == [15.0, 30.0, 45.0]
    assert [t for t, _ in published] == [17.5, 32.5, 47.5]
    assert views.ranking.value == published[-1][1]
