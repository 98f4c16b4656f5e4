"""Warm start and gap fill through the whole service over loopback: /top5 is right for the
full lookback at once from the simulator's kline history, and a connection back after a gap
refills its chunk. Real sockets because history and live pushes must agree as the simulator
serves them; the backfill actor's schedule is in tests/actors/test_backfill*.py."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from devtools.devredis import RedisServer
from devtools.simulator import SimAddress
from tests.kline_builders import M
from tests.system.frozen_clock import frozen_simulator, service
from tests.system.service_harness import counter, eventually


async def window_change(rest_url: str, symbol: str, lookback_min: int) -> float:
    """The change a correct window shows, recomputed from the simulator's own rows."""
    async with httpx.AsyncClient(base_url=rest_url) as client:
        body = (
            await client.get(
                f"/api/v1/contract/kline/{symbol}",
                params={"interval": "Min1", "start": M - (lookback_min - 1) * 60, "end": M},
            )
        ).json()["data"]
    assert body["time"][0] == M - (lookback_min - 1) * 60
    assert body["time"][-1] == M
    return (body["close"][-1] / body["open"][0] - 1.0) * 100.0


async def first_row_open(sim: SimAddress, symbol: str) -> float:
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        body = (
            await client.get(
                f"/api/v1/contract/kline/{symbol}",
                params={"interval": "Min1", "start": M - 14 * 60, "end": M - 14 * 60},
            )
        ).json()["data"]
    return float(body["open"][0])


async def test_warm_start_top5_is_right_for_the_full_lookback_at_once(
    redis_server: RedisServer,
) -> None:
    with trio.fail_after(20):
        async with (
            frozen_simulator(10) as (ex, sim),
            service(sim, redis_server.port, BACKFILL="on", TOP_N="3", REST_RATE_PER_S="50") as (
                svc,
                http,
            ),
        ):
            await eventually(
                lambda: svc.views.backfill.value[:3] == (10, 10, 0), what="backfill done"
            )
            await eventually(lambda: (svc.views.ranking.value or [0] * 5)[4] == 10)
            top = (await http.get("/top5")).json()
            expected = {s: await window_change(sim.rest_url, s, 15) for s in ex.live_symbols}
            ranked = sorted(expected, key=lambda s: (-expected[s], s))
            assert [g["symbol"] for g in top["top5_gainers"]] == ranked[:3]
            assert [g["symbol"] for g in top["top5_losers"]] == ranked[::-1][:3]
            for entry in top["top5_gainers"] + top["top5_losers"]:
                assert entry["change_pct"] == pytest.approx(expected[entry["symbol"]], abs=1e-9)
            health = await http.get("/health")
            assert health.json()["backfill"] == {"done": 10, "total": 10}
            assert health.json()["feed"] == "ws"
            assert counter(svc, "screener_rest_requests_total", endpoint="kline") == 10

            # A live push of the current minute wins over its history row.
            await eventually(lambda: counter(svc, "screener_subscriptions") == 10)
            symbol = ranked[-1]
            last = (await ex.push(symbol))["data"]["c"]  # a first live push of minute M
            pushed = await ex.push(symbol, price=round(last * 1.2, 8))
            await eventually(
                lambda: (svc.views.ranking.value or [0, 0, [None]])[2][0].symbol == symbol,
                what="the pushed symbol on top",
            )
            top = (await http.get("/top5")).json()
            first_open = await first_row_open(sim, symbol)
            assert top["top5_gainers"][0]["change_pct"] == pytest.approx(
                (pushed["data"]["c"] / first_open - 1) * 100, abs=1e-9
            )
            assert (await http.get("/health")).json()["status"] == "ok"


async def test_a_connection_back_after_a_gap_refills_its_chunk(redis_server: RedisServer) -> None:
    with trio.fail_after(30):
        async with (
            frozen_simulator(6) as (ex, sim),
            service(
                sim, redis_server.port, BACKFILL="on", BACKFILL_GAP_S="0.5", REST_RATE_PER_S="50"
            ) as (svc, _),
        ):
            await eventually(lambda: svc.views.backfill.value[:2] == (6, 6))
            await eventually(lambda: svc.views.feed.value.conns_up == 1)
            ex.refuse_handshake = True
            await ex.drop_all()
            await eventually(lambda: counter(svc, "screener_reconnects_total") >= 2)
            await trio.sleep(0.5)  # real time: the outage must outlast BACKFILL_GAP_S
            ex.refuse_handshake = False
            await eventually(
                lambda: svc.views.backfill.value[:2] == (12, 6 * 2), what="the chunk refilled"
            )
            assert svc.views.backfill.value.failed == 0
