"""The example consumers (examples/) as real processes against a real redis-server fed by the
service over loopback: what they print is what was published, and the stream consumer
resumes where it left off, its unacknowledged entries first. The candle consumer is fed
`candle` documents written here, as the service's publish script writes them: it orders
each symbol's series by candle_ts, a repaired minute arriving late included, reports the
hole that stays open and ignores a duplicate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from screener.core.models import CANDLE_REST_SOURCE, LIVE_SOURCE, ClosedCandle
from tests.system.service_harness import counter, eventually, running, simulator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run_example(script: str, port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, str(EXAMPLES / script), "--port", str(port), "--validate", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


def fields(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


async def test_pubsub_example_prints_each_published_event(redis_server: RedisServer) -> None:
    reader = redis_server.client()
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def consume() -> None:
        done.append(await run_example("consume_pubsub.py", redis_server.port, "--count", "6"))

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await eventually(
                    lambda: (
                        reader.pubsub_numsub("market_data", "top_movers")
                        == [(b"market_data", 1), (b"top_movers", 1)]
                    ),
                    what="the example subscribed",
                )
                async with (
                    simulator(SimConfig(symbols=3, rate_per_s=0)) as (ex, sim),
                    running(sim, redis_server.port) as (svc, _),
                ):
                    await eventually(lambda: counter(svc, "screener_subscriptions") == 3)
                    pushed = [await ex.push(s) for s in ex.live_symbols]
                    await eventually(lambda: bool(done), what="the example exited")
    finally:
        reader.close()
    [result] = done
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    market = [line for line in lines if line.startswith("market_data ")]
    movers = [line for line in lines if line.startswith("top_movers ")]
    assert len(lines) == 6
    assert [
        (line.split()[1], int(fields(line)["ts"]), float(fields(line)["close"])) for line in market
    ] == [(p["symbol"], p["ts"], p["data"]["c"]) for p in pushed]
    assert len(movers) == 3
    for line in movers:
        ranked = fields(line)["gainers"].split(",") + fields(line)["losers"].split(",")
        assert set(ranked) <= set(ex.live_symbols), line


async def test_stream_example_acknowledges_and_resumes_after_a_restart(
    redis_server: RedisServer,
) -> None:
    reader, port = redis_server.client(), redis_server.port
    group = ["--stream", "market_data", "--group", "g", "--consumer", "c1"]
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=5, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port, PUBLISH_MODE="stream", STREAM_MAXLEN="1000") as (
                    svc,
                    _,
                ),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 5)
                pushed = [await ex.push(s) for s in ex.live_symbols]
                await eventually(lambda: reader.xlen("market_data") == 5)
            ids = [entry_id.decode() for entry_id, _ in reader.xrange("market_data")]
            # A consumer that received the first entry and crashed before acknowledging it.
            reader.xgroup_create("market_data", "g", id="0")
            reader.xreadgroup("g", "c1", {"market_data": ">"}, count=1)
            first = await run_example("consume_stream.py", port, *group, "--count", "3")
            second = await run_example("consume_stream.py", port, *group, "--count", "2")
            pending: Any = reader.xpending("market_data", "g")
    finally:
        reader.close()
    for result in (first, second):
        assert result.returncode == 0, result.stderr.decode()
    printed = [first.stdout.decode().splitlines(), second.stdout.decode().splitlines()]
    assert [[line.split()[:3] for line in run] for run in printed] == [
        [["market_data", i, "market_data"] for i in ids[:3]],
        [["market_data", i, "market_data"] for i in ids[3:]],
    ]
    assert [line.split()[3] for run in printed for line in run] == [p["symbol"] for p in pushed]
    assert pending["pending"] == 0


T = 1_795_722_060  # a whole minute, unix seconds


def candle(symbol: str, minute: int, source: str = LIVE_SOURCE) -> bytes:
    """The `candle` document of `symbol`'s minute `T + 60 * minute`, closed a few ms after
    its end (later for a repair)."""
    t = T + 60 * minute
    close = 1.0 + minute / 100
    closed = ClosedCandle(symbol, t, 1.0, close, 1.0, close, 7.0, 7.5, source, (t + 60) * 1000)
    delay_ms = 200 if source == LIVE_SOURCE else 65_000
    return orjson.dumps(closed.as_dict((t + 60) * 1000 + delay_ms))


# What arrives on the channel, in that order: A's minute 2 is repaired (REST kline) after its
# minutes 3 and 4 closed live; minute 4 comes twice (a resend); minute 5 never comes back in
# time: A closes 3 minutes past it (--gap-min 3), then its repair arrives after all.
ARRIVALS = [
    candle("A_USDT", 0),
    candle("B_USDT", 0),
    candle("A_USDT", 1),
    candle("B_USDT", 1),
    candle("A_USDT", 3),
    candle("A_USDT", 4),
    candle("A_USDT", 2, CANDLE_REST_SOURCE),
    candle("B_USDT", 2),
    candle("A_USDT", 4),
    candle("A_USDT", 6),
    candle("A_USDT", 7),
    candle("A_USDT", 8),
    candle("A_USDT", 5, CANDLE_REST_SOURCE),
]


def expected_lines() -> list[str]:
    def said(kind: str, symbol: str, minute: int, source: str = LIVE_SOURCE) -> str:
        close = 1.0 + minute / 100
        return f"{kind} {symbol} candle_ts={T + 60 * minute} close={close!r} source={source}"

    return [
        said("candle", "A_USDT", 0),
        said("candle", "B_USDT", 0),
        said("candle", "A_USDT", 1),
        said("candle", "B_USDT", 1),
        said("candle", "A_USDT", 2, CANDLE_REST_SOURCE),
        said("candle", "A_USDT", 3),
        said("candle", "A_USDT", 4),
        said("candle", "B_USDT", 2),
        f"duplicate A_USDT candle_ts={T + 240}",
        f"missing A_USDT candle_ts={T + 300}",
        said("candle", "A_USDT", 6),
        said("candle", "A_USDT", 7),
        said("candle", "A_USDT", 8),
        said("late", "A_USDT", 5, CANDLE_REST_SOURCE),
    ]


async def test_candles_example_keeps_each_series_in_candle_ts_order(
    redis_server: RedisServer,
) -> None:
    publisher = redis_server.client()
    args = ["--gap-min", "3", "--count", str(len(ARRIVALS))]
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def consume() -> None:
        done.append(await run_example("consume_candles.py", redis_server.port, *args))

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                await eventually(
                    lambda: publisher.pubsub_numsub("candles") == [(b"candles", 1)],
                    what="the example subscribed",
                )
                for document in ARRIVALS:
                    assert publisher.publish("candles", document) == 1
    finally:
        publisher.close()
    [result] = done
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == expected_lines()


async def test_candles_example_reads_the_stream_alike(redis_server: RedisServer) -> None:
    writer = redis_server.client()
    try:
        for document in ARRIVALS:
            writer.xadd("candles", {"data": document})
    finally:
        writer.close()
    args = ["--stream", "--start", "0", "--gap-min", "3", "--count", str(len(ARRIVALS))]
    with trio.fail_after(30):
        result = await run_example("consume_candles.py", redis_server.port, *args)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == expected_lines()
