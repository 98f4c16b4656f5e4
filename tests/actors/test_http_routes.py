"""HTTP routes /health, /top5 and /metrics through Quart's in-process test client on MockClock,
with the snapshots set by the test as the actors would, changing over virtual time (the tests
that do not depend on time run without the MockClock)."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from screener.core.metrics import Metrics
from screener.core.models import (
    BackfillProgress,
    FeedStatus,
    Ranking,
    RedisStatus,
    RestFeedStatus,
    SymbolStat,
    UniverseStatus,
)
from screener.core.snapshot import Views
from tests.actors.fakes import client_for, get, tracking

M = 1_770_330_480  # 2026-02-05 22:28:00 UTC


def push(views: Views) -> None:
    """What the window actor does on an accepted live push."""
    views.feed.set(views.feed.value._replace(last_push_at=trio.current_time()))


def polled(views: Views) -> None:
    """What the failover actor does after a successful ticker poll."""
    views.rest.set(RestFeedStatus(active=True, last_ok_at=trio.current_time(), error=None))


def ranking() -> Ranking:
    return Ranking(
        wall_ts=M + 0.7,
        lookback_min=15,
        gainers=(
            SymbolStat(symbol="A_USDT", change_pct=12.5, price=1.25),
            SymbolStat(symbol="B_USDT", change_pct=3.0, price=103.0),
        ),
        losers=(SymbolStat(symbol="C_USDT", change_pct=-4.25, price=0.0125),),
        ranked=3,
    )


RANKING_DOC = {
    "type": "top_movers",
    "ts_ms": round((M + 0.7) * 1000),
    "ts": "2026-02-05 22:28:00 UTC",
    "lookback_min": 15,
    "top5_gainers": [
        {"symbol": "A_USDT", "change_pct": 12.5, "price": 1.25},
        {"symbol": "B_USDT", "change_pct": 3.0, "price": 103.0},
    ],
    "top5_losers": [{"symbol": "C_USDT", "change_pct": -4.25, "price": 0.0125}],
    "shards": {"reporting": 1, "total": 1, "missing": []},
}


def scraped(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not in /metrics")


async def test_health_before_any_push_is_stale_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = client_for(Views.empty(), 60.0)
    with trio.fail_after(100):
        await trio.sleep_until(30.0)
        assert await get(client, "/health") == (
            503,
            {
                "status": "stale",
                "feed": "ws",
                "symbols": 0,
                "age": None,
                "connections": {"up": 0, "total": 0},
                "backfill": {"done": 0, "total": 0},
                "redis": "down",
                "candles": {"unpublished": 0, "owed": 0, "oldest": None, "lag_s": None},
                "problems": ["no push received yet", "no symbols tracked"],
            },
        )


@pytest.mark.parametrize(
    ("stale_after_s", "reason"),
    [(1.0, "no push for 1s"), (15.0, "no push for 15s"), (300.0, "no push for 300s")],
)
async def test_health_is_ok_after_a_push_and_stale_exactly_stale_after_the_last_one(
    autojump_clock: trio.testing.MockClock, stale_after_s: float, reason: str
) -> None:
    views = tracking()
    client = client_for(views, stale_after_s)
    with trio.fail_after(2000):
        await trio.sleep_until(10.0)
        push(views)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"], body["age"]) == (200, "ok", "ws", 0.0)
        assert "problems" not in body

        await trio.sleep_until(10.0 + stale_after_s - 0.25)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["age"]) == (200, "ok", stale_after_s - 0.25)

        await trio.sleep_until(10.0 + stale_after_s)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"]) == (503, "stale", "ws")
        assert body["age"] == stale_after_s
        assert body["problems"] == [reason]

        # A new push makes it fresh again and moves the deadline with it.
        await trio.sleep_until(20.0 + stale_after_s)
        push(views)
        await trio.sleep_until(20.0 + 2 * stale_after_s - 0.25)
        assert (await get(client, "/health"))[0] == 200
        await trio.sleep_until(20.0 + 2 * stale_after_s)
        assert (await get(client, "/health"))[0] == 503


@pytest.mark.parametrize(
    ("push_at", "age_at_61", "problems_at"),
    [
        (None, None, ("no push received yet", "no push received yet", "no push received yet")),
        (0.0, 61.0, ("no push for 61s", "no push for 141s", "no push for 141s")),
    ],
)
async def test_health_is_degraded_while_the_rest_failover_polls_fresh_then_stale(
    autojump_clock: trio.testing.MockClock,
    push_at: float | None,
    age_at_61: float | None,
    problems_at: tuple[str, str, str],
) -> None:
    views = tracking()
    client = client_for(views, 60.0)
    with trio.fail_after(500):
        if push_at is not None:
            push(views)
        await trio.sleep_until(60.0)  # the failover starts; no poll answered yet
        views.rest.set(RestFeedStatus(active=True, last_ok_at=None, error=None))
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"]) == (503, "stale", "rest")

        for t in (61.0, 71.0, 81.0):  # three polls answered, then they stop
            await trio.sleep_until(t)
            polled(views)
            if t == 61.0:
                status, body = await get(client, "/health")
                assert (status, body["status"], body["feed"]) == (200, "degraded", "rest")
                assert body["age"] == age_at_61
                assert body["problems"] == [problems_at[0]]

        await trio.sleep_until(81.0 + 59.75)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"]) == (200, "degraded", "rest")
        assert body["problems"] == [problems_at[1]]

        await trio.sleep_until(141.0)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"]) == (503, "stale", "rest")
        assert body["problems"] == [problems_at[2]]

        views.rest.set(views.rest.value._replace(error="REST ticker unavailable: ticker: x"))
        status, body = await get(client, "/health")
        assert body["problems"] == [problems_at[2], "REST ticker unavailable: ticker: x"]


async def test_health_lists_the_universe_and_redis_problems(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    client = client_for(views, 60.0)
    universe_error = "contract list unavailable: contract_detail: server: HTTP 502"
    with trio.fail_after(100):
        await trio.sleep_until(5.0)
        push(views)
        views.universe.set(UniverseStatus(symbols=0, chunks=0, error=universe_error))
        views.redis.set(RedisStatus(up=False, error="Connection refused"))
        status, body = await get(client, "/health")
        assert (status, body["status"], body["redis"]) == (503, "stale", "down")  # no symbols
        assert body["problems"] == [universe_error, "redis: Connection refused"]

        await trio.sleep_until(65.0)  # the feed's reason comes first
        status, body = await get(client, "/health")
        assert status == 503
        assert body["problems"] == ["no push for 60s", universe_error, "redis: Connection refused"]

        push(views)
        views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
        views.redis.set(RedisStatus(up=True, error="Connection refused"))  # an old error
        status, body = await get(client, "/health")
        assert (status, body["redis"]) == (200, "up")
        assert "problems" not in body


async def test_health_body_carries_connection_and_backfill_counters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    client = client_for(views, 60.0)
    with trio.fail_after(100):
        await trio.sleep_until(1.0)
        views.feed.set(FeedStatus(last_push_at=1.0, conns_up=3, conns_total=4))
        views.universe.set(UniverseStatus(symbols=250, chunks=4, error=None))
        views.backfill.set(BackfillProgress(done=7, total=250, failed=2, last_ok_at=1.0))
        views.redis.set(RedisStatus(up=True, error=None))
        await trio.sleep_until(3.5)
        assert await get(client, "/health") == (
            200,
            {
                "status": "ok",
                "feed": "ws",
                "symbols": 250,
                "age": 2.5,
                "connections": {"up": 3, "total": 4},
                "backfill": {"done": 7, "total": 250},
                "redis": "up",
                "candles": {"unpublished": 0, "owed": 0, "oldest": None, "lag_s": None},
            },
        )
        # Each request reads the latest snapshots.
        views.feed.set(FeedStatus(last_push_at=3.5, conns_up=2, conns_total=4))
        views.backfill.set(BackfillProgress(done=250, total=250, failed=2, last_ok_at=3.5))
        _, body = await get(client, "/health")
        assert (body["connections"], body["backfill"], body["age"]) == (
            {"up": 2, "total": 4},
            {"done": 250, "total": 250},
            0.0,
        )


async def test_rest_mode_is_ok_while_a_kline_fetch_succeeded_within_stale_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = tracking()
    client = client_for(views, 300.0, rest_mode=True)
    with trio.fail_after(1000):
        push(views)  # live pushes do not count in `screener rest`
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"], body["age"]) == (503, "stale", "rest", None)
        assert body["problems"] == ["no REST data yet"]

        await trio.sleep_until(20.0)
        views.backfill.set(BackfillProgress(done=1, total=5, failed=0, last_ok_at=20.0))
        status, body = await get(client, "/health")
        assert (status, body["status"], body["feed"], body["age"]) == (200, "ok", "rest", 0.0)
        assert "problems" not in body

        await trio.sleep_until(319.75)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["age"]) == (200, "ok", 299.75)

        await trio.sleep_until(320.0)
        status, body = await get(client, "/health")
        assert (status, body["status"], body["age"]) == (503, "stale", 300.0)
        assert body["problems"] == ["no REST data for 300s"]


@pytest.mark.parametrize(
    "latest",
    [None, Ranking(wall_ts=float(M), lookback_min=15, gainers=(), losers=(), ranked=0)],
    ids=["no-ranking", "nothing-ranked"],
)
async def test_top5_is_503_before_a_ranking_with_data(latest: Ranking | None) -> None:
    views = Views.empty()
    push(views)
    views.ranking.set(latest)
    with trio.fail_after(10):
        assert await get(client_for(views, 60.0), "/top5") == (503, {"error": "no data yet"})


async def test_top5_serves_the_ranking_and_says_when_the_feed_is_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = tracking()
    client = client_for(views, 60.0)
    with trio.fail_after(500):
        push(views)
        views.ranking.set(ranking())
        assert await get(client, "/top5") == (200, {**RANKING_DOC, "stale": False})

        await trio.sleep_until(59.75)
        assert await get(client, "/top5") == (200, {**RANKING_DOC, "stale": False})
        await trio.sleep_until(60.0)  # the ranking is still served, flagged stale
        assert await get(client, "/top5") == (200, {**RANKING_DOC, "stale": True})

        await trio.sleep_until(61.0)  # the REST failover feeds the windows: not stale
        polled(views)
        assert (await get(client, "/top5"))[1]["stale"] is False
        await trio.sleep_until(121.0)  # its polls stopped 60 s ago
        assert (await get(client, "/top5"))[1]["stale"] is True

        push(views)
        views.ranking.set(ranking()._replace(lookback_min=5, losers=()))
        assert await get(client, "/top5") == (
            200,
            {**RANKING_DOC, "lookback_min": 5, "top5_losers": [], "stale": False},
        )


async def test_top5_in_rest_mode_is_stale_by_the_last_kline_fetch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = tracking()
    client = client_for(views, 300.0, rest_mode=True)
    with trio.fail_after(1000):
        push(views)  # ignored in `screener rest`
        views.ranking.set(ranking())
        assert (await get(client, "/top5"))[1]["stale"] is True
        await trio.sleep_until(10.0)
        views.backfill.set(BackfillProgress(done=1, total=1, failed=0, last_ok_at=10.0))
        await trio.sleep_until(309.75)
        assert (await get(client, "/top5"))[1]["stale"] is False
        await trio.sleep_until(310.0)
        assert await get(client, "/top5") == (200, {**RANKING_DOC, "stale": True})


async def test_metrics_last_push_is_a_unix_time_computed_at_scrape_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    metrics = Metrics()
    metrics.watch_last_push(lambda: views.push_age(trio.current_time()))  # as `Service` does
    client = client_for(views, 60.0, metrics=metrics)
    with trio.fail_after(100):
        await trio.sleep_until(5.0)
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        text = await response.get_data(as_text=True)
        assert scraped(text, "screener_last_push_timestamp_seconds") == 0.0  # no push yet

        await trio.sleep_until(10.0)
        push(views)
        for now, age in ((25.5, 15.5), (70.0, 60.0)):  # nothing updates the gauge meanwhile
            await trio.sleep_until(now)
            before = time.time()
            text = await (await client.get("/metrics")).get_data(as_text=True)
            pushed_at = scraped(text, "screener_last_push_timestamp_seconds")
            assert before - age - 0.5 <= pushed_at <= time.time() - age


async def test_http_request_durations_are_counted_by_route() -> None:
    metrics = Metrics()
    client = client_for(Views.empty(), 60.0, metrics=metrics)
    with trio.fail_after(10):
        for path in ("/health", "/health", "/top5", "/nope", "/metrics"):
            await client.get(path)
    registry = metrics.registry
    for route, n in (("/health", 2), ("/top5", 1), ("other", 1), ("/metrics", 1)):
        count = registry.get_sample_value(
            "screener_http_request_duration_seconds_count", {"route": route}
        )
        assert count == n, route
