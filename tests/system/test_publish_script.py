"""The publish script (screener/redis/script.py) on a real redis-server, through the
publisher's own link: the fence, the skip of pushes already published, Redis's memory
limit, refusals of single commands, NOSCRIPT. The last test holds the actor tests' fake
(`MemoryRedis.run_script`) to the same answers, call for call."""

from __future__ import annotations

import hiredis
import pytest
import trio
import trio.testing

from devtools.devredis import RedisServer
from screener.core.config import RedisSettings, load_settings
from screener.core.models import Fence, MarketData, Ranking
from screener.redis.batch import BatchResult, prepare_batch, send
from screener.redis.script import PUBLISHED_TTL_S, read_answer
from tests.actors.fakes import MemoryRedis, market_data
from tests.system.service_harness import Subscriber, eventually
from tests.system.test_redis_faults import OOM, memory_back, out_of_memory
from tests.system.test_redis_socket import open_link

RANK = Ranking(wall_ts=1000.0, lookback_min=15, gainers=(), losers=(), ranked=0)


def push(symbol: str, ts_ms: int) -> MarketData:
    return market_data(symbol, 1.0, ts_ms, t=60, volume=1.0, window_min=1)


def settings_for(server: RedisServer, mode: str = "pubsub") -> RedisSettings:
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(server.port), "PUBLISH_MODE": mode}
    return load_settings(env).redis


def keys(server: RedisServer, published: str) -> tuple[dict[bytes, bytes], int]:
    admin = server.client()
    try:
        return admin.hgetall(published), admin.pttl(published)
    finally:
        admin.close()


async def test_a_push_is_published_once_however_often_its_slice_is_sent(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server, "both")
    a1, b1, a2, a3 = push("A", 1), push("B", 1), push("A", 2), push("A", 3)
    sub = Subscriber(redis_server.port, "market_data")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            first = await send(link, prepare_batch(settings, [a1, b1, a2], None))
            again = await send(link, prepare_batch(settings, [a1, b1, a2], None))
            later = await send(link, prepare_batch(settings, [a2, a3], None))
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("market_data")) >= 4, what="four events")
        got = [(e["symbol"], e["ts"]) for e in sub.get("market_data")]
    finally:
        sub.close()
    assert (first.skipped, again.skipped, later.skipped) == (0, 3, 1)
    assert got == [("A", 1), ("B", 1), ("A", 2), ("A", 3)]
    admin = redis_server.client()
    assert admin.xlen("market_data") == 4
    admin.close()
    newest, ttl_ms = keys(redis_server, settings.published_key)
    assert newest == {b"A": b"3", b"B": b"1"}
    assert 0 < ttl_ms <= PUBLISHED_TTL_S * 1000


async def test_a_write_whose_token_or_term_does_not_hold_the_lease_is_refused_whole(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server)
    admin = redis_server.client()
    sub = Subscriber(redis_server.port, "market_data")
    results: list[BatchResult] = []
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:

            async def write(ts: int, token: str, term: int) -> None:
                fence = Fence("lease", "term", token, term)
                results.append(
                    await send(link, prepare_batch(settings, [push("A", ts)], None, fence))
                )

            await write(1, "a#1", 1)  # no lease at all
            admin.set("lease", "b#2")
            admin.set("term", 2)
            await write(2, "a#1", 1)  # another holder
            await write(3, "b#2", 1)  # the holder's token under an older term
            await write(4, "b#2", 2)  # the holder
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("market_data")) >= 1, what="the holder's event")
        got = [e["ts"] for e in sub.get("market_data")]
    finally:
        sub.close()
        admin.close()
    assert [(r.fenced, r.holder) for r in results] == [
        (True, None),
        (True, "b#2"),
        (True, "b#2"),
        (False, None),
    ]
    assert got == [4]
    assert keys(redis_server, settings.published_key)[0] == {b"A": b"4"}


async def test_under_redis_memory_limit_nothing_is_published_and_the_slice_is_held(
    redis_server: RedisServer,
) -> None:
    """PUBLISH takes no memory, but the record of what was published does: the script's
    first write fails, before any PUBLISH, so the slice is held whole and sent again."""
    settings = settings_for(redis_server)
    sub = Subscriber(redis_server.port, "market_data", "top_movers")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            out_of_memory(redis_server)
            held = await send(link, prepare_batch(settings, [push("A", 1), push("B", 1)], RANK))
            memory_back(redis_server)
            sent = await send(link, prepare_batch(settings, [push("A", 1), push("B", 1)], RANK))
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("top_movers")) == 1, what="the ranking")
        got = [e["symbol"] for e in sub.get("market_data")]
    finally:
        sub.close()
    assert held.held is not None
    assert (len(held.held.events), held.held.ranking) == (2, RANK)
    assert held.hold is not None
    assert held.hold.startswith(OOM.split(" ", 1)[0]), held.hold
    assert (sent.held, sent.skipped, sent.ranking_skipped) == (None, 0, False)
    assert got == ["A", "B"]


async def test_a_stream_key_of_another_type_drops_those_entries_and_pubsub_gets_them(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server, "both")
    admin = redis_server.client()
    admin.set("market_data", "not a stream")
    admin.close()
    sub = Subscriber(redis_server.port, "market_data")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            result = await send(link, prepare_batch(settings, [push("A", 1), push("B", 1)], None))
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("market_data")) == 2, what="both PUBLISHes")
    finally:
        sub.close()
    assert (result.refused, result.held, result.ranking_refused) == (2, None, False)
    assert result.refusal is not None
    assert result.refusal.startswith("WRONGTYPE ")


async def test_after_a_script_flush_the_slice_goes_with_the_source_once(
    redis_server: RedisServer,
) -> None:
    settings = settings_for(redis_server)
    admin = redis_server.client()
    sub = Subscriber(redis_server.port, "market_data", "top_movers")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            await send(link, prepare_batch(settings, [push("A", 1)], RANK))
            admin.script_flush()
            after = await send(link, prepare_batch(settings, [push("A", 2)], RANK))
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("market_data")) == 2, what="both events")
        rankings = len(sub.get("top_movers"))
    finally:
        sub.close()
        admin.close()
    assert after.skipped == 0
    assert after.ranking_skipped  # the same ranking: published once
    assert rankings == 1


@pytest.mark.parametrize("mode", ["pubsub", "both"])
async def test_the_actor_tests_fake_answers_as_redis_does(
    redis_server: RedisServer, mode: str
) -> None:
    """The same calls, fence and pushes varied, to redis-server and to `MemoryRedis`."""
    settings = settings_for(redis_server, mode)
    fake = MemoryRedis(trio.testing.MockClock())
    admin = redis_server.client()
    calls: list[tuple[list[MarketData], Ranking | None, Fence | None, bytes | None]] = [
        ([push("A", 1), push("B", 5)], None, None, None),
        ([push("A", 1), push("A", 2), push("B", 4)], RANK, None, None),
        ([push("C", 1)], RANK, Fence("lease", "term", "x#1", 1), b"y#1"),
        ([push("C", 1), push("A", 3)], None, Fence("lease", "term", "x#1", 1), b"x#1"),
        ([push("A", 3), push("C", 2)], RANK._replace(wall_ts=2000.0), None, None),
    ]
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            for events, ranking, fence, holder in calls:
                if holder is not None:
                    admin.set("lease", holder)
                    admin.set("term", 1)
                    fake.data[b"lease"], fake.data[b"term"] = holder, b"1"
                batch = prepare_batch(settings, events, ranking, fence)
                real = read_answer(await link.request(batch.with_source()))
                reader = hiredis.Reader()
                reader.feed(batch.payload)
                command = reader.gets()
                reader = hiredis.Reader()
                reader.feed(fake.run_script(0.0, command[3:6], command[6:])[1])
                assert read_answer(reader.gets()) == real
    finally:
        admin.close()
