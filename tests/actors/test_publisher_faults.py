"""The publisher under the faults of an adversarial run, on MockClock: a fake Redis whose
writes time out while PINGs answer (CLIENT PAUSE WRITE), whose writes are held (OOM), that
hangs with a write in flight at shutdown, and a backlog sent in bounded slices. Exact
virtual times, statuses, metrics and log lines."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors.publisher import FINAL_FLUSH_S, PIPELINE_EVENTS, Publisher
from screener.core.config import RedisSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import MarketData, PublisherInbox, Ranking, RedisStatus
from screener.core.snapshot import Latest
from screener.redis.batch import BatchResult
from tests.actors.fakes import (
    M,
    MemoryRedis,
    PublisherActor,
    Write,
    doc,
    market_data,
    threads_hold_clock,
)
from tests.helpers import sample

PUBSUB: RedisSettings = load_settings({"PUBLISH_BUFFER": "20000"}).redis
STREAM: RedisSettings = load_settings({"PUBLISH_BUFFER": "20000", "PUBLISH_MODE": "stream"}).redis
TARGET = "redis://localhost:6379"
TIMEOUT = "TimeoutError: no answer from memory:6379 within 2s"
OOM = "OOM command not allowed when used memory > 'maxmemory'."
CAME_UP = ("INFO", f"redis up at {TARGET}")
HELD = ("WARNING", f"redis refuses writes at {TARGET} ({OOM}); events kept and retried")
ACCEPTED = ("INFO", f"redis writes accepted again at {TARGET}")
OK = BatchResult(unencodable=0, refused=0, refusal=None)


def event(symbol: str, n: int = 1) -> MarketData:
    return market_data(symbol, float(n), M * 1000 + n)


def ranking(n: int) -> Ranking:
    return Ranking(wall_ts=M + 15.0 * n, lookback_min=15, gainers=(), losers=(), ranked=0)


def out_of_memory_for_streams(command: list[bytes]) -> str | None:
    """OOM for every XADD (PUBLISH takes no memory, so it still goes through)."""
    return OOM if command[0] == b"XADD" else None


def published(metrics: Metrics) -> float:
    return sample(metrics, "screener_events_published_total", channel="market_data")


def publisher(fake: MemoryRedis, settings: RedisSettings = PUBSUB) -> Publisher:
    return Publisher(
        settings,
        fake.link(),
        status=Latest(RedisStatus(up=True, error=None)),
        metrics=Metrics(),
        rand=lambda: 0.5,  # delays 0.25, 0.5, 1, 2, 4, ... (half of 0.5 * 2**n)
    )


def start(nursery: trio.Nursery, pub: Publisher, fake: MemoryRedis) -> trio.MemorySendChannel[Any]:
    """The publisher's two tasks, the fake standing in for the client (for `ping`)."""
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](64)
    nursery.start_soon(pub.collect, inbox_recv)
    nursery.start_soon(pub.flush, fake.ping)
    return inbox_send


# --- fault 4: CLIENT PAUSE WRITE ------------------------------------------------------------


async def test_writes_timing_out_keep_redis_down_although_pings_answer(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """PING answers while writes are paused: no `redis up` per PING, no backoff reset by a
    PING; down from the first timed-out write until a write succeeds."""
    pub = publisher(fake)
    a1, b1 = event("A"), event("B")
    samples: dict[float, RedisStatus] = {}
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            fake.state = "paused"
            await inbox.send([a1])
            await trio.sleep_until(1.9)  # the write waits for its answer (REDIS_TIMEOUT_S)
            assert pub.status.value == RedisStatus(up=True, error=None)
            for at in (2.1, 3.0, 4.0, 5.0):
                await trio.sleep_until(at)
                samples[at] = pub.status.value
                assert sample(pub.metrics, "screener_redis_up") == 0
                if at == 3.0:
                    await inbox.send([b1])
            fake.state = "up"  # the pause ends; the write in flight (4.75) still times out
            await trio.sleep_until(7.5)
            assert pub.status.value.up is False
            await trio.sleep_until(8.0)
            assert pub.status.value == RedisStatus(up=True, error=None)
            assert sample(pub.metrics, "screener_redis_up") == 1
            await inbox.aclose()
    assert set(samples.values()) == {RedisStatus(up=False, error=TIMEOUT)}
    assert [w.at for w in fake.writes] == [0.0, 2.25, 4.75, 7.75]
    assert fake.pings == [2.25, 4.75, 7.75]
    assert fake.delivered == [Write(7.75, "pubsub", [a1, b1], None)]
    assert logs == [
        (
            "WARNING",
            f"redis unavailable at {TARGET} ({TIMEOUT}); buffering, newest event per symbol kept",
        ),
        CAME_UP,
    ]
    assert published(pub.metrics) == 2


# --- fault 3: OOM ---------------------------------------------------------------------------


async def test_held_writes_stay_buffered_and_are_retried_with_backoff(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """OOM: Redis answers but holds every XADD. Degraded (not down, not up), nothing counted
    as published or dropped, the held events retried in order ahead of newer ones."""
    pub = publisher(fake, STREAM)
    a1, b1, a2, c1 = event("A", 1), event("B", 1), event("A", 2), event("C", 1)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            fake.refuse = out_of_memory_for_streams
            await inbox.send([a1, b1])
            await trio.sleep_until(0.1)
            await inbox.send([a2])  # arrives during the backoff: waits for the retry at 0.125
            await inbox.send(ranking(1))
            await trio.sleep_until(1.0)
            assert pub.status.value == RedisStatus(up=True, error=None, refused=OOM)
            assert sample(pub.metrics, "screener_redis_up") == 0
            assert sample(pub.metrics, "screener_publish_backlog") == 3
            assert published(pub.metrics) == 0
            assert logs == [HELD]  # one warning, however many refusals
            fake.refuse = lambda command: None
            await inbox.send([c1])  # no retry before the backoff ends (1.875)
            await trio.sleep_until(2.0)
            assert pub.status.value == RedisStatus(up=True, error=None)
            assert sample(pub.metrics, "screener_redis_up") == 1
            await inbox.aclose()
    assert [w.at for w in fake.writes] == [0.0, 0.125, 0.375, 0.875, 1.875]
    assert fake.delivered == [Write(1.875, "stream", [a1, b1, a2, c1], doc(ranking(1)))]
    assert logs == [HELD, ACCEPTED]
    assert published(pub.metrics) == 4
    assert sample(pub.metrics, "screener_events_published_total", channel="top_movers") == 1
    assert sample(pub.metrics, "screener_events_dropped_total") == 0
    assert sample(pub.metrics, "screener_publish_backlog") == 0


async def test_both_mode_under_oom_holds_both_targets_then_sends_each_event_once_to_each(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """PUBLISH_MODE=both under OOM: the publish script's first write (its record of what
    was published) is refused, so nothing goes to either target, although PUBLISH alone
    would take no memory: a publish that cannot be recorded could be repeated. Once Redis
    accepts writes, each event reaches each target once."""
    both = load_settings({"PUBLISH_BUFFER": "20000", "PUBLISH_MODE": "both"}).redis
    pub = publisher(fake, both)
    a1, b1, c1 = event("A"), event("B"), event("C")
    oom = [True]
    fake.refuse = lambda command: OOM if oom[0] and command[0] == b"XADD" else None
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            inbox = start(nursery, pub, fake)
            await inbox.send([a1])
            await trio.sleep_until(0.1)
            await inbox.send([b1])
            await trio.sleep_until(1.0)
            assert fake.delivered == []
            assert published(pub.metrics) == 0
            oom[0] = False
            await inbox.send([c1])
            await trio.sleep_until(2.0)
            await inbox.aclose()
    assert fake.held_writes == [0.0, 0.125, 0.375, 0.875]
    assert [(w.at, w.mode, w.events) for w in fake.delivered] == [(1.875, "both", [a1, b1, c1])]
    assert published(pub.metrics) == 3
    assert logs == [HELD, ACCEPTED]


# --- fault 7: a backlog in bounded slices --------------------------------------------------


async def test_a_backlog_leaves_in_slices_of_at_most_pipeline_events(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """After an outage, and at shutdown, no pipeline carries more than PIPELINE_EVENTS events:
    a backlog is never encoded at once."""
    backlog = [event(f"S{i:05}") for i in range(2 * PIPELINE_EVENTS + 500)]
    later = [event(f"T{i:05}") for i in range(PIPELINE_EVENTS + 1)]
    pub = publisher(fake)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock):
            async with trio.open_nursery() as nursery:
                inbox = start(nursery, pub, fake)
                fake.state = "down"
                for i in range(0, len(backlog), 100):
                    await inbox.send(backlog[i : i + 100])
                await trio.sleep_until(1.0)
                fake.state = "up"
                await trio.sleep_until(2.0)  # the retry at 1.75 sends the backlog
                assert [(w.at, len(w.events)) for w in fake.delivered] == [
                    (1.75, PIPELINE_EVENTS),
                    (1.75, PIPELINE_EVENTS),
                    (1.75, 500),
                ]
                fake.state = "down"
                await inbox.send(later)
                await trio.sleep_until(2.1)
                fake.state = "up"
                nursery.cancel_scope.cancel()
            await pub.finish()  # the shutdown's final flush, in slices too
    assert [(w.at, len(w.events)) for w in fake.delivered[3:]] == [
        (2.1, PIPELINE_EVENTS),
        (2.1, 1),
    ]
    assert [ev for w in fake.delivered for ev in w.events] == backlog + later
    assert max(len(w.events) for w in fake.writes) == PIPELINE_EVENTS
    assert published(pub.metrics) == len(backlog) + len(later)
    assert logs[-1] == ("INFO", f"flushed {len(later)} pending events")


# --- fault 2: shutdown accounts for the backlog, whatever Redis does --------------------


@pytest.mark.parametrize("answers", [True, False])
async def test_shutdown_waits_for_the_write_in_flight_then_accounts_for_everything(
    autojump_clock: trio.testing.MockClock,
    fake: MemoryRedis,
    logs: list[tuple[str, str]],
    answers: bool,
) -> None:
    """The write in flight at cancel is neither lost (it once was: nothing pending in the
    buffer, no line at all) nor sent again: its outcome decides. A Redis that never answers
    costs FINAL_FLUSH_S and the line counts it with the buffered events."""
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](64)
    actor = PublisherActor(PUBSUB)
    a1, b1, c1 = event("A"), event("B"), event("C")
    gate = trio.Event()
    try:
        with trio.fail_after(60):
            async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
                nursery.start_soon(actor.run, inbox_recv, fake)
                await trio.sleep_until(1.0)
                fake.hold = gate
                await inbox_send.send([a1, b1])
                await fake.stalled.wait()  # Redis stops answering
                await inbox_send.send([c1])
                actor.scope.cancel()
                if answers:
                    gate.set()
                else:
                    await trio.testing.wait_all_tasks_blocked()
                    autojump_clock.jump(FINAL_FLUSH_S)
                await actor.ended.wait()
    finally:
        gate.set()
    if answers:
        assert actor.ended_at == 1.0
        assert fake.delivered == [
            Write(1.0, "pubsub", [a1, b1], None),
            Write(1.0, "pubsub", [c1], None),
        ]
        assert logs == [("INFO", "flushed 1 pending events")]  # [a1, b1] were answered first
        assert sample(actor.metrics, "screener_events_published_total", channel="market_data") == 3
    else:
        assert actor.ended_at == 1.0 + FINAL_FLUSH_S
        assert [w.events for w in fake.writes] == [[a1, b1]]
        assert logs == [
            ("WARNING", "final flush failed, 3 events not published (no answer within 2s)")
        ]


async def test_shutdown_while_redis_holds_writes_says_why_events_are_lost(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](64)
    actor = PublisherActor(STREAM)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_recv, fake)
            fake.refuse = out_of_memory_for_streams
            await inbox_send.send([event("A"), event("B")])
            await trio.sleep_until(0.1)
            actor.scope.cancel()
            await actor.ended.wait()
    assert actor.ended_at == 0.1
    assert [w.at for w in fake.writes] == [0.0, 0.1]
    assert logs == [HELD, ("WARNING", f"final flush failed, 2 events not published ({OOM})")]


async def test_shutdown_counts_what_was_still_in_the_inbox(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """Batches the window actor already handed over are pending too, even if the collector
    had not taken them when the cancel came."""
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](64)
    actor = PublisherActor(PUBSUB)
    a1, b1 = event("A"), event("B")
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_recv, fake)
            await trio.testing.wait_all_tasks_blocked()
            inbox_send.send_nowait([a1])
            inbox_send.send_nowait([b1])
            inbox_send.send_nowait(ranking(1))
            actor.scope.cancel()  # no checkpoint since the sends
            await actor.ended.wait()
    assert [(w.events, w.ranking) for w in fake.delivered] == [([a1, b1], doc(ranking(1)))]
    assert logs == [("INFO", "flushed 2 pending events")]
