"""The publisher's closed candles on MockClock over `MemoryRedis` (the publish script's candle
group in Python; the Lua on a real redis-server: tests/system/test_publish_script.py):
held while Redis is down or refuses and delivered once after, pruned by age, kept by a
standby and published at its takeover only where nobody did, sent by the final flush, put
back by a fenced write. Exact times, documents, metrics and the lag shown to /health."""

from __future__ import annotations

import math
import time
from typing import Any

import trio
import trio.testing

from actors.publisher import FINAL_FLUSH_S, Publisher
from screener.core.config import RedisSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import (
    CANDLE_REST_SOURCE,
    LIVE_SOURCE,
    CandleBatch,
    CandleLag,
    ClosedCandle,
    Fence,
    Leadership,
    PublisherInbox,
    RedisStatus,
)
from screener.core.snapshot import Latest
from tests.actors.fakes import M, MemoryRedis, market_data, threads_hold_clock
from tests.contracts import schema_errors
from tests.helpers import sample

SETTINGS: RedisSettings = load_settings({}).redis
STANDBY = Leadership("standby", -math.inf, 0)
OOM = "OOM command not allowed when used memory > 'maxmemory'."


def candle(symbol: str, minute: int, source: str = LIVE_SOURCE) -> ClosedCandle:
    """`symbol`'s candle opening `minute` minutes after M, closed a second ago by the wall
    clock (candle_delay is measured against it)."""
    closed_ms = time.time_ns() // 1_000_000 - 1000
    return ClosedCandle(symbol, M + 60 * minute, 1.0, 2.0, 0.5, 1.5, 3.0, 4.5, source, closed_ms)


def publisher(
    fake: MemoryRedis, *, fenced: bool = False, candle_hold_s: float = 900.0
) -> Publisher:
    return Publisher(
        SETTINGS,
        fake.link(),
        status=Latest(RedisStatus(up=True, error=None)),
        metrics=Metrics(),
        rand=lambda: 0.5,  # delays 0.25, 0.5, 1, 2, 4, ...
        fenced=fenced,
        hold_s=30.0,
        candle_ttl_s=1500.0,
        candle_hold_s=candle_hold_s,
        candle_lag=Latest(CandleLag()),
    )


def start(
    nursery: trio.Nursery, pub: Publisher, fake: MemoryRedis
) -> trio.MemorySendChannel[PublisherInbox]:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](64)
    nursery.start_soon(pub.collect, inbox_recv)
    nursery.start_soon(pub.flush, fake.ping)
    return inbox_send


def lead(fake: MemoryRedis, token: str, term: int, until: float) -> Leadership:
    """A lease answer making `token` leader until `until`, and Redis's keys saying so."""
    fake.data[b"lease"], fake.data[b"term"] = token.encode(), b"%d" % term
    return Leadership("leader", until, term, fence=Fence("lease", "term", token, term))


def delivered(fake: MemoryRedis) -> list[tuple[float, str, int]]:
    """Every candle Redis published: (time, symbol, open time), each document checked
    against the packaged schema."""
    documents(fake)
    return [(w.at, d["symbol"], d["candle_ts"]) for w in fake.delivered for d in w.candles]


def documents(fake: MemoryRedis) -> list[dict[str, Any]]:
    """Every candle document Redis published, each one valid against candle.schema.json."""
    docs = [d for w in fake.delivered for d in w.candles]
    assert [e for d in docs for e in schema_errors("candle", d)] == []
    return docs


def lag(pub: Publisher) -> CandleLag:
    assert pub.candle_lag is not None
    return pub.candle_lag.value


async def test_candles_wait_out_a_redis_outage_and_go_once_each_after(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """Never coalesced: two candles of one symbol both wait, with a third of another
    source; once Redis answers, each is published once, with its document as documented."""
    pub = publisher(fake)
    a0, a1 = candle("A", 0), candle("A", 1)
    b0 = candle("B", 0, CANDLE_REST_SOURCE)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            fake.state = "down"
            await inbox.send(CandleBatch([a0, b0]))
            await trio.sleep_until(1.0)
            await inbox.send(CandleBatch([a1]))
            await trio.sleep_until(5.0)
            assert lag(pub) == CandleLag(3, M)
            assert len(pub.lanes.candles) == 3
            fake.state = "up"
            await trio.sleep_until(10.0)
            assert lag(pub) == CandleLag()
            nursery.cancel_scope.cancel()
    assert delivered(fake) == [(7.75, "A", M), (7.75, "B", M), (7.75, "A", M + 60)]
    for document, sent in zip(documents(fake), [a0, b0, a1], strict=True):
        assert document == sent.as_dict(document["published_ts"])
    metrics = pub.metrics
    assert sample(metrics, "screener_candles_published_total", source=LIVE_SOURCE) == 2
    assert sample(metrics, "screener_candles_published_total", source=CANDLE_REST_SOURCE) == 1
    assert sample(metrics, "screener_candles_skipped_total") == 0
    # The delay of the live-closed ones only, from their close (a second before) to Redis.
    assert sample(metrics, "screener_candle_delay_seconds_count") == 2
    assert sample(metrics, "screener_candle_delay_seconds_bucket", le="0.5") == 0
    assert sample(metrics, "screener_events_published_total", channel="market_data") == 0


async def test_candles_refused_for_now_are_held_whole_then_published_once(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """Redis's memory limit refuses a candle's key (the script's first write): the slice is
    held whole, with the event that joined it, and retried; nothing goes out twice."""
    pub = publisher(fake)
    oom = True
    fake.refuse = lambda command: OOM if oom and command[0] == b"SET" else None
    a0 = candle("A", 0)
    push = market_data("A", 1.0, M * 1000 + 1)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            await inbox.send(CandleBatch([a0]))
            await trio.sleep_until(0.5)
            await inbox.send([push])
            await trio.sleep_until(1.0)
            assert fake.held_writes == [0.0, 0.125, 0.375, 0.875]  # the held backoff
            assert [len(w.events) for w in fake.writes] == [0, 0, 0, 1]
            assert lag(pub) == CandleLag(1, M)
            assert pub.lanes.backlog() == 1
            oom = False
            await trio.sleep_until(5.0)
            nursery.cancel_scope.cancel()
    assert delivered(fake) == [(1.875, "A", M)]
    assert [w.events for w in fake.delivered] == [[push]]
    assert sample(pub.metrics, "screener_candles_published_total", source=LIVE_SOURCE) == 1
    assert sample(pub.metrics, "screener_events_published_total", channel="market_data") == 1
    assert lag(pub) == CandleLag()


async def test_candles_older_than_the_hold_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """With a hold of 2 minutes, a candle opening 2 minutes or more before the newest seen
    goes (counted as expired); the others wait, in arrival order."""
    pub = publisher(fake, candle_hold_s=120.0)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            fake.state = "down"
            await inbox.send(CandleBatch([candle("A", 0), candle("B", 0)]))
            await inbox.send(CandleBatch([candle("A", 1)]))
            await inbox.send(CandleBatch([candle("A", 2)]))  # A0, B0: 2 minutes before it
            await trio.testing.wait_all_tasks_blocked()
            assert lag(pub) == CandleLag(2, M + 60)
            assert sample(pub.metrics, "screener_candles_dropped_total", reason="expired") == 2
            await inbox.send(CandleBatch([candle("B", 1)]))  # not newer: nothing more goes
            fake.state = "up"
            await trio.sleep_until(10.0)
            nursery.cancel_scope.cancel()
    assert [(s, t) for _, s, t in delivered(fake)] == [("A", M + 60), ("A", M + 120), ("B", M + 60)]
    assert sample(pub.metrics, "screener_candles_dropped_total", reason="expired") == 2
    assert (
        "WARNING",
        "2 closed candles dropped: not taken by redis within 120s (+0 similar suppressed)",
    ) in logs


async def test_a_standby_keeps_candles_and_at_takeover_publishes_only_those_nobody_did(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    """Both replicas close the same minutes. The leader published two when it died; the
    third closed while nobody led. The standby sent none while standby and showed no lag
    (its leader's); at takeover Redis skips the two and publishes the third."""
    old, new = publisher(fake, fenced=True), publisher(fake, fenced=True)
    a0, b0, a1 = candle("A", 0), candle("B", 0), candle("A", 1)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            to_old, to_new = start(nursery, old, fake), start(nursery, new, fake)
            await to_old.send(lead(fake, "old#1", 1, until=5.0))
            await to_new.send(STANDBY)
            await to_old.send(CandleBatch([a0, b0]))
            await to_new.send(CandleBatch([a0, b0]))
            await trio.sleep(1.0)
            await to_new.send(CandleBatch([a1]))  # the old leader is gone
            await trio.sleep(5.0)
            assert delivered(fake) == [(0.0, "A", M), (0.0, "B", M)]
            assert len(new.lanes.candles) == 3
            assert lag(new) == CandleLag()
            await to_new.send(lead(fake, "new#1", 2, until=20.0))
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    assert delivered(fake) == [(0.0, "A", M), (0.0, "B", M), (6.0, "A", M + 60)]
    assert sample(new.metrics, "screener_candles_skipped_total") == 2
    assert sample(new.metrics, "screener_candles_published_total", source=LIVE_SOURCE) == 1
    assert lag(new) == CandleLag()


async def test_a_fenced_write_puts_its_candles_back_for_the_next_lease_answer(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    pub = publisher(fake, fenced=True)
    a0, b0 = candle("A", 0), candle("B", 0)
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send(lead(fake, "r#1", 1, until=100.0))
        fake.data[b"lease"], fake.data[b"term"] = b"other#9", b"2"  # taken over meanwhile
        await inbox.send(CandleBatch([a0, b0]))
        await trio.sleep(1.0)
        assert fake.fenced == [0.0]
        assert list(pub.lanes.candles.candles) == [a0, b0]
        assert lag(pub) == CandleLag(2, M)
        await inbox.send(STANDBY)  # kept for a takeover; the leader's lag, not this one's
        await trio.testing.wait_all_tasks_blocked()
        assert list(pub.lanes.candles.candles) == [a0, b0]
        assert lag(pub) == CandleLag()
        nursery.cancel_scope.cancel()
    assert fake.delivered == []
    assert sample(pub.metrics, "screener_candles_published_total", source=LIVE_SOURCE) == 0


async def test_the_final_flush_sends_the_pending_candles(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """At SIGTERM the lease ran out by this clock, but Redis still says this writer holds
    it: the pending candles go in the final flush."""
    pub = publisher(fake, fenced=True)
    a0, b0 = candle("A", 0), candle("B", 0)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            await inbox.send(lead(fake, "r#1", 1, until=1.0))
            await trio.sleep_until(2.0)
            await inbox.send(CandleBatch([a0, b0]))
            await trio.testing.wait_all_tasks_blocked()
            assert fake.writes == []
            nursery.cancel_scope.cancel()
        with trio.CancelScope(deadline=trio.current_time() + FINAL_FLUSH_S):
            await pub.finish()
    assert delivered(fake) == [(2.0, "A", M), (2.0, "B", M)]
    assert logs[-1] == ("INFO", "flushed 0 pending events and 2 candles")


async def test_a_final_flush_that_fails_counts_the_candles_left(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    pub = publisher(fake, fenced=True)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            await inbox.send(lead(fake, "r#1", 1, until=1.0))
            await trio.sleep_until(2.0)
            fake.data[b"lease"] = b"other#2"
            await inbox.send(CandleBatch([candle("A", 0)]))
            await inbox.send([market_data("A", 1.0, M * 1000 + 5)])
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with trio.CancelScope(deadline=trio.current_time() + FINAL_FLUSH_S):
            await pub.finish()
    assert fake.delivered == []
    assert logs[-1] == (
        "WARNING",
        "final flush failed, 1 events and 1 candles not published "
        "(redis says other#2 leads this shard now)",
    )


async def test_candles_refused_for_good_or_unencodable_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """PUBLISH_MODE=both with the candles' stream key of another type: a candle's XADD is
    refused (WRONGTYPE), so it is dropped (its key is set: sent again, it is skipped); a
    candle that cannot be serialized is dropped before the write."""
    both = load_settings({"PUBLISH_MODE": "both"}).redis
    pub = Publisher(
        both,
        fake.link(),
        status=Latest(RedisStatus(up=True, error=None)),
        metrics=Metrics(),
        rand=lambda: 0.5,
    )
    wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
    fake.refuse = lambda c: wrongtype if c[0] == b"XADD" and c[1] == b"candles" else None
    a0 = candle("A", 0)
    bad = candle("B\ud800", 0)  # a lone surrogate: no JSON text for it
    async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
        inbox = start(nursery, pub, fake)
        await inbox.send(CandleBatch([bad, a0]))
        await trio.sleep(1.0)
        await inbox.send(CandleBatch([a0]))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert [len(w.candles) for w in fake.writes] == [1, 0]
    metrics = pub.metrics
    assert sample(metrics, "screener_candles_dropped_total", reason="refused") == 2
    assert sample(metrics, "screener_candles_published_total", source=LIVE_SOURCE) == 0
    assert sample(metrics, "screener_candles_skipped_total") == 1
    assert ("ERROR", "1 candles could not be serialized; dropped") in logs
    assert ("ERROR", f"redis refused 1 commands: {wrongtype} (+0 similar suppressed)") in logs
