"""The probes through Quart's in-process test client on MockClock: /livez follows the
heartbeat alone (exact times), /readyz is /health's verdict in short for every verdict.
Through hypercorn and the whole service: tests/system/test_probes.py."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from screener.core.models import (
    FeedStatus,
    FleetStatus,
    RedisStatus,
    RestFeedStatus,
    UniverseStatus,
)
from screener.core.snapshot import Views
from screener.http.probes import BEAT_PERIOD_S, LIVENESS_LIMIT_S, run_heartbeat
from tests.actors.fakes import client_for, get


async def test_livez_is_stalled_before_the_first_beat() -> None:
    with trio.fail_after(10):
        status, body = await get(client_for(Views.empty()), "/livez")
    assert (status, body) == (503, {"status": "stalled", "beat_age_s": None, "limit_s": 10.0})


async def test_livez_follows_the_beat_and_fails_once_it_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = Views.empty()
    client = client_for(views)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            beating = trio.CancelScope()

            async def heartbeat(task_status: trio.TaskStatus[None]) -> None:
                with beating:
                    await run_heartbeat(views.heartbeat, task_status=task_status)

            await nursery.start(heartbeat)
            assert views.heartbeat.value == 0.0
            await trio.sleep(2.5)
            assert views.heartbeat.value == 2 * BEAT_PERIOD_S  # the beats at 1 and 2
            assert await get(client, "/livez") == (
                200,
                {"status": "alive", "beat_age_s": 0.5, "limit_s": LIVENESS_LIMIT_S},
            )
            beating.cancel()  # the loop no longer runs the beat (a task hogs it, say)
        stopped = trio.current_time()
        assert views.heartbeat.value == 2.0
        await trio.sleep_until(2.0 + LIVENESS_LIMIT_S)
        assert (await get(client, "/livez"))[0] == 200  # at the limit itself: still alive
        await trio.sleep(0.25)
        assert await get(client, "/livez") == (
            503,
            {"status": "stalled", "beat_age_s": 10.25, "limit_s": LIVENESS_LIMIT_S},
        )
    assert stopped == 2.5


async def test_livez_ignores_the_exchange_redis_and_the_fleet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every dependency down, the fleet refused: /health and /readyz 503, /livez 200."""
    views = Views.empty()
    views.redis.set(RedisStatus(up=False, error="ConnectionError: refused"))
    views.universe.set(UniverseStatus(symbols=0, chunks=0, error="contract list unavailable"))
    views.fleet.set(refused_fleet())
    client = client_for(views)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_heartbeat, views.heartbeat)
            await trio.sleep(30)
            answers = [(await get(client, p))[0] for p in ("/livez", "/readyz", "/health")]
            nursery.cancel_scope.cancel()
    assert answers == [200, 503, 503]


def refused_fleet() -> FleetStatus:
    return FleetStatus(
        shard=0,
        shards=2,
        replica="screener-0",
        lease_s=5.0,
        role="standby",
        leader=None,
        term=0,
        error=None,
        leaderless_since=None,
        refused="FLEET_SHARDS=2 here, but the fleet on channel market_data runs FLEET_SHARDS=3",
    )


def fresh(views: Views) -> Views:
    views.universe.set(UniverseStatus(symbols=3, chunks=1, error=None))
    views.feed.set(FeedStatus(last_push_at=99.0, conns_up=1, conns_total=1))
    views.redis.set(RedisStatus(up=True, error=None))
    return views


def leader(**changes: object) -> FleetStatus:
    fleet = FleetStatus(
        shard=0,
        shards=1,
        replica="screener-0",
        lease_s=5.0,
        role="leader",
        leader="screener-0",
        term=1,
        error=None,
        leaderless_since=None,
        valid_until=200.0,
    )
    return fleet._replace(**changes)


def views_for(verdict: str) -> Views:
    """Snapshots at trio time 100 for which /health says `verdict`."""
    views = Views.empty()
    if verdict == "stale":
        return views
    fresh(views)
    if verdict == "degraded":
        views.feed.set(FeedStatus(last_push_at=10.0, conns_up=0, conns_total=1, down_since=10.0))
        views.rest.set(RestFeedStatus(active=True, last_ok_at=99.0, error=None))
    elif verdict == "redis-down":
        views.redis.set(RedisStatus(up=False, error="ConnectionError: refused"))
    elif verdict == "leader":
        views.fleet.set(leader())
    elif verdict == "standby":
        views.fleet.set(leader(role="standby", leader="screener-1", valid_until=float("-inf")))
    elif verdict == "refused":
        views.fleet.set(refused_fleet())
    elif verdict == "leaderless":
        views.fleet.set(leader(role="standby", leader=None, leaderless_since=80.0))
    return views


VERDICTS = [
    ("ok", "ok", True),
    ("leader", "ok", True),
    ("standby", "ok", True),
    ("redis-down", "ok", True),
    ("degraded", "degraded", True),
    ("stale", "stale", False),
    ("refused", "refused", False),
    ("leaderless", "leaderless", False),
]


@pytest.mark.parametrize(("case", "status", "ready"), VERDICTS, ids=[v[0] for v in VERDICTS])
async def test_readyz_is_the_health_verdict_in_short(
    autojump_clock: trio.testing.MockClock, case: str, status: str, ready: bool
) -> None:
    views = views_for(case)
    client = client_for(views)
    with trio.fail_after(200):
        await trio.sleep_until(100.0)
        health_code, health = await get(client, "/health")
        code, body = await get(client, "/readyz")
    expected = {"ready": ready, "status": status}
    if "problems" in health:
        expected["problems"] = health["problems"]
    assert (code, body) == (200 if ready else 503, expected)
    assert (health_code, health["status"]) == (code, status)


async def test_readyz_in_rest_mode_follows_the_rest_screener_health(
    autojump_clock: trio.testing.MockClock,
) -> None:
    views = fresh(Views.empty())
    client = client_for(views, 60.0, rest_mode=True)
    with trio.fail_after(200):
        await trio.sleep_until(100.0)
        assert await get(client, "/readyz") == (
            503,
            {"ready": False, "status": "stale", "problems": ["no REST data yet"]},
        )
