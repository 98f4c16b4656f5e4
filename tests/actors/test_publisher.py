"""The publisher actor on MockClock over an in-memory Redis behind the real link
(`MemoryRedis`) that fails, refuses or stalls on cue; exact batches, retry times, metrics
and log lines."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from actors.publisher import FINAL_FLUSH_S, PIPELINE_EVENTS, Publisher
from screener.core.config import RedisSettings, load_settings
from screener.core.metrics import Metrics
from screener.core.models import MarketData, PublisherInbox, Ranking, RedisStatus, SymbolStat
from screener.core.snapshot import Latest
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

SETTINGS: RedisSettings = load_settings({"PUBLISH_BUFFER": "100"}).redis
TARGET = "redis://localhost:6379"
DOWN = "ConnectionError: Connection refused"
WENT_DOWN = (
    "WARNING",
    f"redis unavailable at {TARGET} ({DOWN}); buffering, newest event per symbol kept",
)
CAME_UP = ("INFO", f"redis up at {TARGET}")
OOM = "OOM command not allowed when used memory > 'maxmemory'."
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


_PUSHES = itertools.count(500)


def event(symbol: str, close: float = 1.0) -> MarketData:
    """A push of `symbol`, later than every one made before (each push has its own time:
    Redis publishes a symbol's push once, screener/redis/script.py)."""
    return market_data(symbol, close, M * 1000 + next(_PUSHES))


def ranking(n: int) -> Ranking:
    return Ranking(
        wall_ts=M + 15.0 * n,
        lookback_min=15,
        gainers=(SymbolStat(symbol="A_USDT", change_pct=float(n), price=1.0),),
        losers=(),
        ranked=1,
    )


def Batch(at: float, events: list[MarketData], ranking: Ranking | None) -> Write:
    """A write to the pub/sub target as Redis received it."""
    return Write(at, "pubsub", events, None if ranking is None else doc(ranking))


def published(metrics: Metrics, channel: str) -> float | None:
    return sample(metrics, "screener_events_published_total", channel=channel)


async def run_direct(
    nursery: trio.Nursery,
    fake: MemoryRedis,
    inbox: trio.MemoryReceiveChannel[PublisherInbox],
    status: Latest[RedisStatus] | None = None,
    settings: RedisSettings = SETTINGS,
) -> Publisher:
    """A `Publisher` with its two tasks, the fake standing in for the client (for `ping`);
    it ends once the inbox is closed and everything is sent."""
    publisher = Publisher(
        settings,
        fake.link(),
        status=status or Latest(RedisStatus(up=True, error=None)),
        metrics=Metrics(),
        rand=lambda: 0.5,  # delays 0.25, 0.5, 1, 2, 4, ... (half of 0.5 * 2**n)
    )
    nursery.start_soon(publisher.collect, inbox)
    nursery.start_soon(publisher.flush, fake.ping)
    return publisher


async def test_each_wakeup_sends_everything_pending_as_one_batch_in_order(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    actor = PublisherActor(SETTINGS)
    a1, b1, a2, b2, c1, a3 = (event(s) for s in ("A", "B", "A", "B", "C", "A"))
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_recv, fake)
            await inbox_send.send([a1, b1])
            assert await fake.answered() == Batch(0.0, [a1, b1], None)
            await trio.sleep_until(1.0)
            await inbox_send.send(ranking(1))
            assert await fake.answered() == Batch(1.0, [], ranking(1))

            # While one write is in flight, arrivals pile up and leave as one batch, with
            # only the newest ranking.
            await trio.sleep_until(2.0)
            fake.hold = gate = trio.Event()
            await inbox_send.send([a2])
            await trio.testing.wait_all_tasks_blocked()
            for item in ([b2, c1], ranking(2), [a3], ranking(3)):
                await inbox_send.send(item)
            await trio.testing.wait_all_tasks_blocked()
            assert sample(actor.metrics, "screener_publish_backlog") == 3
            gate.set()
            assert await fake.answered() == Batch(2.0, [a2], None)
            assert await fake.answered() == Batch(2.0, [b2, c1, a3], ranking(3))
            actor.scope.cancel()
    assert fake.attempts == [0.0, 1.0, 2.0, 2.0]
    assert published(actor.metrics, "market_data") == 6
    assert published(actor.metrics, "top_movers") == 2
    assert sample(actor.metrics, "screener_publish_backlog") == 0
    assert sample(actor.metrics, "screener_queue_peak", queue="publish_buffer") == 3
    assert sample(actor.metrics, "screener_events_dropped_total") == 0
    assert logs == []  # nothing was pending at the end: no final flush


async def test_a_backlog_leaves_in_slices_of_pipeline_events(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    settings = load_settings({"PUBLISH_BUFFER": "5000"}).redis
    backlog = [event(f"S{i:04}") for i in range(2 * PIPELINE_EVENTS + 500)]
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            publisher = await run_direct(nursery, fake, inbox_recv, settings=settings)
            await inbox_send.send(backlog)
            await inbox_send.send(ranking(1))
            await inbox_send.aclose()
    batches = [fake.sent.receive_nowait() for _ in range(3)]
    assert [len(b.events) for b in batches] == [PIPELINE_EVENTS, PIPELINE_EVENTS, 500]
    assert [e for b in batches for e in b.events] == backlog
    assert sum(b.ranking is not None for b in batches) == 1
    assert published(publisher.metrics, "market_data") == len(backlog)


async def test_outage_buffers_retries_on_the_backoff_schedule_and_sends_the_backlog(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    a1, b1, a2, c1 = event("A", 1.0), event("B", 1.0), event("A", 2.0), event("C", 1.0)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            publisher = await run_direct(nursery, fake, inbox_recv)
            metrics, status = publisher.metrics, publisher.status
            fake.hold = gate = trio.Event()
            await inbox_send.send([a1])
            await fake.stalled.wait()  # the write of [a1] is in flight
            fake.up = False
            await inbox_send.send([b1, a2])
            await trio.testing.wait_all_tasks_blocked()
            gate.set()  # the write fails
            await trio.sleep_until(5.0)
            assert status.value == RedisStatus(up=False, error=DOWN)
            assert sample(metrics, "screener_redis_up") == 0
            assert sample(metrics, "screener_publish_backlog") == 3
            assert logs == [WENT_DOWN]  # one warning, however many retries
            fake.up = True
            # The failed batch went back in front of what arrived during its write, and
            # goes again: Redis ran it before it went down (only its answer was lost), so
            # the script skips a1 this time. Published once, never twice.
            assert await fake.answered() == Batch(7.75, [b1, a2], None)
            assert [w.events for w in fake.writes] == [[a1], [b1, a2]]
            assert sample(metrics, "screener_events_skipped_total") == 1
            assert status.value == RedisStatus(up=True, error=None)
            assert sample(metrics, "screener_redis_up") == 1
            assert logs == [WENT_DOWN, CAME_UP]

            # A second outage warns again, and its backoff starts over.
            await trio.sleep_until(10.0)
            fake.up = False
            await inbox_send.send([c1])
            await trio.sleep_until(10.5)
            fake.up = True
            assert await fake.answered() == Batch(10.75, [c1], None)
            await inbox_send.aclose()
    assert trio.current_time() == 10.75
    assert fake.attempts == [0.0, 7.75, 10.0, 10.75]
    assert fake.pings == [0.25, 0.75, 1.75, 3.75, 7.75, 10.25, 10.75]
    assert logs == [WENT_DOWN, CAME_UP, WENT_DOWN, CAME_UP]
    assert published(metrics, "market_data") == 3  # + a1, which Redis ran unanswered
    assert sample(metrics, "screener_events_skipped_total") == 1
    assert sample(metrics, "screener_publish_backlog") == 0
    assert sample(metrics, "screener_events_dropped_total") == 0


@pytest.mark.parametrize("reachable", [True, False])
async def test_starting_down_pings_and_only_a_write_proves_redis_up(
    autojump_clock: trio.testing.MockClock,
    fake: MemoryRedis,
    logs: list[tuple[str, str]],
    reachable: bool,
) -> None:
    """At start the status is down with no error yet (as in `Views.empty()`): the first PING
    answered marks it up. After a failure, a PING answer only clears the way for a write."""
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    fake.up = reachable
    status = Latest(RedisStatus(up=False, error=None))
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            await run_direct(nursery, fake, inbox_recv, status)
            await trio.sleep_until(1.0)
            fake.up = True
            await trio.sleep_until(1.9)  # after the PING at 1.75
            before_the_write = status.value
            await trio.sleep_until(2.0)
            a = event("A")
            await inbox_send.send([a])
            assert await fake.answered() == Batch(2.0, [a], None)
            await inbox_send.aclose()
    if reachable:
        assert fake.pings == [0.0]
        assert before_the_write == RedisStatus(up=True, error=None)
        assert logs == [CAME_UP]
    else:
        assert fake.pings == [0.0, 0.25, 0.75, 1.75]
        assert before_the_write == RedisStatus(up=False, error=DOWN)
        assert logs == [WENT_DOWN, CAME_UP]
    assert status.value == RedisStatus(up=True, error=None)


async def test_beyond_the_buffer_only_the_newest_event_per_symbol_is_kept(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    old = [event(f"S{i:03}", 1.0) for i in range(100)]
    new = [event(f"S{i:03}", 2.0) for i in range(30)]
    extra = [event("X0"), event("X1")]
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            publisher = await run_direct(nursery, fake, inbox_recv)
            metrics = publisher.metrics
            fake.up = False
            await inbox_send.send(old)  # exactly PUBLISH_BUFFER: nothing dropped
            await trio.sleep_until(1.0)
            assert sample(metrics, "screener_events_dropped_total") == 0
            await inbox_send.send(new)  # 130 > 100: the 30 superseded old ones go
            await trio.sleep_until(2.0)
            assert sample(metrics, "screener_events_dropped_total") == 30
            await inbox_send.send(extra)  # 102 symbols for 100 places: the oldest two go
            await trio.sleep_until(3.0)
            assert sample(metrics, "screener_events_dropped_total") == 32
            assert sample(metrics, "screener_publish_backlog") == 100
            fake.up = True
            assert await fake.answered() == Batch(3.75, old[32:] + new + extra, None)
            await inbox_send.aclose()
    assert fake.attempts == [0.0, 3.75]
    assert published(metrics, "market_data") == 100
    assert sample(metrics, "screener_publish_backlog") == 0
    assert sample(metrics, "screener_queue_peak", queue="publish_buffer") == 100


async def test_refused_commands_are_dropped_and_logged_at_most_once_per_10s(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """WRONGTYPE refuses the command for its content: retrying would never help."""
    fake.refuse = lambda command: WRONGTYPE
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    degraded: list[RedisStatus] = []
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            publisher = await run_direct(nursery, fake, inbox_recv)
            for at in (0.0, 4.0, 9.0, 10.0):
                await trio.sleep_until(at)
                await inbox_send.send([event("A"), event("B")])
                assert (await fake.answered()).at == at
                degraded.append(publisher.status.value)
            assert sample(publisher.metrics, "screener_redis_up") == 0
            fake.refuse = lambda command: None
            await trio.sleep_until(11.0)
            await inbox_send.send([event("C")])
            assert (await fake.answered()).at == 11.0
            await inbox_send.aclose()
    # Not an outage: no retry, no PING; Redis is up but degraded until a write goes through.
    assert fake.attempts == [0.0, 4.0, 9.0, 10.0, 11.0]
    assert fake.pings == []
    assert degraded == [RedisStatus(up=True, error=None, refused=WRONGTYPE)] * 4
    assert publisher.status.value == RedisStatus(up=True, error=None)
    assert sample(publisher.metrics, "screener_redis_up") == 1
    assert sample(publisher.metrics, "screener_events_dropped_total") == 8
    assert published(publisher.metrics, "market_data") == 1
    assert logs == [
        ("ERROR", f"redis refused 2 commands: {WRONGTYPE} (+0 similar suppressed)"),
        ("ERROR", f"redis refused 2 commands: {WRONGTYPE} (+2 similar suppressed)"),
    ]


async def test_writes_refused_for_now_are_kept_and_retried_with_backoff(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    """OOM (like READONLY, LOADING, ...) refuses for now: nothing is dropped. Redis
    answers, so retries come often (capped at HELD_RETRY_CAP_S): delivery resumes within
    seconds of Redis accepting writes again."""

    fake.refuse = lambda command: OOM
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    a1, b1, c1 = event("A"), event("B"), event("C")
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            publisher = await run_direct(nursery, fake, inbox_recv)
            await inbox_send.send([a1, b1])
            await trio.sleep_until(1.0)
            assert publisher.status.value == RedisStatus(up=True, error=None, refused=OOM)
            assert sample(publisher.metrics, "screener_redis_up") == 0
            assert sample(publisher.metrics, "screener_publish_backlog") == 2
            fake.refuse = lambda command: None
            await inbox_send.send([c1])  # waits with the held ones for their retry
            await inbox_send.aclose()
    assert fake.attempts == [0.0, 0.125, 0.375, 0.875, 1.875]
    assert fake.held_writes == [0.0, 0.125, 0.375, 0.875]  # nothing of them was published
    assert fake.sent.receive_nowait() == Batch(1.875, [a1, b1, c1], None)
    assert fake.pings == []
    assert publisher.status.value == RedisStatus(up=True, error=None)
    assert sample(publisher.metrics, "screener_redis_up") == 1
    assert sample(publisher.metrics, "screener_events_dropped_total") == 0
    assert published(publisher.metrics, "market_data") == 3
    assert logs == [
        ("WARNING", f"redis refuses writes at {TARGET} ({OOM}); events kept and retried"),
        ("INFO", f"redis writes accepted again at {TARGET}"),
    ]


async def test_unencodable_events_are_counted_as_rejected_not_published(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            publisher = await run_direct(nursery, fake, inbox_recv)
            too_late = market_data("B", 1.0, 2**70)  # beyond 64 bits: cannot be encoded
            await inbox_send.send([event("A"), too_late, event("C")])
            await inbox_send.aclose()
    metrics = publisher.metrics
    assert sample(metrics, "screener_messages_rejected_total", reason="unencodable") == 1
    assert published(metrics, "market_data") == 2
    assert sample(metrics, "screener_events_dropped_total") == 0
    assert logs == [("ERROR", "1 events could not be serialized; skipped")]


@pytest.mark.parametrize(
    ("redis_back", "outcome"),
    [
        (True, ("INFO", "flushed 2 pending events")),
        (False, ("WARNING", f"final flush failed, 2 events not published ({DOWN})")),
    ],
)
async def test_cancel_flushes_what_is_pending_and_logs_the_outcome(
    autojump_clock: trio.testing.MockClock,
    fake: MemoryRedis,
    logs: list[tuple[str, str]],
    redis_back: bool,
    outcome: tuple[str, str],
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    actor = PublisherActor(SETTINGS)
    a1, b1 = event("A"), event("B")
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_recv, fake)
            fake.up = False
            await inbox_send.send([a1, b1])
            await trio.sleep_until(0.1)  # inside the first backoff (0.25 s): no ping yet
            fake.up = redis_back
            actor.scope.cancel()
            await actor.ended.wait()
    assert actor.ended_at == 0.1
    assert fake.attempts == [0.0, 0.1]
    assert fake.pings == []
    assert logs == [WENT_DOWN, outcome]
    if redis_back:
        assert fake.sent.receive_nowait() == Batch(0.1, [a1, b1], None)


async def test_cancel_during_a_write_waits_for_it_then_sends_the_rest_once(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    actor = PublisherActor(SETTINGS)
    a1, b1 = event("A"), event("B")
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_recv, fake)
            await trio.sleep_until(1.0)
            fake.hold = gate = trio.Event()
            await inbox_send.send([a1])
            await fake.stalled.wait()  # the write of [a1] is in flight
            await inbox_send.send([b1])
            await trio.testing.wait_all_tasks_blocked()
            actor.scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.set()  # the abandoned write completes after all
            await actor.ended.wait()
    assert actor.ended_at == 1.0
    assert [fake.sent.receive_nowait() for _ in range(2)] == [
        Batch(1.0, [a1], None),
        Batch(1.0, [b1], None),
    ]
    with pytest.raises(trio.WouldBlock):  # nothing sent twice
        fake.sent.receive_nowait()
    assert logs == [("INFO", "flushed 1 pending events")]  # [a1] went before the flush


async def test_a_final_flush_cut_by_its_deadline_is_logged(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    actor = PublisherActor(SETTINGS)
    gate = trio.Event()
    try:
        with trio.fail_after(60):
            async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
                nursery.start_soon(actor.run, inbox_recv, fake)
                fake.up = False
                await inbox_send.send([event("A"), event("B")])
                await trio.sleep_until(0.1)
                fake.up = True
                fake.hold = gate  # Redis accepts the connection, then never answers
                actor.scope.cancel()
                await fake.stalled.wait()  # the final write hangs
                autojump_clock.jump(FINAL_FLUSH_S)
                await actor.ended.wait()
    finally:
        gate.set()
    assert actor.ended_at == 0.1 + FINAL_FLUSH_S
    assert fake.attempts == [0.0, 0.1]
    assert logs == [
        WENT_DOWN,
        ("WARNING", "final flush failed, 2 events not published (no answer within 2s)"),
    ]


async def test_a_closed_inbox_ends_the_actor_once_everything_is_sent(
    autojump_clock: trio.testing.MockClock, fake: MemoryRedis, logs: list[tuple[str, str]]
) -> None:
    inbox_send, inbox_recv = trio.open_memory_channel[PublisherInbox](16)
    actor = PublisherActor(SETTINGS)
    a1, b1 = event("A"), event("B")
    with trio.fail_after(60):
        async with threads_hold_clock(autojump_clock), trio.open_nursery() as nursery:
            nursery.start_soon(actor.run, inbox_recv, fake)
            await trio.sleep_until(1.0)
            fake.hold = gate = trio.Event()
            await inbox_send.send([a1])
            await trio.testing.wait_all_tasks_blocked()  # the write of [a1] is in flight
            await inbox_send.send([b1])
            await inbox_send.send(ranking(1))
            await inbox_send.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert not actor.ended.is_set()  # [b1] and the ranking are still pending
            gate.set()
            await actor.ended.wait()
    assert actor.ended_at == 1.0
    assert [fake.sent.receive_nowait() for _ in range(2)] == [
        Batch(1.0, [a1], None),
        Batch(1.0, [b1], ranking(1)),
    ]
    assert logs == []  # the buffer was empty when it ended: no final flush
