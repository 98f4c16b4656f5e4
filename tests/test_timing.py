"""Periodic and staleness logic in exact virtual time (autojump MockClock)."""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from actors.publisher import PublisherInbox
from actors.ranking import run_ranking
from actors.window import WindowInbox, run_window
from screener.http import Views, create_app
from screener.metrics import Metrics
from screener.models import Kline, MarketData, Ranking, StatsRequest, SymbolStat


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


async def test_health_turns_stale_exactly_at_stale_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](10)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    client = create_app(views, Metrics(), stale_after_s=60).test_client()
    with trio.fail_after(500):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    run_window,
                    inbox_recv,
                    events_send,
                    lookback_min=15,
                    feed=views.feed,
                    metrics=Metrics(),
                )
            )
            await trio.sleep(10)
            await inbox_send.send(Kline("A_USDT", 60, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 61_000))
            await events_recv.receive()
            assert views.feed.value.last_push_at == 10.0
            await trio.sleep(59.999)
            r = await client.get("/health")
            assert r.status_code == 200
            assert (await r.get_json())["age"] == 59.999
            await trio.sleep(0.001)
            r = await client.get("/health")
            assert r.status_code == 503
            body = await r.get_json()
            assert body["status"] == "stale"
            assert body["problems"] == ["no push for 60s"]
            nursery.cancel_scope.cancel()
