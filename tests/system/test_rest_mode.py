"""`screener rest` over loopback: the simulator's klines, a real redis-server, real HTTP.
Real processes and sockets because the REST screener's whole loop (poll, rank, publish,
serve) is the thing under test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio

from devtools.devredis import RedisServer
from devtools.simulator import FakeExchange, SimAddress, SimConfig
from screener.__main__ import build_parser
from screener.app import run_service
from screener.healthcheck import probe
from tests.system.service_harness import Subscriber, eventually, service_settings

M = 1_770_330_480
T0 = M + 30.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def rest_screener(
    redis_port: int, clock: Clock, **env: str
) -> AsyncIterator[tuple[FakeExchange, SimAddress, httpx.AsyncClient]]:
    exchange = FakeExchange(SimConfig(symbols=8, rate_per_s=0, extra_contracts=False), clock=clock)
    async with trio.open_nursery() as nursery:
        sim: SimAddress = await nursery.start(exchange.serve)
        settings = service_settings(
            sim, redis_port, REST_SCREENER_PORT="0", REST_RATE_PER_S="200", TOP_N="3", **env
        )
        svc = await nursery.start(partial(run_service, settings, mode="rest", wall=clock))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{svc.http_port}") as http:
            yield exchange, sim, http
        nursery.cancel_scope.cancel()


async def expected_changes(
    sim: SimAddress, symbols: list[str], interval: str, rows: int
) -> dict[str, float]:
    """Each symbol's change over the last `rows` candles, from the simulator's own rows."""
    step = {"Min1": 60, "Min5": 300}[interval]
    last = int(T0) // step * step
    out = {}
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        for symbol in symbols:
            params = {"interval": interval, "start": last - (rows - 1) * step, "end": last}
            data = (await client.get(f"/api/v1/contract/kline/{symbol}", params=params)).json()
            assert len(data["data"]["time"]) == rows
            out[symbol] = (data["data"]["close"][-1] / data["data"]["open"][0] - 1) * 100
    return out


def assert_ranking(top: dict[str, object], expected: dict[str, float]) -> None:
    ranked = sorted(expected, key=lambda s: (-expected[s], s))
    gainers, losers = top["top5_gainers"], top["top5_losers"]
    assert isinstance(gainers, list)
    assert isinstance(losers, list)
    assert [g["symbol"] for g in gainers] == ranked[:3]
    assert [g["symbol"] for g in losers] == ranked[::-1][:3]
    for entry in gainers + losers:
        assert entry["change_pct"] == pytest.approx(expected[entry["symbol"]], abs=1e-9)


@pytest.mark.parametrize(("interval", "mexc", "rows"), [("1m", "Min1", 15), ("5m", "Min5", 3)])
async def test_rest_screener_ranks_from_klines_and_follows_each_poll(
    redis_server: RedisServer, interval: str, mexc: str, rows: int
) -> None:
    sub = Subscriber(redis_server.port, "top_movers")
    clock = Clock()
    try:
        with trio.fail_after(20):
            async with rest_screener(
                redis_server.port, clock, INTERVAL=interval, REST_POLL_S="0.5"
            ) as (ex, sim, http):

                async def ranked_all() -> bool:
                    r = await http.get("/top5")
                    return r.status_code == 200 and len(r.json()["top5_gainers"]) == 3

                await eventually(ranked_all)
                symbols = ex.live_symbols
                await eventually(lambda: health_ok(http))
                top = (await http.get("/top5")).json()
                expected = await expected_changes(sim, symbols, mexc, rows)
                # A ranking may be cut while the first poll round is still fetching: wait for
                # the one made after every symbol arrived.
                await eventually(lambda: ranking_is(http, expected))
                top = (await http.get("/top5")).json()
                assert top["stale"] is False
                assert top["lookback_min"] == 15
                assert_ranking(top, expected)

                # The market moves; the next poll round sees it.
                mover = sorted(symbols)[0]
                candle = ex.candle(mover) or {"c": None}
                base = candle["c"] or (await ex.push(mover))["data"]["c"]
                await ex.push(mover, price=base * 1.3)

                async def mover_on_top() -> bool:
                    body = (await http.get("/top5")).json()
                    return bool(body["top5_gainers"][0]["symbol"] == mover)

                await eventually(mover_on_top)
                top = (await http.get("/top5")).json()
                assert_ranking(top, await expected_changes(sim, symbols, mexc, rows))
                health = (await http.get("/health")).json()
                assert health["feed"] == "rest"
                assert health["connections"] == {"up": 0, "total": 0}
                assert health["backfill"]["total"] >= 2 * len(symbols)
                assert ex.connects_total == 0  # no WebSocket at all
                await eventually(lambda: len(sub.get("top_movers")) > 0)
    finally:
        sub.close()
    assert sub.get("top_movers")[-1]["lookback_min"] == 15


async def ranking_is(http: httpx.AsyncClient, expected: dict[str, float]) -> bool:
    try:
        assert_ranking((await http.get("/top5")).json(), expected)
    except AssertionError:
        return False
    return True


async def health_ok(http: httpx.AsyncClient) -> bool:
    response = await http.get("/health")
    body = response.json()
    return response.status_code == 200 and body["status"] == "ok" and body["feed"] == "rest"


async def test_rest_screener_health_is_stale_without_rest_data(redis_server: RedisServer) -> None:
    clock = Clock()
    with trio.fail_after(20):
        async with rest_screener(redis_server.port, clock, REST_POLL_S="0.5") as (ex, _, http):
            ex.rest_fault = "500"
            response = await http.get("/health")
            assert response.status_code == 503
            body = response.json()
            assert (body["status"], body["feed"]) == ("stale", "rest")
            assert "no REST data yet" in body["problems"]
            env = {"REST_SCREENER_PORT": str(http.base_url.port), "WS_SCREENER_PORT": "1"}
            live_rest = partial(probe, env, rest=True)  # the image's probe: liveness
            ready_rest = partial(probe, env, rest=True, ready=True)
            assert (await trio.to_thread.run_sync(live_rest))[0] is True
            ready, line = await trio.to_thread.run_sync(ready_rest)
            assert (ready, line.endswith("/readyz: HTTP 503")) == (False, True)
            ex.rest_fault = None
            await eventually(lambda: health_ok(http))
            assert (await trio.to_thread.run_sync(ready_rest))[0] is True


def test_cli_has_the_rest_subcommand() -> None:
    assert build_parser().parse_args(["rest"]).command == "rest"
