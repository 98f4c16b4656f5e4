"""The publish script (screener/redis/script.py) on a real redis-server, through the
publisher's own link: the fence, the skip of pushes already published, Redis's memory
limit, refusals of single commands, NOSCRIPT, and closed candles (once per (symbol,
minute) whoever sends them, their keys' lifetime, the same fence and memory limit, their
stream). The last test holds the actor tests' fake (`MemoryRedis.run_script`) to the same
answers, call for call."""

from __future__ import annotations

import time
from typing import Any

import hiredis
import orjson
import pytest
import trio
import trio.testing

from devtools.devredis import RedisServer
from screener.core.config import RedisSettings, load_settings
from screener.core.models import (
    CANDLE_REST_SOURCE,
    LIVE_SOURCE,
    ClosedCandle,
    Fence,
    MarketData,
    Ranking,
)
from screener.redis.batch import BatchResult, prepare_batch, send
from screener.redis.script import PUBLISHED_TTL_S, read_answer
from tests.actors.fakes import MemoryRedis, market_data
from tests.system.service_harness import Subscriber, eventually
from tests.system.test_redis_faults import OOM, memory_back, out_of_memory
from tests.system.test_redis_socket import open_link

RANK = Ranking(wall_ts=1000.0, lookback_min=15, gainers=(), losers=(), ranked=0)


def push(symbol: str, ts_ms: int) -> MarketData:
    return market_data(symbol, 1.0, ts_ms, t=60, volume=1.0, window_min=1)


def candle(symbol: str, t: int, source: str = LIVE_SOURCE) -> ClosedCandle:
    """The closed candle of `symbol` opening at `t` (seconds), closed a few ms after."""
    return ClosedCandle(symbol, t, 1.0, 2.0, 0.5, 1.5, 10.0, 15.0, source, (t + 60) * 1000 + 7)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def check_documents(
    documents: list[dict[str, Any]], candles: list[ClosedCandle], since_ms: int
) -> None:
    """Each document is `as_dict` of its candle, published between `since_ms` and now."""
    assert [(d["symbol"], d["candle_ts"]) for d in documents] == [(c.symbol, c.t) for c in candles]
    for document, sent in zip(documents, candles, strict=True):
        assert since_ms <= document["published_ts"] <= wall_ms()
        assert document == sent.as_dict(document["published_ts"])


def candle_keys(server: RedisServer, prefix: str) -> dict[Any, int]:
    """Every candle key and its remaining lifetime in ms."""
    admin = server.client()
    try:
        return {key: admin.pttl(key) for key in admin.keys(prefix + "*")}
    finally:
        admin.close()


def stream_documents(admin: Any) -> list[dict[str, Any]]:
    """The documents of the candles' stream, oldest first."""
    return [orjson.loads(data[b"data"]) for _, data in admin.xrange("candles")]


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


WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


@pytest.mark.parametrize("mode", ["pubsub", "both"])
async def test_the_actor_tests_fake_answers_as_redis_does(
    redis_server: RedisServer, mode: str
) -> None:
    """The same calls, fence, pushes and candles varied, to redis-server and to
    `MemoryRedis`; the candles' stream key is not a stream there, so in "both" their XADDs
    are refused (message numbers of candles and ranking)."""
    settings = settings_for(redis_server, mode)
    fake = MemoryRedis(trio.testing.MockClock())
    fake.refuse = lambda c: WRONGTYPE if c[0] == b"XADD" and c[1] == b"candles" else None
    admin = redis_server.client()
    admin.set("candles", "not a stream")
    a0, b0, a1 = candle("A", 60), candle("B", 60), candle("A", 120, CANDLE_REST_SOURCE)
    Call = tuple[list[MarketData], Ranking | None, Fence | None, bytes | None, list[ClosedCandle]]
    calls: list[Call] = [
        ([push("A", 1), push("B", 5)], None, None, None, []),
        ([push("A", 1), push("A", 2), push("B", 4)], RANK, None, None, [a0]),
        ([push("C", 1)], RANK, Fence("lease", "term", "x#1", 1), b"y#1", [b0]),
        ([push("C", 1), push("A", 3)], None, Fence("lease", "term", "x#1", 1), b"x#1", [b0, a0]),
        ([push("A", 3), push("C", 2)], RANK._replace(wall_ts=2000.0), None, None, [a1, b0]),
        ([], None, Fence("lease", "term", "z#2", 1), b"z#2", [a0, a1, b0, candle("C", 60)]),
        ([], RANK._replace(wall_ts=3000.0), None, None, [a0]),
    ]
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            for events, ranking, fence, holder, candles in calls:
                if holder is not None:
                    admin.set("lease", holder)
                    admin.set("term", 1)
                    fake.data[b"lease"], fake.data[b"term"] = holder, b"1"
                batch = prepare_batch(settings, events, ranking, fence, candles)
                real = read_answer(await link.request(batch.with_source()))
                reader = hiredis.Reader()
                reader.feed(batch.payload)
                command = reader.gets()
                reader = hiredis.Reader()
                reader.feed(fake.run_script(0.0, command[3:6], command[6:])[1])
                assert read_answer(reader.gets()) == real
    finally:
        admin.close()


# --- closed candles ---------------------------------------------------------------------


async def test_a_candle_is_published_once_whichever_writer_sends_it_however_often(
    redis_server: RedisServer,
) -> None:
    """One leader writes two candles, sends them again, then another writer (a new token and
    term) sends them with a third: each (symbol, minute) goes out once, pub/sub and stream."""
    settings = settings_for(redis_server, "both")
    a0, b0, a1 = candle("A", 60), candle("B", 60, CANDLE_REST_SOURCE), candle("A", 120)
    admin = redis_server.client()
    sub = Subscriber(redis_server.port, "candles")
    since = wall_ms()
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:

            async def write(fence: Fence, candles: list[ClosedCandle]) -> BatchResult:
                admin.set("lease", fence.token)
                admin.set("term", fence.term)
                batch = prepare_batch(settings, [push("A", 1)], None, fence, candles)
                return await send(link, batch)

            first = await write(Fence("lease", "term", "a#1", 1), [a0, b0])
            again = await write(Fence("lease", "term", "a#1", 1), [a0, b0])
            other = await write(Fence("lease", "term", "b#2", 2), [b0, a1, a0])
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("candles")) >= 3, what="three candles")
        documents = sub.get("candles")
        streamed = stream_documents(admin)
    finally:
        sub.close()
        admin.close()
    assert (list(first.candles_published), first.candles_skipped) == ([a0, b0], 0)
    assert (list(again.candles_published), again.candles_skipped) == ([], 2)
    assert (list(other.candles_published), other.candles_skipped) == ([a1], 2)
    assert (first.skipped, again.skipped, other.skipped) == (0, 1, 1)  # the event, too
    check_documents(documents, [a0, b0, a1], since)
    assert streamed == documents


async def test_a_candle_key_lives_as_long_as_the_writer_says(redis_server: RedisServer) -> None:
    """Its key expires after the TTL; a candle sent after that would go out again (which is
    why the service's TTL outlives every hold of a candle)."""
    settings = settings_for(redis_server)
    a0 = candle("A", 60)
    sub = Subscriber(redis_server.port, "candles")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            first = await send(link, prepare_batch(settings, [], None, None, [a0], 300))
            lives = candle_keys(redis_server, settings.candle_key_prefix)
            with trio.fail_after(10):
                await eventually(
                    lambda: not candle_keys(redis_server, settings.candle_key_prefix),
                    what="the key's expiry",
                )
            after = await send(link, prepare_batch(settings, [], None, None, [a0], 300))
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("candles")) == 2, what="both candles")
    finally:
        sub.close()
    assert list(lives) == [b"candles:closed:A:60"]
    assert 0 < lives[b"candles:closed:A:60"] <= 300
    assert (len(first.candles_published), len(after.candles_published)) == (1, 1)


async def test_a_fenced_write_of_candles_writes_nothing(redis_server: RedisServer) -> None:
    settings = settings_for(redis_server, "both")
    admin = redis_server.client()
    admin.set("lease", "b#2")
    admin.set("term", 2)
    sub = Subscriber(redis_server.port, "candles")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            fenced = await send(
                link,
                prepare_batch(
                    settings, [], None, Fence("lease", "term", "a#1", 1), [candle("A", 60)]
                ),
            )
            assert not candle_keys(redis_server, settings.candle_key_prefix)
            assert admin.exists("candles") == 0
            # The holder's write, after: the only candle the subscriber ever gets.
            held = await send(
                link,
                prepare_batch(
                    settings, [], None, Fence("lease", "term", "b#2", 2), [candle("B", 60)]
                ),
            )
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("candles")) >= 1, what="the holder's candle")
        got = [d["symbol"] for d in sub.get("candles")]
    finally:
        sub.close()
        admin.close()
    assert (fenced.fenced, fenced.holder, list(fenced.candles_published)) == (True, "b#2", [])
    assert [c.symbol for c in held.candles_published] == ["B"]
    assert got == ["B"]
    assert list(candle_keys(redis_server, settings.candle_key_prefix)) == [b"candles:closed:B:60"]


async def test_under_redis_memory_limit_a_slice_of_candles_alone_is_held_whole(
    redis_server: RedisServer,
) -> None:
    """No event: a candle's key is the script's first write, refused before anything was
    written; once Redis has memory again the same slice goes out once."""
    settings = settings_for(redis_server, "both")
    candles = [candle("A", 60), candle("B", 60)]
    admin = redis_server.client()
    sub = Subscriber(redis_server.port, "candles")
    try:
        async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
            out_of_memory(redis_server)
            held = await send(link, prepare_batch(settings, [], None, None, candles))
            keys_then = candle_keys(redis_server, settings.candle_key_prefix)
            stream_then = admin.exists("candles")
            memory_back(redis_server)
            sent = await send(link, prepare_batch(settings, [], None, None, candles))
        with trio.fail_after(10):
            await eventually(lambda: len(sub.get("candles")) >= 2, what="both candles")
        got = [d["symbol"] for d in sub.get("candles")]
        streamed = admin.xlen("candles")
    finally:
        sub.close()
        admin.close()
    assert held.held is not None
    assert (list(held.held.candles), held.held.events, held.candles_published) == (candles, [], ())
    assert held.held.reason.startswith("OOM"), held.held.reason
    assert (keys_then, stream_then) == ({}, 0)
    assert (list(sent.candles_published), sent.held) == (candles, None)
    assert (got, streamed) == (["A", "B"], 2)


@pytest.mark.parametrize("mode", ["stream", "both"])
async def test_candles_go_to_the_candles_stream_by_publish_mode(
    redis_server: RedisServer, mode: str
) -> None:
    settings = settings_for(redis_server, mode)
    candles = [candle("A", 60), candle("A", 120, CANDLE_REST_SOURCE)]
    since = wall_ms()
    async with open_link(redis_server, PUBLISH_MODE=settings.mode) as link:
        result = await send(link, prepare_batch(settings, [push("A", 1)], RANK, None, candles))
    admin = redis_server.client()
    try:
        streamed = stream_documents(admin)
        events = admin.xlen("market_data")
    finally:
        admin.close()
    assert (list(result.candles_published), result.refused, result.ranking_skipped) == (
        candles,
        0,
        False,
    )
    check_documents(streamed, candles, since)
    assert events == 1
