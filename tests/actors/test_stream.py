"""GET /stream, the live page's Server-Sent Events, through Quart's in-process test client on
MockClock: the first events at once, one `ranking` event per ranking, `status` and heartbeat
on their grids, the cap on streams, a stalled client dropped while ingest and the other
streams keep their exact times, and every stream ending when `stop` fires."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import trio
import trio.testing
from quart import typing as quart_typing

from actors.ranking import run_ranking
from screener.core.metrics import Metrics
from screener.core.models import (
    Charts,
    Kline,
    MarketData,
    PublisherInbox,
    Ranking,
    SymbolStat,
    WindowInbox,
)
from screener.core.snapshot import Views
from screener.http.health import health_report
from screener.http.routes import create_app
from screener.http.stream import Streams
from tests.actors.fakes import start_window, tracking
from tests.contracts import check_document

M = 1_770_330_480  # 2026-02-05 22:28:00 UTC


def kline(symbol: str, minute: int, close: float, *, ts_ms: int | None = None) -> Kline:
    t = M + 60 * minute
    return Kline(
        symbol=symbol,
        t=t,
        open=1.0,
        high=max(1.0, close),
        low=min(1.0, close),
        close=close,
        volume=1.0,
        amount=close,
        ts_ms=t * 1000 + 30_000 if ts_ms is None else ts_ms,
    )


def ranking(wall_ts: float = M + 0.5) -> Ranking:
    return Ranking(
        wall_ts=wall_ts,
        lookback_min=15,
        gainers=(SymbolStat(symbol="A_USDT", change_pct=12.0, price=1.12),),
        losers=(SymbolStat(symbol="B_USDT", change_pct=-3.0, price=0.97),),
        ranked=2,
    )


def ready_views() -> Views:
    """Views as after a ranking round: a fresh feed, a ranking, the candles behind it (A has
    a minute without candle; B has none here, as in a fleet where another shard holds it)."""
    views = tracking()
    views.feed.set(views.feed.value._replace(last_push_at=0.0, conns_up=1, conns_total=1))
    views.charts.set(
        Charts(
            wall_ts=M + 0.5,
            lookback_min=15,
            candles={"A_USDT": (kline("A_USDT", 0, 1.05), kline("A_USDT", 2, 1.12))},
        )
    )
    views.ranking.set(ranking())
    return views


def parse(chunk: bytes) -> tuple[str, Any]:
    """("retry", ms), (":", comment) or (event name, JSON data) of one chunk of the stream."""
    text = chunk.decode()
    assert text.endswith("\n\n"), text
    if text.startswith("retry: "):
        return "retry", int(text.split()[1])
    if text.startswith(":"):
        return ":", text[1:].strip()
    head, data = text.strip().split("\n")
    assert head.startswith("event: ")
    assert data.startswith("data: ")
    return head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))


@asynccontextmanager
async def open_stream(
    client: quart_typing.TestClientProtocol,
) -> AsyncIterator[quart_typing.TestHTTPConnectionProtocol]:
    """A stream open for the block; leaving it cancels the request, as a client that goes
    away does (the test connection would otherwise wait for the body's end, which a stream
    has not). The block must end by itself: Quart's test connection cannot be cancelled from
    outside."""
    with trio.CancelScope() as scope:
        async with client.request("/stream") as conn:
            await conn.send_complete()
            yield conn
            scope.cancel()


async def read(conn: quart_typing.TestHTTPConnectionProtocol) -> tuple[str, Any]:
    return parse(await conn.receive())


def app_for(streams: Streams, views: Views, metrics: Metrics) -> quart_typing.TestClientProtocol:
    return create_app(views, metrics, stale_after_s=60.0, streams=streams).test_client()


async def test_a_new_stream_gets_the_status_and_the_ranking_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = ready_views(), Metrics()
    streams = Streams(views, metrics, stale_after_s=60.0)
    with trio.fail_after(10):
        await trio.sleep_until(2.0)
        async with open_stream(app_for(streams, views, metrics)) as conn:
            first = [await read(conn) for _ in range(3)]
            assert conn.status_code == 200
            assert conn.headers is not None
            assert conn.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert conn.headers["cache-control"] == "no-store"
            assert trio.current_time() == 2.0
            assert metrics.registry.get_sample_value("screener_stream_clients") == 1
    assert first[0] == ("retry", 2000)
    assert first[1] == ("status", health_report(views, 2.0, 60.0)[1])
    name, doc = first[2]
    assert name == "ranking"
    assert doc == {
        **ranking().as_dict(),
        "stale": False,
        "ranked": 2,
        # One point per minute: minute 1 had no candle and repeats minute 0's close.
        "sparklines": {"A_USDT": [1.05, 1.05, 1.12], "B_USDT": []},
    }
    check_document("live_ranking", doc)
    check_document("health", first[1][1])
    assert metrics.registry.get_sample_value("screener_stream_clients") == 0


async def test_before_any_ranking_a_stream_starts_with_the_status_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = tracking(), Metrics()
    streams = Streams(views, metrics, stale_after_s=60.0, status_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(streams.run)
        with trio.fail_after(10):
            async with open_stream(app_for(streams, views, metrics)) as conn:
                assert [(await read(conn))[0] for _ in range(2)] == ["retry", "status"]
                name, doc = await read(conn)  # the next one is the status at t = 5
                assert (name, doc["status"], trio.current_time()) == ("status", "stale", 5.0)
        nursery.cancel_scope.cancel()


async def test_one_ranking_event_per_ranking_and_status_and_heartbeat_on_their_grids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = ready_views(), Metrics()
    streams = Streams(views, metrics, stale_after_s=60.0, status_s=5.0, heartbeat_s=15.0)
    seen: list[tuple[float, str, Any]] = []

    async def rankings() -> None:
        for at in (1.0, 2.5, 7.0, 22.0):
            await trio.sleep_until(at)
            views.ranking.set(ranking(M + at))

    async with trio.open_nursery() as nursery:
        await nursery.start(streams.run)
        nursery.start_soon(rankings)
        with trio.fail_after(100):
            async with open_stream(app_for(streams, views, metrics)) as conn:
                for _ in range(3):  # retry, status, ranking: at once
                    await read(conn)
                with trio.move_on_at(31.0):
                    while True:
                        name, doc = await read(conn)
                        seen.append((trio.current_time(), name, doc))
        nursery.cancel_scope.cancel()
    # Events due at the same instant may come in either order.
    assert sorted((at, name) for at, name, _ in seen) == [
        (1.0, "ranking"),
        (2.5, "ranking"),
        (5.0, "status"),
        (7.0, "ranking"),
        (10.0, "status"),
        (15.0, ":"),
        (15.0, "status"),
        (20.0, "status"),
        (22.0, "ranking"),
        (25.0, "status"),
        (30.0, ":"),
        (30.0, "status"),
    ]
    assert [doc["ts_ms"] for _, name, doc in seen if name == "ranking"] == [
        round((M + at) * 1000) for at in (1.0, 2.5, 7.0, 22.0)
    ]
    assert all(doc == "heartbeat" for _, name, doc in seen if name == ":")


async def test_streams_beyond_the_cap_are_refused_with_json_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views, metrics = ready_views(), Metrics()
    streams = Streams(views, metrics, stale_after_s=60.0, max_clients=2)
    client = app_for(streams, views, metrics)
    with trio.fail_after(10):
        async with open_stream(client) as one, open_stream(client):
            await read(one)
            refused = await client.get("/stream")
            assert refused.status_code == 503
            assert refused.mimetype == "application/json"
            assert await refused.get_json() == {"error": "too many streams"}
            assert metrics.registry.get_sample_value("screener_stream_clients") == 2
        # Both ended: room again.
        async with open_stream(client) as again:
            assert (await read(again))[0] == "retry"
    assert metrics.registry.get_sample_value("screener_stream_clients_refused_total") == 1


async def test_a_stalled_client_is_dropped_while_ingest_and_the_other_streams_keep_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The real window and ranking actors: a kline every 0.5 s, a ranking every second. One
    client never reads: its queue fills, it is dropped and counted; meanwhile every batch
    leaves the window the moment its kline arrives, every ranking happens on its tick, and
    the reading client gets one event per ranking, on time."""
    views, metrics = tracking(), Metrics()
    streams = Streams(views, metrics, stale_after_s=60.0, queue_size=4)
    client = app_for(streams, views, metrics)
    ingest_send, ingest_recv = trio.open_memory_channel[WindowInbox](16)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](16)
    rankings_send, rankings_recv = trio.open_memory_channel[PublisherInbox](64)
    sent: list[float] = []
    batches: list[float] = []
    rankings_at: list[float] = []
    live: list[float] = []

    async def feed() -> None:
        async with ingest_send:
            for i in range(120):  # minute 0, then minute 1 after 60 s
                await trio.sleep_until(0.25 + 0.5 * i)
                now_ms = M * 1000 + round(trio.current_time() * 1000)
                minute = int(trio.current_time() // 60)
                await ingest_send.send(kline("A_USDT", minute, 1.0 + i / 1000, ts_ms=now_ms))
                sent.append(trio.current_time())

    async def drain_events() -> None:
        async for _ in events_recv:
            batches.append(trio.current_time())

    async def drain_rankings() -> None:
        async for _ in rankings_recv:
            rankings_at.append(trio.current_time())

    async def reader() -> None:
        # It leaves by itself: a test connection must not be cancelled from outside.
        async with open_stream(client) as conn:
            with trio.move_on_at(59.9):
                while True:
                    name, _ = await read(conn)
                    if name == "ranking":
                        live.append(trio.current_time())

    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            await start_window(nursery, ingest_recv, events_send, lookback_min=15, feed=views.feed)
            await nursery.start(
                partial(
                    run_ranking,
                    ingest_send.clone(),
                    rankings_send,
                    snapshot=views.ranking,
                    metrics=metrics,
                    interval_s=1.0,
                    top_n=5,
                    lookback_min=15,
                    wall=lambda: M + trio.current_time(),
                    charts=views.charts,
                )
            )
            await nursery.start(streams.run)
            nursery.start_soon(drain_events)
            nursery.start_soon(drain_rankings)
            async with open_stream(client) as stalled:  # never read
                nursery.start_soon(feed)
                nursery.start_soon(reader)
                await trio.sleep_until(59.95)
                # Asserted outside: a test connection must be left without an exception.
                dropped = metrics.registry.get_sample_value("screener_stream_clients_dropped_total")
                still_open = len(streams)
                status = stalled.status_code
            nursery.cancel_scope.cancel()
    assert (status, dropped, still_open) == (200, 1, 0)
    assert batches == sent[: len(batches)]
    assert len(batches) >= 119
    assert rankings_at == [float(t) for t in range(1, 60)]
    assert live == [float(t) for t in range(1, 60)]


async def test_every_stream_ends_when_stop_fires_and_new_ones_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Shutdown drains HTTP before it cancels anything: an open stream must end by itself
    when `stop` fires, or the drain would wait for it."""
    views, metrics = ready_views(), Metrics()
    streams = Streams(views, metrics, stale_after_s=60.0)
    client = app_for(streams, views, metrics)
    stop = trio.Event()
    ended_at: list[float] = []

    async def watch(conn: quart_typing.TestHTTPConnectionProtocol) -> None:
        while True:
            try:
                await conn.receive()
            except trio.EndOfChannel:
                ended_at.append(trio.current_time())
                return

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(streams.run, stop=stop.wait))
            async with client.request("/stream") as one, client.request("/stream") as two:
                await one.send_complete()
                await two.send_complete()
                await trio.sleep_until(3.0)
                stop.set()
                await watch(one)
                await watch(two)
            assert ended_at == [3.0, 3.0]
            refused = await client.get("/stream")
            assert (refused.status_code, await refused.get_json()) == (
                503,
                {"error": "shutting down"},
            )
    assert len(streams) == 0
    assert metrics.registry.get_sample_value("screener_stream_clients") == 0
