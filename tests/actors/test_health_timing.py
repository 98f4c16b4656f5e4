"""Periodic and staleness logic in exact virtual time (autojump MockClock)."""

from __future__ import annotations

import trio
import trio.testing

from screener.core.metrics import Metrics
from screener.core.models import (
    Kline,
    MarketData,
    UniverseStatus,
    WindowInbox,
)
from screener.core.snapshot import Views
from screener.http.routes import create_app
from tests.actors.fakes import start_window


async def test_health_turns_stale_exactly_at_stale_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    views.universe.set(UniverseStatus(symbols=1, chunks=1, error=None))  # nothing tracked: stale
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](10)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    client = create_app(views, Metrics(), stale_after_s=60).test_client()
    with trio.fail_after(500):
        async with trio.open_nursery() as nursery:
            await start_window(nursery, inbox_recv, events_send, lookback_min=15, feed=views.feed)
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
