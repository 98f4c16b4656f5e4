"""The whole service over loopback: simulator, real redis-server, real HTTP via hypercorn.
Real sockets and processes because these tests check what consumers see end to end: events
one to one with pushes, chunks across connections, /top5 against an independent ranking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from devtools.devredis import RedisServer, free_port
from devtools.simulator import SimConfig
from tests.system.service_harness import Subscriber, counter, eventually, running, simulator


async def test_450_symbols_on_3_connections_exactly_the_live_universe(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=450, rate_per_s=0)) as (ex, sim),
            running(sim, redis_server.port) as (svc, http),
        ):
            live = set(ex.live_symbols)
            assert len(live) == 450
            await eventually(
                lambda: sum(len(s) for s in ex.subscriptions.values()) == 450,
                what="all 450 subscribed",
            )
            chunks = list(ex.subscriptions.values())
            assert len(chunks) == 3
            assert all(len(c) <= 200 for c in chunks)
            assert set().union(*chunks) == live
            await eventually(lambda: svc.views.feed.value.conns_up == 3, what="3 up")
            health = (await http.get("/health")).json()
            assert health["connections"] == {"up": 3, "total": 3}
            assert health["symbols"] == 450
            await eventually(lambda: counter(svc, "screener_subscriptions") == 450)


async def test_redis_events_match_pushes_one_to_one(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server.port, "market_data")
    pushed: list[dict[str, Any]] = []
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=20, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port) as (svc, _),
            ):
                ex.on_push = pushed.append
                await eventually(lambda: svc.views.feed.value.conns_up == 1)
                await eventually(lambda: counter(svc, "screener_subscriptions") == 20)
                for _ in range(10):
                    for symbol in ex.live_symbols:
                        await ex.push(symbol)
                await eventually(lambda: len(sub.get("market_data")) == 200, what="200 events")
    finally:
        sub.close()
    events = sub.get("market_data")
    assert len(pushed) == 200
    key = lambda m: (m["symbol"], m["ts"], m["close"])  # noqa: E731
    assert sorted(key(e) for e in events) == sorted(
        (p["symbol"], p["ts"], p["data"]["c"]) for p in pushed
    )
    first = events[0]
    pushed_first = next(
        p for p in pushed if p["ts"] == first["ts"] and p["symbol"] == first["symbol"]
    )
    data = pushed_first["data"]
    assert first == {
        "type": "market_data",
        "source": "mexc",
        "symbol": data["symbol"],
        "interval": "Min1",
        "candle_ts": data["t"],
        "ts": pushed_first["ts"],
        "open": data["o"],
        "high": data["h"],
        "low": data["l"],
        "close": data["c"],
        "price": data["c"],
        "volume": data["q"],
        "amount": data["a"],
        "change_pct": first["change_pct"],
        "window_min": 1,
    }
    assert first["change_pct"] == (data["c"] / data["o"] - 1) * 100


async def test_top5_and_health_through_hypercorn(redis_server: RedisServer) -> None:
    sub = Subscriber(redis_server.port, "top_movers")
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=12, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port, TOP_N="3") as (svc, http),
            ):
                assert (await http.get("/top5")).status_code == 503
                assert (await http.get("/top5")).json() == {"error": "no data yet"}
                health = await http.get("/health")
                assert health.status_code == 503
                assert health.json()["status"] == "stale"
                assert health.json()["age"] is None
                await eventually(lambda: counter(svc, "screener_subscriptions") == 12)
                moves = {}
                for i, symbol in enumerate(ex.live_symbols):
                    candle = await ex.push(symbol)
                    base = candle["data"]["o"]
                    moves[symbol] = (i - 6) / 100
                    await ex.push(symbol, price=round(base * (1 + moves[symbol]), 8))
                await eventually(lambda: (svc.views.ranking.value or [0] * 5)[4] == 12)
                top = (await http.get("/top5")).json()
                health = await http.get("/health")
                assert health.status_code == 200
                assert health.json()["status"] == "ok"
                await eventually(lambda: len(sub.get("top_movers")) > 0)
    finally:
        sub.close()
    ranked = sorted(moves, key=lambda s: (-moves[s], s))
    assert [g["symbol"] for g in top["top5_gainers"]] == ranked[:3]
    assert [g["symbol"] for g in top["top5_losers"]] == ranked[::-1][:3]
    assert top["lookback_min"] == 15
    assert sub.get("top_movers")[-1]["lookback_min"] == 15
    for entry in top["top5_gainers"]:
        assert abs(entry["change_pct"] - moves[entry["symbol"]] * 100) < 0.01


async def test_reconnects_after_abrupt_drop_and_after_silence(redis_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=5, rate_per_s=50)) as (ex, sim),
            running(sim, redis_server.port, PING_INTERVAL_S="0.3") as (svc, http),
        ):
            await eventually(lambda: svc.views.feed.value.conns_up == 1)
            await ex.drop_all()
            await eventually(lambda: counter(svc, "screener_reconnects_total") == 1)
            await eventually(lambda: ex.connects_total == 2, what="reconnected after drop")
            await eventually(lambda: svc.views.feed.value.conns_up == 1)
            ex.silent = True
            await eventually(
                lambda: counter(svc, "screener_reconnects_total") == 2,
                what="silent socket declared dead",
            )
            ex.silent = False
            await eventually(lambda: ex.connects_total >= 3, what="reconnected after silence")
            before = counter(svc, "screener_messages_received_total")
            await eventually(lambda: counter(svc, "screener_messages_received_total") > before)
            assert (await http.get("/health")).status_code == 200


async def test_redis_down_at_start_then_up(tmp_path: Path) -> None:
    late = RedisServer(tmp_path)
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=3, rate_per_s=100)) as (_, sim),
                running(sim, late.port) as (svc, http),
            ):
                await eventually(lambda: svc.views.redis.value.error is not None)
                health = (await http.get("/health")).json()
                assert health["redis"] == "down"
                assert any("redis" in p for p in health["problems"])
                await eventually(lambda: svc.views.feed.value.last_push_at is not None)
                late.start()
                sub = Subscriber(late.port, "market_data")
                try:
                    await eventually(
                        lambda: len(sub.get("market_data")) > 10, what="publishing resumed"
                    )
                finally:
                    sub.close()
                assert (await http.get("/health")).json()["redis"] == "up"
    finally:
        late.stop()


async def test_unknown_route_is_json_404(redis_server: RedisServer) -> None:
    with trio.fail_after(20):
        async with (
            simulator(SimConfig(symbols=1, rate_per_s=0)) as (_, sim),
            running(sim, redis_server.port) as (_, http),
        ):
            r = await http.get("/nope")
            assert (r.status_code, r.json()) == (404, {"error": "not found"})
            r = await http.post("/top5")
            assert r.status_code == 405
            assert r.headers["content-type"] == "application/json"
            metrics = (await http.get("/metrics")).text
            assert "screener_messages_received_total" in metrics


def test_free_port_helper() -> None:
    assert 0 < free_port() < 65536


async def test_image_healthcheck_against_the_running_service(redis_server: RedisServer) -> None:
    """The Dockerfile's HEALTHCHECK command, as the container runs it, against this service:
    healthy throughout (it probes liveness), before any push and after STALE_AFTER_S of
    silence with REST down too; with `--ready` it follows readiness: unhealthy before any push
    and once stale, healthy in between."""

    async def healthcheck(port: int, *args: str) -> int:
        env = dict(os.environ) | {"WS_SCREENER_PORT": str(port)}
        done = await trio.run_process(
            [sys.executable, "-m", "screener.healthcheck", *args],
            env=env,
            capture_stdout=True,
            check=False,
            stderr=subprocess.DEVNULL,
        )
        return done.returncode

    with trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=3, rate_per_s=0)) as (ex, sim),
            running(
                sim, redis_server.port, STALE_AFTER_S="1.5", BACKFILL="off", FALLBACK_POLL_S="60"
            ) as (svc, _),
        ):
            port = svc.http_port
            assert (await healthcheck(port), await healthcheck(port, "--ready")) == (0, 1)
            await eventually(lambda: counter(svc, "screener_subscriptions") == 3)
            await ex.push(ex.live_symbols[0])
            await eventually(lambda: svc.views.feed.value.last_push_at is not None)
            # readiness first: it holds only for STALE_AFTER_S after that push
            assert (await healthcheck(port, "--ready"), await healthcheck(port)) == (0, 0)
            ex.rest_fault = "500"  # and no REST failover to fall back on
            await eventually(lambda: svc.views.push_age(trio.current_time()) >= 1.5)
            assert (await healthcheck(port), await healthcheck(port, "--ready")) == (0, 1)
