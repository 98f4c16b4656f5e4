"""/health's verdicts over virtual time (the pure `health_report` and the route through
`create_app(...).test_client()` on MockClock): no symbols is never healthy, a connection down
past `CONN_DOWN_GRACE_S` or Redis refusing writes is "degraded", stale beats degraded beats
ok; the window actor's `down_since` bookkeeping; the ranking actor never sending an empty
ranking."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import trio
import trio.testing
from loguru import logger

from actors.ranking import run_ranking
from screener.core.metrics import Metrics
from screener.core.models import (
    ConnStatus,
    FeedStatus,
    Kline,
    MarketData,
    PublisherInbox,
    Ranking,
    RedisStatus,
    RestFeedStatus,
    StatsRequest,
    SymbolStat,
    UniverseStatus,
    WindowInbox,
)
from screener.core.snapshot import Latest, Views
from screener.http.health import CONN_DOWN_GRACE_S, health_report
from tests.actors.fakes import client_for, get, start_window, tracking

M = 1_770_330_480  # a minute boundary (seconds)
W0 = 1_770_000_000.0  # the wall clock at virtual time 0
CONTRACTS_DOWN = "contract list unavailable: contract_detail: server: HTTP 502"
OOM = "OOM command not allowed when used memory > 'maxmemory'."
NO_CANDLES_LAG = {"unpublished": 0, "owed": 0, "oldest": None, "lag_s": None}


def pushed(views: Views, *, up: int = 1, total: int = 1, down_since: float | None = None) -> None:
    """What the window actor's snapshot says after a live push now."""
    views.feed.set(
        FeedStatus(
            last_push_at=trio.current_time(), conns_up=up, conns_total=total, down_since=down_since
        )
    )


def ranking(*stats: SymbolStat) -> Ranking:
    return Ranking(
        wall_ts=float(M), lookback_min=15, gainers=stats, losers=stats[::-1], ranked=len(stats)
    )


# --- no symbols: never healthy (fault 6) ---------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [(CONTRACTS_DOWN, CONTRACTS_DOWN), (None, "no symbols tracked")],
    ids=["contract-list-failing", "nothing-tracked"],
)
async def test_no_symbols_is_503_although_the_ticker_failover_polls_successfully(
    autojump_clock: trio.testing.MockClock, error: str | None, reason: str
) -> None:
    """Fault 6: the contract list fails from the start while the ticker works. The failover's
    polls succeed but update nothing: that used to read 200 "degraded" with `symbols` 0."""
    views = Views.empty()
    client = client_for(views)
    with trio.fail_after(200):
        await trio.sleep_until(1.0)
        views.universe.set(UniverseStatus(symbols=0, chunks=0, error=error))
        views.redis.set(RedisStatus(up=True, error=None))
        await trio.sleep_until(60.0)  # no push for STALE_AFTER_S: the failover starts
        views.rest.set(RestFeedStatus(active=True, last_ok_at=None, error=None))
        await trio.sleep_until(60.5)
        views.rest.set(RestFeedStatus(active=True, last_ok_at=60.5, error=None))
        assert await get(client, "/health") == (
            503,
            {
                "status": "stale",
                "feed": "rest",
                "symbols": 0,
                "age": None,
                "connections": {"up": 0, "total": 0},
                "backfill": {"done": 0, "total": 0},
                "redis": "up",
                "candles": NO_CANDLES_LAG,
                "problems": ["no push received yet", reason],
            },
        )
        assert await get(client, "/top5") == (503, {"error": "no data yet"})

        # The contract list is read at last: the same polls now feed 3 symbols.
        await trio.sleep_until(70.5)
        views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
        views.rest.set(RestFeedStatus(active=True, last_ok_at=70.5, error=None))
        status, body = await get(client, "/health")
        assert (status, body["status"], body["problems"]) == (
            200,
            "degraded",
            ["no push received yet"],
        )


async def test_no_symbols_is_503_even_with_fresh_pushes_and_top5_says_stale_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A read that leaves nothing tracked (the whitelist names nothing live) while the windows
    still hold earlier figures: /health and /top5's `stale` agree."""
    views = tracking()
    client = client_for(views)
    held = ranking(SymbolStat(symbol="A_USDT", change_pct=1.5, price=2.0))
    with trio.fail_after(100):
        await trio.sleep_until(10.0)
        pushed(views)
        views.ranking.set(held)
        assert (await get(client, "/health"))[0] == 200
        assert (await get(client, "/top5"))[1]["stale"] is False

        views.universe.set(UniverseStatus(symbols=0, chunks=0, error=None))
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"], body["age"]) == (503, "stale", "ws", 0.0)
        assert body["problems"] == ["no symbols tracked"]
        assert await get(client, "/top5") == (200, {**held.as_dict(), "stale": True})


# --- connections down past the grace: degraded ---------------------------------------------


async def test_a_connection_down_for_the_grace_period_is_degraded_then_stale_then_ok(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = tracking(800)
    views.redis.set(RedisStatus(up=True, error=None))
    client = client_for(views)
    with trio.fail_after(200):
        await trio.sleep_until(10.0)
        pushed(views, up=3, total=4, down_since=10.0)  # the others keep streaming
        await trio.sleep_until(10.0 + CONN_DOWN_GRACE_S - 0.25)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["connections"]) == (200, "ok", {"up": 3, "total": 4})
        assert "problems" not in body

        await trio.sleep_until(10.0 + CONN_DOWN_GRACE_S)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"]) == (200, "degraded", "ws")
        assert body["problems"] == ["1 of 4 connections down, the longest for 5s"]

        await trio.sleep_until(70.0)  # and now no push for 60 s: stale beats degraded
        status, body = await get(client, "/health")
        assert (status, body["status"]) == (503, "stale")
        assert body["problems"] == [
            "no push for 60s",
            "1 of 4 connections down, the longest for 60s",
        ]

        pushed(views, up=4, total=4)  # reconnected and streaming
        assert await get(client, "/health") == (
            200,
            {
                "status": "ok",
                "feed": "ws",
                "symbols": 800,
                "age": 0.0,
                "connections": {"up": 4, "total": 4},
                "backfill": {"done": 0, "total": 0},
                "redis": "up",
                "candles": NO_CANDLES_LAG,
            },
        )


# --- the precedence of the verdicts, at one instant -----------------------------------------


def fresh(views: Views) -> None:
    pushed(views, up=2, total=2)


def rest_failover(views: Views) -> None:
    """No push for 80 s; the failover's last poll is 5 s old."""
    views.feed.set(FeedStatus(last_push_at=20.0, conns_up=0, conns_total=2, down_since=20.0))
    views.rest.set(RestFeedStatus(active=True, last_ok_at=95.0, error=None))


def conns_down(views: Views) -> None:
    pushed(views, up=1, total=2, down_since=90.0)


def dark(views: Views) -> None:
    views.feed.set(FeedStatus(last_push_at=20.0, conns_up=0, conns_total=2, down_since=20.0))


def refusing(views: Views) -> None:
    views.redis.set(RedisStatus(up=True, error=None, refused=OOM))


def redis_down_refused_before(views: Views) -> None:
    views.redis.set(RedisStatus(up=False, error="ConnectionError: refused", refused=OOM))


def redis_down(views: Views) -> None:
    views.redis.set(RedisStatus(up=False, error="ConnectionError: refused"))


def no_symbols(views: Views) -> None:
    views.universe.set(UniverseStatus(symbols=0, chunks=0, error=CONTRACTS_DOWN))


def refresh_failed(views: Views) -> None:
    """A later read failed: the symbols of the last good one are still streamed."""
    views.universe.set(views.universe.value._replace(error=CONTRACTS_DOWN))


DOWN_10S = "1 of 2 connections down, the longest for 10s"
DARK_80S = "2 of 2 connections down, the longest for 80s"


@pytest.mark.parametrize(
    ("setups", "code", "status", "redis", "problems"),
    [
        pytest.param([fresh], 200, "ok", "up", None, id="ok"),
        pytest.param([fresh, redis_down], 200, "ok", "down", ["redis: ConnectionError: refused"],
                     id="redis-down-alone-stays-ok"),
        pytest.param([fresh, refresh_failed], 200, "ok", "up", [CONTRACTS_DOWN],
                     id="refresh-failed-with-symbols-stays-ok"),
        pytest.param([fresh, refusing], 200, "degraded", "degraded",
                     [f"redis refuses writes: {OOM}"], id="redis-refuses"),
        pytest.param([fresh, redis_down_refused_before], 200, "ok", "down",
                     ["redis: ConnectionError: refused"], id="redis-down-wins-over-refused"),
        pytest.param([conns_down], 200, "degraded", "up", [DOWN_10S], id="conn-down"),
        pytest.param([rest_failover, refusing], 200, "degraded", "degraded",
                     ["no push for 80s", DARK_80S, f"redis refuses writes: {OOM}"],
                     id="rest-failover-and-refused"),
        pytest.param([dark, refusing], 503, "stale", "degraded",
                     ["no push for 80s", DARK_80S, f"redis refuses writes: {OOM}"],
                     id="stale-beats-degraded"),
        pytest.param([conns_down, refusing, no_symbols], 503, "stale", "degraded",
                     [DOWN_10S, CONTRACTS_DOWN, f"redis refuses writes: {OOM}"],
                     id="no-symbols-beats-degraded"),
    ],
)  # fmt: skip
async def test_stale_beats_degraded_beats_ok_and_every_reason_is_listed(
    autojump_clock: trio.testing.MockClock,
    setups: list[Callable[[Views], None]],
    code: int,
    status: str,
    redis: str,
    problems: list[str] | None,
) -> None:
    views = tracking()
    views.redis.set(RedisStatus(up=True, error=None))
    with trio.fail_after(200):
        await trio.sleep_until(100.0)
        for setup in setups:
            setup(views)
        got_code, body = health_report(views, trio.current_time(), 60.0)
    assert (got_code, body["status"], body["redis"], body.get("problems")) == (
        code,
        status,
        redis,
        problems,
    )


# --- the window actor keeps `down_since` -----------------------------------------------------


async def test_the_window_keeps_since_when_the_longest_down_connection_is_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](10)
    events_send, _events_recv = trio.open_memory_channel[list[MarketData]](10)
    feed = Latest(FeedStatus(last_push_at=None, conns_up=0, conns_total=0))

    async def at(t: float, status: ConnStatus) -> tuple[int, int, float | None]:
        await trio.sleep_until(t)
        await inbox_send.send(status)
        await trio.testing.wait_all_tasks_blocked()
        return feed.value.conns_up, feed.value.conns_total, feed.value.down_since

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await start_window(nursery, inbox_recv, events_send, lookback_min=15, feed=feed)
            # Each chunk starts down (the connection actor says so before its first attempt).
            assert await at(1.0, ConnStatus(conn_id=0, up=False)) == (0, 1, 1.0)
            assert await at(2.0, ConnStatus(conn_id=1, up=False)) == (0, 2, 1.0)
            # Chunk 1 was never up since it started: down since 2.0.
            assert await at(3.0, ConnStatus(conn_id=0, up=True)) == (1, 2, 2.0)
            assert await at(4.0, ConnStatus(conn_id=1, up=True)) == (2, 2, None)
            assert await at(5.0, ConnStatus(conn_id=0, up=False)) == (1, 2, 5.0)
            # Another "down" for a connection already down keeps when the outage began.
            assert await at(6.0, ConnStatus(conn_id=0, up=False)) == (1, 2, 5.0)
            assert await at(7.0, ConnStatus(conn_id=1, up=False)) == (0, 2, 5.0)
            # A retired chunk leaves: the remaining one has been down since 7.0.
            assert await at(8.0, ConnStatus(conn_id=0, up=False, retired=True)) == (0, 1, 7.0)
            assert await at(9.0, ConnStatus(conn_id=1, up=True)) == (1, 1, None)
            assert await at(10.0, ConnStatus(conn_id=1, up=True, retired=True)) == (0, 0, None)
            nursery.cancel_scope.cancel()


async def test_a_connection_reported_down_by_the_window_degrades_health_exactly_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = tracking()
    views.redis.set(RedisStatus(up=True, error=None))
    client = client_for(views)
    inbox_send, inbox_recv = trio.open_memory_channel[WindowInbox](10)
    events_send, events_recv = trio.open_memory_channel[list[MarketData]](10)
    kline = Kline(
        symbol="A_USDT",
        t=M,
        open=1.0,
        high=1.0,
        low=1.0,
        close=1.0,
        volume=1.0,
        amount=1.0,
        ts_ms=(M + 1) * 1000,
    )
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await start_window(nursery, inbox_recv, events_send, lookback_min=15, feed=views.feed)
            await inbox_send.send(ConnStatus(conn_id=0, up=False))  # the chunk starts
            await trio.sleep_until(1.0)
            await inbox_send.send(ConnStatus(conn_id=0, up=True))
            await inbox_send.send(kline)
            await events_recv.receive()
            assert (await get(client, "/health"))[1]["status"] == "ok"

            await trio.sleep_until(20.0)
            await inbox_send.send(ConnStatus(conn_id=0, up=False))
            await trio.sleep_until(20.0 + CONN_DOWN_GRACE_S - 0.001)
            assert (await get(client, "/health"))[1]["status"] == "ok"
            await trio.sleep_until(20.0 + CONN_DOWN_GRACE_S)
            status, body = await get(client, "/health")
            assert (status, body["status"]) == (200, "degraded")
            assert body["problems"] == ["1 of 1 connections down, the longest for 5s"]

            await trio.sleep_until(30.0)
            await inbox_send.send(ConnStatus(conn_id=0, up=True))
            await trio.testing.wait_all_tasks_blocked()
            status, body = await get(client, "/health")
            assert (status, body["status"], "problems" in body) == (200, "ok", False)
            nursery.cancel_scope.cancel()


# --- the ranking actor never sends an empty ranking -----------------------------------------


async def test_a_round_without_data_is_neither_published_nor_replaces_the_last_ranking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = SymbolStat(symbol="A_USDT", change_pct=2.0, price=10.0)
    b = SymbolStat(symbol="B_USDT", change_pct=-1.0, price=20.0)
    answers: list[tuple[SymbolStat, ...]] = [(), (), (a, b), (), (), (a,)]
    req_send, req_recv = trio.open_memory_channel[WindowInbox](4)
    out_send, out_recv = trio.open_memory_channel[PublisherInbox](10)
    snapshot: Latest[Ranking | None] = Latest(None)
    metrics = Metrics()
    sent: list[tuple[float, PublisherInbox]] = []
    seen: list[tuple[float, Ranking | None]] = []
    lines: list[tuple[float, str]] = []
    sink = logger.add(
        lambda message: lines.append((trio.current_time(), message.record["message"])),
        level="INFO",
        filter=lambda record: record["extra"].get("actor") == "ranking",
    )

    async def window() -> None:
        async for request in req_recv:
            assert isinstance(request, StatsRequest)
            async with request.reply:
                await request.reply.send(answers.pop(0))
            await trio.testing.wait_all_tasks_blocked()
            seen.append((trio.current_time(), snapshot.value))

    async def publisher() -> None:
        async for item in out_recv:
            sent.append((trio.current_time(), item))

    try:
        with trio.fail_after(100):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(window)
                nursery.start_soon(publisher)
                await nursery.start(
                    partial(
                        run_ranking,
                        req_send,
                        out_send,
                        snapshot=snapshot,
                        metrics=metrics,
                        interval_s=10.0,
                        top_n=5,
                        lookback_min=15,
                        wall=lambda: W0 + trio.current_time(),
                    )
                )
                await trio.sleep_until(65.0)
                nursery.cancel_scope.cancel()
    finally:
        logger.remove(sink)
    first = Ranking(wall_ts=W0 + 30.0, lookback_min=15, gainers=(a, b), losers=(b, a), ranked=2)
    last = Ranking(wall_ts=W0 + 60.0, lookback_min=15, gainers=(a,), losers=(a,), ranked=1)
    assert sent == [(30.0, first), (60.0, last)]
    # /top5's snapshot: nothing before the first ranking with data, which it keeps after.
    assert seen == [(10.0, None), (20.0, None), (30.0, first), (40.0, first), (50.0, first),
                    (60.0, last)]  # fmt: skip
    assert metrics.registry.get_sample_value("screener_rankings_total") == 2
    empty = "ranking: no symbol has data in the window; nothing published"
    assert [(t, text) for t, text in lines if text != "ranking"] == [(10.0, empty), (40.0, empty)]
