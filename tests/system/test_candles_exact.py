"""Closed candles through real processes, a real redis-server and the simulator, across the
faults that used to cost minutes: the leader frozen over one minute's end and killed over
another, the WebSocket refused across two minute ends, Redis restarted. Every (symbol,
minute) of the span is published exactly once, with the values the simulator's REST kline
endpoint holds for it (the exchange's final values).

These tests run on the wall clock (minute ends are real), so each takes two to four
minutes; the rules themselves are tested on MockClock in tests/unit/test_closing.py and
tests/actors/test_window_candles.py."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from devtools.devredis import RedisServer
from tests.system.fleet_harness import SETTLE_S, Fleet, Shape, open_fleet
from tests.system.service_harness import eventually

LOOKBACK_MIN = 3
CANDLES_ENV = {"BACKFILL": "on", "LOOKBACK_MIN": str(LOOKBACK_MIN), "CANDLE_GRACE_S": "5"}
# Each minute's candle comes within seconds of its end; a repaired one once REST answers.
ARRIVAL_S = 60.0


async def second_of_minute(second: float) -> int:
    """Sleep until the wall clock is `second` into a minute (the next such time); returns
    the open time of that minute."""
    now = time.time()
    minute = int(now // 60 * 60)
    if now - minute >= second:
        minute += 60
    await trio.sleep(minute + second - now)
    return minute


async def rest_rows(rest_url: str, symbol: str, start: int, end: int) -> dict[int, dict[str, Any]]:
    """The simulator's REST klines of `symbol` for open times `start`..`end`, by open time."""
    async with httpx.AsyncClient() as http:
        r = await http.get(
            f"{rest_url}/api/v1/contract/kline/{symbol}",
            params={"interval": "Min1", "start": start, "end": end},
        )
    cols = r.json()["data"]
    return {
        t: {
            "open": cols["open"][i],
            "high": cols["high"][i],
            "low": cols["low"][i],
            "close": cols["close"][i],
            "volume": cols["vol"][i],
            "amount": cols["amount"][i],
        }
        for i, t in enumerate(cols["time"])
    }


Candles = Callable[[], list[dict[str, Any]]]


async def assert_exactly_once(fleet: Fleet, candles_of: Candles, first: int, last: int) -> None:
    """Every symbol's minutes `first`..`last` (open times) published, each once, with the
    REST kline endpoint's values; no (symbol, minute) ever published twice."""
    symbols = sorted(fleet.ex.live_symbols)
    wanted = {(s, t) for s in symbols for t in range(first, last + 1, 60)}

    def published() -> set[tuple[str, int]]:
        return {(c["symbol"], c["candle_ts"]) for c in candles_of()}

    await eventually(
        lambda: wanted <= published(), within_s=ARRIVAL_S, what="every closed minute published"
    )
    candles = candles_of()
    rest_url = fleet.ex.address.rest_url
    counts = Counter((c["symbol"], c["candle_ts"]) for c in candles)
    assert [key for key, n in counts.items() if n > 1] == []
    for symbol in symbols:
        rows = await rest_rows(rest_url, symbol, first, last)
        got = {
            c["candle_ts"]: {k: c[k] for k in ("open", "high", "low", "close", "volume", "amount")}
            for c in candles
            if c["symbol"] == symbol and first <= c["candle_ts"] <= last
        }
        assert got == rows, symbol


async def test_a_leader_frozen_over_one_minute_end_and_killed_over_another_loses_no_candle(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shape = Shape(shards=1, replicas=2, symbols=6, rate_per_s=12.0, env=CANDLES_ENV)
    async with open_fleet(redis_server.port, tmp_path, shape) as fleet:
        first = int(time.time() // 60 * 60) + 60  # the first minute the fleet sees whole
        frozen_minute = await second_of_minute(55)
        leader = await fleet.leader_of(0)
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGSTOP)  # over the end of `frozen_minute`
        fleet.replicas.remove(leader)  # its HTTP does not answer while frozen
        await fleet.leader_of(0, within_s=SETTLE_S)
        await second_of_minute(15)
        leader.proc.send_signal(signal.SIGCONT)  # woken: fenced, whatever it closed
        fleet.replicas.append(leader)
        killed_minute = await second_of_minute(55)
        current = await fleet.leader_of(0)
        assert current.proc is not None
        current.proc.kill()
        fleet.replicas.remove(current)
        await fleet.leader_of(0, within_s=SETTLE_S)
        await second_of_minute(15)
        assert frozen_minute < killed_minute
        await assert_exactly_once(fleet, lambda: fleet.sub.get("candles"), first, killed_minute)


async def test_the_websocket_refused_over_two_minute_ends_then_a_redis_restart_loses_no_candle(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Pub/sub before the restart; after it, the stream (the subscriber reconnects late).
    env = {**CANDLES_ENV, "PUBLISH_MODE": "both"}
    shape = Shape(shards=1, replicas=1, symbols=6, rate_per_s=12.0, env=env)
    async with open_fleet(redis_server.port, tmp_path, shape) as fleet:
        first = int(time.time() // 60 * 60) + 60
        await second_of_minute(50)
        fleet.ex.refuse_handshake = True
        await fleet.ex.drop_all()
        await second_of_minute(5)
        outage_last = await second_of_minute(5)  # two minute ends passed in the outage
        fleet.ex.refuse_handshake = False
        await fleet.publishing("pushes again after the outage")
        await second_of_minute(50)
        redis_server.stop()
        await trio.sleep(0.5)  # what was published before reaches the subscriber
        before = fleet.sub.get("candles")
        restarted_minute = await second_of_minute(5)
        redis_server.start()  # empty: the records of what was published are gone too

        def candles() -> list[dict[str, Any]]:
            entries = redis_server.client().xrange("candles")
            return before + [orjson.loads(fields[b"data"]) for _, fields in entries]

        await second_of_minute(20)
        [replica] = fleet.replicas
        repaired = await replica.metric(fleet.http, "screener_candles_repaired_total")
        assert repaired >= 2 * 6, "the outage's minutes came from REST"
        await assert_exactly_once(fleet, candles, first, restarted_minute - 60)
        assert outage_last < restarted_minute
