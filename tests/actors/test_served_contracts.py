"""Every /health and /top5 answer the service can give, at exact virtual times, matches its
published JSON Schema: the HTTP app (Quart's in-process client, MockClock) is driven through
each state the snapshots can be in (fresh, stale, REST failover, a connection down, Redis
down or refusing, no symbols, `screener rest`), and each answer is checked as served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from screener.core.models import (
    BackfillProgress,
    FeedStatus,
    RedisStatus,
    RestFeedStatus,
    UniverseStatus,
)
from screener.core.snapshot import Views
from tests.actors.fakes import client_for, get
from tests.contracts import TOP5_RANKING, schema_errors
from tests.helpers import ranked

M = 1_770_330_480


def pushed_at(at: float, up: int = 2, total: int = 2, down_since: float | None = None) -> Any:
    def apply(views: Views) -> None:
        views.feed.set(
            FeedStatus(last_push_at=at, conns_up=up, conns_total=total, down_since=down_since)
        )

    return apply


def tracked(views: Views) -> None:
    views.universe.set(UniverseStatus(symbols=2, chunks=1, error=None))


def redis(up: bool, error: str | None = None, refused: str | None = None) -> Any:
    return lambda views: views.redis.set(RedisStatus(up=up, error=error, refused=refused))


def failover(last_ok_at: float | None, error: str | None = None) -> Any:
    return lambda views: views.rest.set(
        RestFeedStatus(active=True, last_ok_at=last_ok_at, error=error)
    )


def contract_list_down(views: Views) -> None:
    views.universe.set(
        UniverseStatus(symbols=0, chunks=0, error="contract list unavailable: HTTP 502")
    )


def filled(views: Views) -> None:
    views.backfill.set(BackfillProgress(done=2, total=2, failed=0, last_ok_at=95.0))


Step = Callable[[Views], None]
STATES: list[tuple[str, list[Step], bool, int]] = [
    # (name, snapshot changes, rest mode, the /health status code expected at t = 100)
    ("starting", [], False, 503),
    ("fresh", [tracked, pushed_at(99.0), redis(True), ranked], False, 200),
    ("stale", [tracked, pushed_at(10.0), redis(True), ranked], False, 503),
    ("failover-degraded", [tracked, pushed_at(10.0), failover(95.0), ranked], False, 200),
    (
        "failover-failing",
        [tracked, pushed_at(10.0), failover(None, "ticker: HTTP 500")],
        False,
        503,
    ),
    ("connection-down", [tracked, pushed_at(99.0, 1, 2, 80.0), redis(True), ranked], False, 200),
    (
        "redis-down",
        [tracked, pushed_at(99.0), redis(False, "ConnectionError: refused")],
        False,
        200,
    ),
    ("redis-refusing", [tracked, pushed_at(99.0), redis(True, None, "OOM command")], False, 200),
    ("no-symbols", [contract_list_down, pushed_at(99.0), ranked], False, 503),
    ("rest-fresh", [tracked, filled, redis(True), ranked], True, 200),
    ("rest-stale", [tracked, redis(True)], True, 503),
    (
        "everything-wrong",
        [contract_list_down, failover(None, "timeout"), redis(False, "x")],
        False,
        503,
    ),
]


@pytest.mark.parametrize(
    ("changes", "rest_mode", "code"), [s[1:] for s in STATES], ids=[s[0] for s in STATES]
)
async def test_health_answers_match_the_schema(
    autojump_clock: trio.testing.MockClock, changes: list[Step], rest_mode: bool, code: int
) -> None:
    views = Views.empty()
    for change in changes:
        change(views)
    client = client_for(views, 60.0, rest_mode=rest_mode)
    with trio.fail_after(200):
        await trio.sleep_until(100.0)
        status, body = await get(client, "/health")
    assert status == code, body
    assert schema_errors("health", body) == []
    assert (body["status"] == "stale") == (status == 503)


@pytest.mark.parametrize(
    ("changes", "rest_mode", "code"), [s[1:] for s in STATES], ids=[s[0] for s in STATES]
)
async def test_top5_answers_match_the_schema(
    autojump_clock: trio.testing.MockClock, changes: list[Step], rest_mode: bool, code: int
) -> None:
    views = Views.empty()
    for change in changes:
        change(views)
    client = client_for(views, 60.0, rest_mode=rest_mode)
    with trio.fail_after(200):
        await trio.sleep_until(100.0)
        status, body = await get(client, "/top5")
        _, health = await get(client, "/health")
    if views.ranking.value is None:
        assert (status, schema_errors("error", body)) == (503, [])
    else:
        assert status == 200
        assert schema_errors("top5", body) == []
        assert schema_errors(TOP5_RANKING, body) == []
        assert body["stale"] is (health["status"] == "stale")
