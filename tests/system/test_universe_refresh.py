"""The universe, the pool and a connection together over loopback: a refresh subscribes and
unsubscribes only the difference at the exchange. The universe's own logic (whitelist, the
MAX_SYMBOLS bound, retries of a failed read) is tested on MockClock in tests/actors/."""

from __future__ import annotations

import copy

import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from tests.system.service_harness import eventually, running, simulator


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
