"""The universe over loopback: filter, whitelist, refresh by difference, REST trouble."""

from __future__ import annotations

import copy

import trio
from loguru import logger

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from tests.system.service_harness import counter, eventually, running, simulator


async def test_refresh_subscribes_and_unsubscribes_only_the_difference(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=10, rate_per_s=0)) as (ex, sim),
            running(sim, redis_server.port, CONTRACTS_REFRESH_S="0.3") as (_svc, http),
        ):
            await eventually(lambda: ex.sub_requests == 10)
            before = set(ex.live_symbols)
            gone = sorted(before)[0]
            row = next(r for r in ex.contracts if r["symbol"] == gone)
            new_row = copy.deepcopy(row) | {"symbol": "NEWCOIN_USDT"}
            row["state"] = 3  # delisted
            ex.contracts.append(new_row)
            await eventually(
                lambda: ex.unsub_requests == 1 and ex.sub_requests == 11,
                what="one unsub, one new sub",
            )
            [subscribed] = ex.subscriptions.values()
            assert subscribed == (before - {gone}) | {"NEWCOIN_USDT"}
            await trio.sleep(0.7)  # two more refreshes: nothing changes, nothing resent
            assert (ex.sub_requests, ex.unsub_requests) == (11, 1)
            assert ex.connects_total == 1
            assert (await http.get("/health")).json()["symbols"] == 10


async def test_whitelist_restricts_and_unknown_symbols_are_logged_once(
    redis_server: RedisServer,
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=10, rate_per_s=0)) as (ex, sim),
                running(
                    sim,
                    redis_server.port,
                    CONTRACTS_REFRESH_S="0.2",
                    SYMBOL_WHITELIST="BTC_USDT,ETH_USDT,NOPE_USDT,ETH_USDC",
                ) as (_svc, _),
            ):
                await eventually(lambda: ex.sub_requests == 2)
                await trio.sleep(0.5)
                assert set().union(*ex.subscriptions.values()) == {"BTC_USDT", "ETH_USDT"}
    finally:
        logger.remove(sink)
    unknown = [line for line in lines if "whitelisted symbol" in line]
    assert sorted(unknown) == [
        "whitelisted symbol ETH_USDC is not a live USDT perpetual; skipped\n",
        "whitelisted symbol NOPE_USDT is not a live USDT perpetual; skipped\n",
    ]


async def test_contract_list_failure_is_retried_and_reported_in_health(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(30):
        async with simulator(SimConfig(symbols=3, rate_per_s=30)) as (ex, sim):
            ex.rest_fault = "500"
            async with running(sim, redis_server.port) as (svc, http):
                await eventually(lambda: ex.rest_requests >= 1)
                await eventually(lambda: svc.views.universe.value.error is not None)
                body = (await http.get("/health")).json()
                assert body["status"] == "stale"
                assert any("contract list unavailable" in p for p in body["problems"])
                assert counter(svc, "screener_rest_errors_total", endpoint="contract_detail") >= 1
                ex.rest_fault = None
                await eventually(lambda: svc.views.universe.value.symbols == 3, within_s=15)
                await eventually(lambda: svc.views.feed.value.last_push_at is not None)
                body = (await http.get("/health")).json()
                assert body["status"] == "ok"
                assert "problems" not in body


async def test_max_symbols_bounds_the_universe(redis_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with (
            simulator(SimConfig(symbols=10, rate_per_s=200)) as (ex, sim),
            running(sim, redis_server.port, MAX_SYMBOLS="4") as (svc, http),
        ):
            await eventually(lambda: ex.sub_requests == 4)
            assert set().union(*ex.subscriptions.values()) == set(sorted(ex.live_symbols)[:4])
            assert (await http.get("/health")).json()["symbols"] == 4
            await eventually(
                lambda: counter(svc, "screener_events_published_total", channel="market_data") > 20
            )
            metrics = (await http.get("/metrics")).text
            assert 'screener_queue_peak{queue="ingest"}' in metrics
            assert counter(svc, "screener_queue_peak", queue="ingest") >= 1
            assert counter(svc, "screener_queue_peak", queue="publish_buffer") >= 1
