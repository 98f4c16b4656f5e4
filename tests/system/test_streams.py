"""PUBLISH_MODE=stream|both: a consumer that goes away resumes from its last id, losing
nothing. A real redis-server because stream ids, MAXLEN and consumer resumption are Redis's
own behaviour."""

from __future__ import annotations

import orjson
import trio

from devtools.devredis import RedisServer
from devtools.simulator import SimConfig
from tests.system.service_harness import Subscriber, counter, eventually, running, simulator


async def test_stream_consumer_catches_up_after_a_disconnect(redis_server: RedisServer) -> None:
    reader = redis_server.client()
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=5, rate_per_s=0)) as (ex, sim),
                running(sim, redis_server.port, PUBLISH_MODE="both", STREAM_MAXLEN="1000") as (
                    svc,
                    _,
                ),
            ):
                await eventually(lambda: counter(svc, "screener_subscriptions") == 5)
                for symbol in ex.live_symbols:
                    await ex.push(symbol)
                await eventually(lambda: reader.xlen("market_data") == 5)
                first = reader.xrange("market_data")
                last_id = first[-1][0]
                # The consumer is gone while 20 more events are published.
                pushed = [await ex.push(s) for _ in range(4) for s in ex.live_symbols]
                await eventually(lambda: reader.xlen("market_data") == 25)
                caught_up = reader.xread({"market_data": last_id}, count=100)
                await eventually(lambda: len(sub.get("market_data")) == 25)
    finally:
        sub.close()
        reader.close()
    [(_, entries)] = caught_up
    events = [orjson.loads(fields[b"data"]) for _, fields in entries]
    assert [(e["symbol"], e["ts"], e["close"]) for e in events] == [
        (p["symbol"], p["ts"], p["data"]["c"]) for p in pushed
    ]


async def test_stream_only_mode_does_not_publish_on_pubsub(redis_server: RedisServer) -> None:
    reader = redis_server.client()
    sub = Subscriber(redis_server.port, "market_data")
    try:
        with trio.fail_after(30):
            async with (
                simulator(SimConfig(symbols=3, rate_per_s=100)) as (_, sim),
                running(sim, redis_server.port, PUBLISH_MODE="stream", STREAM_MAXLEN="1000"),
            ):
                await eventually(lambda: reader.xlen("market_data") > 20)
    finally:
        sub.close()
        reader.close()
    assert sub.get("market_data") == []
